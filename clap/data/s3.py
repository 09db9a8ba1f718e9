"""S3 access for sources whose ``path`` is an ``s3://bucket/prefix`` URI: mirror the prefix locally.

The adapters read local folders, so an S3 source is first mirrored into the ingest cache
(``<cache>/<bucket>/<prefix>/...``) and then read like any local source. A mirror downloads only
objects that are missing locally or whose size or ETag changed since the last mirror, and removes
local files whose objects are gone; the ETags seen are kept in ``<cache>/.s3mirror/``.

Credentials come only from the usual AWS chain (environment variables, shared credentials/config
files, ``AWS_PROFILE`` or a source's ``profile`` name, instance roles); never from params, and they
are never logged. The endpoint comes from ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` (which
boto3 reads itself) unless a source gives ``endpoint_url``.

Transient failures are retried twice over: botocore retries each request (standard mode,
``max_attempts``), and each object is retried again with exponential backoff when the endpoint
stays unreachable for longer than botocore's attempts last (a restarting server, a network blip).

Every client has a connect timeout (5 s) and a bounded number of attempts (3), and an endpoint that
never answered in this run is not retried beyond botocore's attempts: a wrong or unreachable
endpoint (a closed port, a host that drops packets) fails within about 20 s with one error naming
the URI, the endpoint and the fix. Once the endpoint has answered, outages are retried as above.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, TypeVar
from urllib.parse import quote, urlparse

import boto3
import botocore.config
import botocore.exceptions
from tqdm.auto import tqdm

from clap.params import config_from_mapping

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Error codes that mean "these credentials may not do this".
_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidClientTokenId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
        "UnrecognizedClientException",
        "403",
        "Forbidden",
    }
)
#: Error codes worth another try: the service is busy or briefly unwell.
_TRANSIENT_CODES = frozenset(
    {"InternalError", "RequestTimeout", "ServiceUnavailable", "SlowDown", "Throttling", "ThrottlingException"}
)
_CONNECTION_ERRORS = (
    botocore.exceptions.ConnectionError,  # endpoint unreachable, connect timeout, proxy
    botocore.exceptions.HTTPClientError,  # connection closed, read timeout, broken stream
    botocore.exceptions.IncompleteReadError,
)


class S3AccessError(RuntimeError):
    """An S3 source could not be read; the message names the URI and what to fix."""


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    prefix: str  # without leading or trailing "/"; "" for the whole bucket

    @classmethod
    def parse(cls, uri: str) -> "S3Uri":
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"{uri}: not an S3 URI (expected s3://bucket/prefix)")
        return cls(bucket=parsed.netloc, prefix=parsed.path.strip("/"))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    @property
    def list_prefix(self) -> str:
        # a trailing "/" keeps s3://b/clotho from also matching s3://b/clotho2
        return f"{self.prefix}/" if self.prefix else ""


def is_s3_uri(path: str | Path) -> bool:
    return str(path).startswith("s3://")


@dataclass(frozen=True)
class S3Settings:
    """How hard to try. Defaults suit a real bucket; tests shrink the waits."""

    max_attempts: int = 3  # botocore attempts per request (standard retry mode), the first included
    object_retries: int = 4  # further tries per object once the endpoint has answered, with backoff
    backoff_s: float = 0.5  # first wait; doubles each try, capped at 30 s
    workers: int = 8  # parallel downloads
    connect_timeout_s: float = 5.0  # per attempt: an unreachable endpoint costs about attempts x this
    read_timeout_s: float = 60.0

    @classmethod
    def from_params(cls, ingest: dict[str, Any]) -> "S3Settings":
        """The ``s3_<setting>`` keys of params.yaml's ``ingest`` section (others are ingest's own)."""
        keys = cls.param_keys()
        return config_from_mapping(cls, {k: v for k, v in ingest.items() if k in keys}, "params.yaml ingest", prefix="s3_")

    @classmethod
    def param_keys(cls) -> set[str]:
        return {f"s3_{name}" for name in cls.__dataclass_fields__}


@dataclass
class MirrorResult:
    uri: str
    local_dir: Path
    listed: int = 0
    downloaded: int = 0
    skipped: int = 0  # already up to date
    removed: int = 0  # local files whose objects are gone
    bytes_downloaded: int = 0
    retries: int = 0  # object-level retries after transient failures

    def to_json(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "local_dir": str(self.local_dir),
            "listed": self.listed,
            "downloaded": self.downloaded,
            "skipped": self.skipped,
            "removed": self.removed,
            "bytes_downloaded": self.bytes_downloaded,
            "retries": self.retries,
        }


def make_s3_client(
    endpoint_url: str | None = None, profile: str | None = None, settings: S3Settings = S3Settings()
) -> Any:
    """A boto3 S3 client with standard-mode retries; endpoint/credentials from the AWS chain."""
    try:
        session = boto3.session.Session(profile_name=profile)
    except botocore.exceptions.ProfileNotFound as exc:
        raise S3AccessError(
            f"AWS profile '{profile}' not found ({exc}); define it in ~/.aws/config or drop it"
        ) from exc
    config = botocore.config.Config(
        # total_max_attempts counts the first try (botocore's max_attempts would count retries only)
        retries={"total_max_attempts": max(1, settings.max_attempts), "mode": "standard"},
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
        max_pool_connections=max(10, settings.workers * 2),
    )
    return session.client("s3", endpoint_url=endpoint_url, config=config)


def is_connect_failure(exc: BaseException) -> bool:
    """The endpoint could not be reached at all (refused, timed out connecting, no route, bad host)."""
    return isinstance(
        exc, (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError)
    )


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _CONNECTION_ERRORS):
        return True
    if isinstance(exc, botocore.exceptions.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return code in _TRANSIENT_CODES or status >= 500
    return False


def explain_s3_error(
    exc: BaseException, uri: S3Uri, endpoint: str | None, key: str | None = None
) -> S3AccessError:
    """Turn a boto error into one that names the URI (and object), the cause and the fix."""
    where = f" at {endpoint}" if endpoint else ""
    what = f"{uri} (object {key})" if key else str(uri)
    if isinstance(exc, (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError)):
        return S3AccessError(
            f"{what}: no usable AWS credentials ({exc}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or AWS_PROFILE / the source's `profile` (credentials never go in params.yaml)"
        )
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = error.get("Message", "")
        if code == "NoSuchBucket":
            return S3AccessError(
                f"{what}: bucket '{uri.bucket}' does not exist{where} (NoSuchBucket); check the URI in params.yaml "
                "`sources` and the endpoint (AWS_ENDPOINT_URL or the source's `endpoint_url`)"
            )
        if code in ("PreconditionFailed", "412"):
            return S3AccessError(
                f"{what}: the object changed while it was being mirrored; run the stage again to pick up "
                "the new version"
            )
        if code in _AUTH_CODES:
            return S3AccessError(
                f"{what}: the S3 endpoint{where} refused the credentials ({code}: {message}); check "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN or AWS_PROFILE, and that they "
                "may list and read this bucket"
            )
        return S3AccessError(f"{what}: S3 request failed{where} ({code}: {message})")
    if isinstance(exc, _CONNECTION_ERRORS):
        return S3AccessError(
            f"{what}: could not reach the S3 endpoint{where or ' (AWS default)'} after retrying "
            f"({type(exc).__name__}: {exc}); check the endpoint URL (AWS_ENDPOINT_URL / the source's "
            "`endpoint_url`: scheme, host and port), that the server is running, and the network or proxy"
        )
    return S3AccessError(f"{what}: {type(exc).__name__}: {exc}")


class _Retrier:
    """Retry a call on transient errors with exponential backoff, counting the retries."""

    def __init__(self, settings: S3Settings, what: str) -> None:
        self.settings = settings
        self.what = what
        self.retries = 0
        self.reached = False  # the endpoint answered a request in this run
        self._lock = threading.Lock()

    def __call__(self, fn: Callable[[], T], label: str) -> T:
        delay = self.settings.backoff_s
        for attempt in range(self.settings.object_retries + 1):
            try:
                result = fn()
                self.reached = True
                return result
            except Exception as exc:
                never_reached = is_connect_failure(exc) and not self.reached
                if not _is_transient(exc) or never_reached or attempt == self.settings.object_retries:
                    raise
                with self._lock:
                    self.retries += 1
                log.warning(
                    "%s: %s failed (%s: %s); retry %d/%d in %.1f s",
                    self.what, label, type(exc).__name__, exc, attempt + 1, self.settings.object_retries, delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")  # pragma: no cover


def _state_path(cache_dir: Path, uri: S3Uri) -> Path:
    return cache_dir / ".s3mirror" / uri.bucket / f"{quote(uri.prefix, safe='') or '_root'}.json"


def _read_state(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError:
        log.warning("%s: unreadable mirror state; every object will be downloaded again", path)
        return {}
    return state if isinstance(state, dict) else {}


def _local_path(local_dir: Path, uri: S3Uri, key: str) -> Path:
    relative = PurePosixPath(key[len(uri.list_prefix):])
    if not relative.parts or ".." in relative.parts or relative.is_absolute():
        raise S3AccessError(f"{uri}: object key '{key}' cannot be mirrored safely (empty or '..' in its path)")
    return local_dir.joinpath(*relative.parts)


def list_objects(client: Any, uri: S3Uri) -> list[dict[str, Any]]:
    """All objects under the prefix (``Key``, ``Size``, ``ETag``), folder markers left out."""
    objects: list[dict[str, Any]] = []
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=uri.bucket, Prefix=uri.list_prefix):
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/"):
                objects.append({"Key": obj["Key"], "Size": int(obj["Size"]), "ETag": obj.get("ETag", "")})
    return objects


def fetch_object(client: Any, bucket: str, key: str, etag: str, target: Path) -> None:
    """Stream one object into ``target`` through a temporary file (never a half-written target).

    ``IfMatch`` makes S3 refuse the object if it changed since it was listed, so the ETag recorded
    for the file is the one of its bytes.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.part")
    try:
        condition = {"IfMatch": etag} if etag else {}
        response = client.get_object(Bucket=bucket, Key=key, **condition)
        body = response["Body"]
        with partial.open("wb") as fh:
            # botocore checks the byte count against Content-Length when the stream ends
            for chunk in body.iter_chunks(1 << 20):
                fh.write(chunk)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def mirror_prefix(
    uri: str,
    cache_dir: str | Path,
    *,
    endpoint_url: str | None = None,
    profile: str | None = None,
    settings: S3Settings = S3Settings(),
    client: Any = None,
    progress: bool = True,
) -> MirrorResult:
    """Mirror ``s3://bucket/prefix`` into ``cache_dir/bucket/prefix``; only new or changed objects move.

    Raises :class:`S3AccessError` for missing buckets, refused credentials, an empty prefix or an
    endpoint that stays unreachable through all retries. Objects finished before a failure are kept
    and recorded, so the next run resumes where this one stopped.
    """
    s3uri = S3Uri.parse(uri)
    cache_dir = Path(cache_dir)
    local_dir = cache_dir / s3uri.bucket / s3uri.prefix if s3uri.prefix else cache_dir / s3uri.bucket
    client = client or make_s3_client(endpoint_url, profile, settings)
    endpoint = client.meta.endpoint_url
    retry = _Retrier(settings, str(s3uri))
    result = MirrorResult(uri=str(s3uri), local_dir=local_dir)

    try:
        objects = retry(lambda: list_objects(client, s3uri), "listing")
    except Exception as exc:
        raise explain_s3_error(exc, s3uri, endpoint) from exc
    if not objects:
        raise S3AccessError(f"{s3uri}: no objects under this prefix at {endpoint}; check the path in params.yaml")
    result.listed = len(objects)

    state_path = _state_path(cache_dir, s3uri)
    previous = _read_state(state_path)
    listed_keys = {obj["Key"] for obj in objects}
    # a local file is only ever replaced whole, so what the old state says about it stays true
    # until its new download completes; keeping those entries lets an interrupted run resume
    state = {key: entry for key, entry in previous.items() if key in listed_keys}
    todo: list[tuple[dict[str, Any], Path]] = []
    for obj in objects:
        target = _local_path(local_dir, s3uri, obj["Key"])
        fresh = {"etag": obj["ETag"], "size": obj["Size"]}
        if previous.get(obj["Key"]) == fresh and target.is_file() and target.stat().st_size == obj["Size"]:
            result.skipped += 1
        else:
            todo.append((obj, target))

    for key in sorted(set(previous) - listed_keys):
        stale = _local_path(local_dir, s3uri, key)
        if stale.is_file():
            stale.unlink()
            result.removed += 1

    def download(obj: dict[str, Any], target: Path) -> int:
        retry(lambda: fetch_object(client, s3uri.bucket, obj["Key"], obj["ETag"], target), obj["Key"])
        return obj["Size"]

    log.info(
        "%s: %d objects, %d up to date, %d to download -> %s", s3uri, len(objects), result.skipped, len(todo), local_dir
    )
    failure: tuple[BaseException, str] | None = None
    try:
        with ThreadPoolExecutor(max_workers=max(1, settings.workers)) as pool:
            futures = {pool.submit(download, obj, target): obj for obj, target in todo}
            with tqdm(total=len(futures), desc=f"mirror {s3uri}", unit="file", disable=not progress) as bar:
                # record every object that lands, even after a failure, so a re-run resumes from there
                for future in as_completed(futures):
                    obj = futures[future]
                    if future.cancelled():
                        continue
                    error = future.exception()
                    if error is not None:
                        if failure is None:
                            failure = (error, obj["Key"])
                            for other in futures:
                                other.cancel()
                        continue
                    state[obj["Key"]] = {"etag": obj["ETag"], "size": obj["Size"]}
                    result.downloaded += 1
                    result.bytes_downloaded += future.result()
                    bar.update(1)
    finally:
        result.retries = retry.retries
        state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = state_path.with_name(state_path.name + ".tmp")
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
        tmp.replace(state_path)
    if failure is not None:
        error, key = failure
        raise explain_s3_error(error, s3uri, endpoint, key) from error
    log.info(
        "%s: downloaded %d (%.1f MB), skipped %d, removed %d, retries %d",
        s3uri, result.downloaded, result.bytes_downloaded / 1e6, result.skipped, result.removed, result.retries,
    )
    return result
