"""Publish a local shard tree (the shards stage's ``data/shards``) under an S3 prefix.

Ray workers on other machines then stream the very same shards by pointing ``train.shard_root`` at
the prefix (``s3://bucket/clap/shards``): ``clap.train.data.shard_urls`` reads ``index.json`` from
there and webdataset opens each tar through the ``s3://`` scheme of :mod:`clap.data.wds_s3`.

A publish is a one-way sync: every file under the shard root becomes the object
``<prefix>/<relative path>``; an object is uploaded only when it is missing or its bytes differ
(size, then the ETag S3 computes for our uploads: the MD5, or for multipart uploads the MD5 of the
parts' MD5s with ``-<parts>``; the whole-file MD5 is also stored as ``x-amz-meta-md5`` so that
buckets whose ETags are not MD5s, e.g. SSE-KMS, are compared by it instead). ``index.json`` goes
last, so a reader that finds the new index also finds every shard it lists; objects under the
prefix that no longer exist locally (shards of a larger earlier set) are deleted afterwards.
The prefix therefore belongs to the shards stage; a bare bucket is refused.

Credentials and endpoint come from the AWS chain (``AWS_*`` variables, ``AWS_PROFILE``, instance
roles; ``AWS_ENDPOINT_URL`` for MinIO/moto), as everywhere else in :mod:`clap.data.s3`.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from tqdm.auto import tqdm

from clap.data.s3 import (
    S3AccessError,
    S3Settings,
    S3Uri,
    _Retrier,
    explain_s3_error,
    list_objects,
    make_s3_client,
)
from clap.data.shards import INDEX_NAME

log = logging.getLogger(__name__)

#: Uploads at or above this size go in parts of this size (boto3's default threshold and part size),
#: which fixes the multipart ETag we can predict locally.
PART_SIZE = 8 * 1024 * 1024
MD5_METADATA = "md5"
_CONTENT_TYPES = {".tar": "application/x-tar", ".json": "application/json"}


@dataclass(frozen=True)
class RemoteShardsConfig:
    """``shards.remote`` in params.yaml: where the shards stage publishes its output (None: nowhere)."""

    remote: str | None = None

    def __post_init__(self) -> None:
        if self.remote is not None:
            shard_prefix(self.remote)

    @classmethod
    def from_params(cls, shards_section: dict[str, Any]) -> "RemoteShardsConfig":
        remote = shards_section.get("remote")
        return cls(remote=str(remote).rstrip("/") if remote else None)


def storage_error(
    exc: BaseException, uri: S3Uri, endpoint: str | None, setting: str, key: str | None = None
) -> S3AccessError:
    """:func:`explain_s3_error`, except that a missing bucket names the params key to fix."""
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    if code in ("NoSuchBucket", "404") and key is None:
        return S3AccessError(
            f"{uri}: bucket '{uri.bucket}' does not exist at {endpoint or 'AWS'}; create it "
            f"(aws s3 mb s3://{uri.bucket}) or fix {setting} / AWS_ENDPOINT_URL"
        )
    return explain_s3_error(exc, uri, endpoint, key)


def shard_prefix(remote: str) -> S3Uri:
    """The S3 prefix shards are published under; a whole bucket is refused (stale objects get deleted)."""
    uri = S3Uri.parse(remote)  # raises naming the URI when it is not s3://bucket/prefix
    if not uri.prefix:
        raise ValueError(
            f"shards.remote: {remote} is a whole bucket; give the shards a prefix of their own "
            "(e.g. s3://bucket/clap/shards): objects under it that the shards no longer have are deleted"
        )
    return uri


@dataclass(frozen=True)
class LocalFile:
    relative: str  # posix path under the shard root; the object key is <prefix>/<relative>
    path: Path
    size: int
    md5: str  # hex MD5 of the whole file
    etag: str  # the ETag S3 gives this file when uploaded with PART_SIZE parts (no quotes)


@dataclass
class PublishResult:
    uri: str
    uploaded: list[str] = field(default_factory=list)  # relative paths
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)  # relative paths of stale objects
    bytes_uploaded: int = 0
    retries: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "uploaded": len(self.uploaded),
            "unchanged": len(self.unchanged),
            "deleted": len(self.deleted),
            "bytes_uploaded": self.bytes_uploaded,
            "retries": self.retries,
        }


def file_digests(path: Path, part_size: int = PART_SIZE) -> tuple[str, str]:
    """``(md5 of the file, S3 ETag of an upload in part_size parts)``, read in one pass."""
    whole = hashlib.md5()
    part_digests: list[bytes] = []
    size = 0
    with Path(path).open("rb") as fh:
        while chunk := fh.read(part_size):
            whole.update(chunk)
            part_digests.append(hashlib.md5(chunk).digest())
            size += len(chunk)
    if size < part_size:  # one PUT: the ETag is the MD5 of the bytes
        return whole.hexdigest(), whole.hexdigest()
    combined = hashlib.md5(b"".join(part_digests)).hexdigest()
    return whole.hexdigest(), f"{combined}-{len(part_digests)}"


def local_files(shard_root: Path, part_size: int = PART_SIZE, progress: bool = True) -> list[LocalFile]:
    """Every file of the shard tree (temporary and hidden files left out), ``index.json`` last."""
    shard_root = Path(shard_root)
    if not (shard_root / INDEX_NAME).is_file():
        raise FileNotFoundError(
            f"{shard_root / INDEX_NAME}: shard index not found; write the shards first (dvc repro shards)"
        )
    paths = sorted(
        p for p in shard_root.rglob("*")
        if p.is_file() and not p.name.endswith(".tmp")
        and not any(part.startswith(".") for part in p.relative_to(shard_root).parts)
    )
    files = []
    for path in tqdm(paths, desc=f"hash {shard_root}", unit="file", disable=not progress):
        md5, etag = file_digests(path, part_size)
        files.append(LocalFile(path.relative_to(shard_root).as_posix(), path, path.stat().st_size, md5, etag))
    # readers find shards through index.json: it must be the last object to change
    files.sort(key=lambda f: (f.relative == INDEX_NAME, f.relative))
    return files


def _remote_md5(client: Any, bucket: str, key: str) -> str | None:
    head = client.head_object(Bucket=bucket, Key=key)
    return head.get("Metadata", {}).get(MD5_METADATA)


def _is_current(client: Any, uri: S3Uri, local: LocalFile, remote: dict[str, Any] | None) -> bool:
    if remote is None or remote["Size"] != local.size:
        return False
    if remote["ETag"].strip('"') == local.etag:
        return True
    # not our kind of ETag (SSE-KMS, other part sizes): the MD5 we stored at upload decides
    return _remote_md5(client, uri.bucket, f"{uri.prefix}/{local.relative}") == local.md5


def publish_shards(
    shard_root: str | Path,
    remote: str,
    *,
    settings: S3Settings = S3Settings(),
    client: Any = None,
    delete_stale: bool = True,
    part_size: int = PART_SIZE,
    progress: bool = True,
) -> PublishResult:
    """Make ``remote`` (``s3://bucket/prefix``) hold exactly the shard tree under ``shard_root``.

    Only missing or changed objects are uploaded; ``index.json`` is uploaded after every shard.
    Raises :class:`S3AccessError` naming the URI and the fix (bucket, credentials, endpoint).
    """
    uri = shard_prefix(remote)
    shard_root = Path(shard_root)
    files = local_files(shard_root, part_size, progress=progress)
    client = client or make_s3_client(settings=settings)
    endpoint = client.meta.endpoint_url
    retry = _Retrier(settings, str(uri))
    result = PublishResult(uri=str(uri))

    try:
        listed = retry(lambda: list_objects(client, uri), "listing")
        remote_objects = {obj["Key"][len(uri.list_prefix):]: obj for obj in listed}
        todo = [f for f in files if not _is_current(client, uri, f, remote_objects.get(f.relative))]
    except Exception as exc:
        raise storage_error(exc, uri, endpoint, "shards.remote") from exc
    result.unchanged = sorted({f.relative for f in files} - {f.relative for f in todo})
    log.info("%s: %d files, %d unchanged, %d to upload", uri, len(files), len(result.unchanged), len(todo))

    transfer = TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size, max_concurrency=4)

    def upload(local: LocalFile) -> None:
        key = f"{uri.prefix}/{local.relative}"
        try:
            retry(lambda: _upload_file(client, local, uri.bucket, key, transfer), key)
        except Exception as exc:
            raise storage_error(exc, uri, endpoint, "shards.remote", key) from exc

    index = [f for f in todo if f.relative == INDEX_NAME]
    shards = [f for f in todo if f.relative != INDEX_NAME]
    with tqdm(total=sum(f.size for f in todo), desc=f"upload {uri}", unit="B", unit_scale=True,
              disable=not progress) as bar:
        for batch in (shards, index):  # index.json only once every shard it lists is in place
            _upload_all(batch, upload, settings.workers, bar, result)
    result.retries = retry.retries

    if delete_stale:
        stale = sorted(set(remote_objects) - {f.relative for f in files})
        _delete(client, uri, stale, endpoint)
        result.deleted = stale
    log.info("%s: uploaded %d (%.1f MB), unchanged %d, deleted %d stale", uri, len(result.uploaded),
             result.bytes_uploaded / 1e6, len(result.unchanged), len(result.deleted))
    return result


def _upload_file(client: Any, local: LocalFile, bucket: str, key: str, transfer: TransferConfig) -> None:
    extra: dict[str, Any] = {"Metadata": {MD5_METADATA: local.md5}}
    if local.path.suffix in _CONTENT_TYPES:
        extra["ContentType"] = _CONTENT_TYPES[local.path.suffix]
    try:
        client.upload_file(str(local.path), bucket, key, ExtraArgs=extra, Config=transfer)
    except S3UploadFailedError as exc:
        # boto3 wraps the ClientError whose code and status retrying and explaining need
        raise (exc.__context__ or exc) from None


def _upload_all(files: list[LocalFile], upload: Any, workers: int, bar: tqdm, result: PublishResult) -> None:
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(upload, local): local for local in files}
        for future in as_completed(futures):
            local = futures[future]
            if future.exception() is not None:
                for other in futures:
                    other.cancel()
                raise future.exception()  # type: ignore[misc]
            result.uploaded.append(local.relative)
            result.bytes_uploaded += local.size
            bar.update(local.size)
    result.uploaded.sort()


def _delete(client: Any, uri: S3Uri, relatives: Iterable[str], endpoint: str | None) -> None:
    keys = [f"{uri.prefix}/{rel}" for rel in relatives]
    for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
        batch = keys[start:start + 1000]
        try:
            response = client.delete_objects(
                Bucket=uri.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
            )
        except Exception as exc:
            raise storage_error(exc, uri, endpoint, "shards.remote") from exc
        errors = response.get("Errors", [])
        if errors:
            first = errors[0]
            raise S3AccessError(
                f"{uri}: could not delete {len(errors)} stale object(s), e.g. {first.get('Key')} "
                f"({first.get('Code')}: {first.get('Message')}); the credentials need s3:DeleteObject on this prefix"
            )
