"""Where Ray Train keeps checkpoints: a local folder, or an S3 prefix every node of a cluster can reach.

``train.storage_path`` may be ``s3://bucket/prefix``. Ray Train takes such storage as a path without
the scheme plus a ``pyarrow.fs.S3FileSystem``; :func:`ray_storage` builds both. The file system
carries the endpoint (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, for MinIO, moto, ...) and the
region, but no secrets: each process that unpickles it, on whichever node, takes credentials from
its own AWS chain (``AWS_*`` variables, ``AWS_PROFILE`` and the shared files, container or instance
roles), which also renews temporary ones during long runs.

Every execution of a stage is a new Ray Train run with a name of its own (:func:`new_run_name`): a run
is resumed only after a failure within the same execution (``max_failures``) or when the user names
it (``resume``). Finished runs beyond ``keep_runs`` per family are deleted (:meth:`RunStore.prune`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3
import pyarrow.fs

from clap.data.remote_shards import storage_error
from clap.data.s3 import S3Settings, S3Uri, is_s3_uri, make_s3_client

log = logging.getLogger(__name__)

#: Attempts per S3 request made by Ray Train's file system (AWS standard retry strategy).
S3_MAX_ATTEMPTS = 5


def s3_endpoint() -> str | None:
    """The S3 endpoint from the environment, with the precedence boto3 gives it."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_filesystem(endpoint_url: str | None = None, region: str | None = None) -> pyarrow.fs.S3FileSystem:
    """An S3 file system for ``endpoint_url`` (default: AWS), credentials left to the AWS chain."""
    options: dict[str, object] = {
        "retry_strategy": pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=S3_MAX_ATTEMPTS),
        # the boto3 clients' bounds (clap.data.s3.S3Settings): an unreachable endpoint fails, it does not hang
        "connect_timeout": S3Settings().connect_timeout_s,
        "request_timeout": S3Settings().read_timeout_s,
    }
    if endpoint_url:
        parsed = urlparse(endpoint_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(
                f"AWS_ENDPOINT_URL={endpoint_url}: expected http(s)://host[:port], e.g. http://127.0.0.1:9000"
            )
        options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
    region = region or os.environ.get("AWS_REGION") or boto3.session.Session().region_name
    if region:
        options["region"] = region
    return pyarrow.fs.S3FileSystem(**options)


def check_s3_storage(uri: S3Uri) -> None:
    """Fail before training starts when the bucket is missing or the credentials may not use it."""
    client = make_s3_client()
    endpoint = client.meta.endpoint_url
    try:
        client.head_bucket(Bucket=uri.bucket)
    except Exception as exc:
        raise storage_error(exc, uri, endpoint, "train.storage_path") from exc


def ray_storage(path: str, *, check: bool = True) -> tuple[str, pyarrow.fs.FileSystem | None]:
    """``(storage_path, storage_filesystem)`` for ``ray.train.RunConfig``.

    ``s3://bucket/prefix`` -> ``("bucket/prefix", S3FileSystem)``; with ``check`` the bucket is
    probed first so that a wrong name or refused credentials fail here, naming the URI and the fix,
    rather than inside Ray. A local path -> ``(absolute path, None)``. Other URIs (``gs://`` ...)
    are passed through for Ray to resolve.
    """
    if is_s3_uri(path):
        uri = S3Uri.parse(path)
        if check:
            check_s3_storage(uri)
        endpoint = s3_endpoint()
        log.info("Ray Train storage %s (endpoint %s)", uri, endpoint or "AWS")
        return f"{uri.bucket}/{uri.prefix}".rstrip("/"), s3_filesystem(endpoint)
    if "://" in path:
        return path, None
    return str(Path(path).expanduser().resolve()), None


#: A run's name: its family (``clap``, ``finetune-esc-fold1``...), the UTC start time and a random tag.
RUN_SUFFIX = r"-\d{8}T\d{6}Z-[0-9a-f]{6}"
#: Written into a run's folder once its model is exported: the run is finished and may be pruned.
RUN_INFO_FILE = "clap_run.json"


def new_run_name(family: str, now: datetime | None = None) -> str:
    """A name no earlier execution has used: ``<family>-<UTC start>-<random hex>``."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    return f"{family}-{stamp}-{secrets.token_hex(3)}"


@dataclass
class RunStore:
    """The folder Ray Train keeps its runs in (``train.storage_path``), local or in S3."""

    uri: str                                          # as configured
    ray_path: str                                     # ``RunConfig.storage_path``
    ray_filesystem: pyarrow.fs.FileSystem | None      # ``RunConfig.storage_filesystem``
    filesystem: pyarrow.fs.FileSystem                 # the same place, for listing and deleting runs
    root: str                                         # the folder within ``filesystem``

    def run_names(self) -> list[str]:
        """Names of the run folders in storage, sorted."""
        selector = pyarrow.fs.FileSelector(self.root, allow_not_found=True, recursive=False)
        infos = self.filesystem.get_file_info(selector)
        return sorted(info.base_name for info in infos if info.type == pyarrow.fs.FileType.Directory)

    def has_run(self, name: str) -> bool:
        return self.filesystem.get_file_info(f"{self.root}/{name}").type == pyarrow.fs.FileType.Directory

    def write_info(self, name: str, info: dict[str, Any]) -> None:
        """Mark a run finished, with what it produced (the name, times, steps, model folder)."""
        with self.filesystem.open_output_stream(f"{self.root}/{name}/{RUN_INFO_FILE}") as stream:
            stream.write(json.dumps(info, indent=2, sort_keys=True).encode())

    def is_finished(self, name: str) -> bool:
        return self.filesystem.get_file_info(f"{self.root}/{name}/{RUN_INFO_FILE}").type == pyarrow.fs.FileType.File

    def family_runs(self, family: str) -> list[str]:
        """Runs of one family, oldest first (their names sort by start time)."""
        pattern = re.compile(re.escape(family) + RUN_SUFFIX)
        return [name for name in self.run_names() if pattern.fullmatch(name)]

    def prune(self, family: str, keep: int) -> list[str]:
        """Delete the family's finished runs except the newest ``keep``; unfinished runs (crashed
        executions, candidates for an explicit resume) stay and are logged. Returns the deleted names."""
        runs = self.family_runs(family)
        finished = [name for name in runs if self.is_finished(name)]
        unfinished = [name for name in runs if name not in finished]
        if unfinished:
            log.warning("%d unfinished run(s) in %s: %s; continue one with resume=<name> or delete it",
                        len(unfinished), self.uri, ", ".join(unfinished))
        doomed = finished[:max(0, len(finished) - keep)]
        for name in doomed:
            self.filesystem.delete_dir(f"{self.root}/{name}")
            log.info("deleted finished run %s from %s (keep_runs=%d)", name, self.uri, keep)
        return doomed


def run_store(uri: str, *, check: bool = True) -> RunStore:
    """The :class:`RunStore` of ``train.storage_path`` (checked like :func:`ray_storage`)."""
    ray_path, ray_filesystem = ray_storage(uri, check=check)
    if ray_filesystem is not None:
        return RunStore(uri, ray_path, ray_filesystem, ray_filesystem, ray_path)
    if "://" in ray_path:  # gs://, hdfs://...: Ray resolves the URI itself
        filesystem, root = pyarrow.fs.FileSystem.from_uri(ray_path)
        return RunStore(uri, ray_path, None, filesystem, root.rstrip("/"))
    return RunStore(uri, ray_path, None, pyarrow.fs.LocalFileSystem(), ray_path)
