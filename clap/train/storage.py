"""Where Ray Train keeps checkpoints: a local folder, or an S3 prefix every node of a cluster can reach.

``train.storage_path`` may be ``s3://bucket/prefix``. Ray Train takes such storage as a path without
the scheme plus a ``pyarrow.fs.S3FileSystem``; :func:`ray_storage` builds both. The file system
carries the endpoint (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, for MinIO, moto, ...) and the
region, but no secrets: each process that unpickles it, on whichever node, takes credentials from
its own AWS chain (``AWS_*`` variables, ``AWS_PROFILE`` and the shared files, container or instance
roles), which also renews temporary ones during long runs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import urlparse

import boto3
import pyarrow.fs

from clap.data.remote_shards import storage_error
from clap.data.s3 import S3Uri, is_s3_uri, make_s3_client

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
