"""`s3://` for WebDataset: stream shards from, and write shards to, S3-compatible storage with boto3.

webdataset 1.0.2 has no built-in s3 scheme; ``register_webdataset_s3()`` adds one to its ``gopen``
dispatch table, so ``wds.WebDataset("s3://bucket/shards/000000.tar")`` and ``wds.TarWriter`` work on
any machine with AWS credentials (environment, profile or instance role; endpoint from
``AWS_ENDPOINT_URL`` for MinIO/moto/...). Nothing about credentials goes through params or logs.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import threading
from typing import IO, Any

from clap.data.s3 import S3AccessError, S3Uri, explain_s3_error, make_s3_client

#: AWS variables that pick the endpoint or the credentials: when one changes, a new client is made.
_CLIENT_ENV = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_DEFAULT_REGION", "AWS_REGION",
)
_lock = threading.Lock()
_client: tuple[str, Any] | None = None  # (digest of the AWS environment it was made for, client)


class S3StreamError(S3AccessError):
    """A shard or index could not be opened on S3; the message names the object's URI and the fix.

    webdataset appends the failing URL to an exception's args; the message already names it, so
    ``str()`` shows the message alone.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def s3_client() -> Any:
    """One client per process and AWS environment (boto3 clients are thread-safe)."""
    global _client
    # a digest, so that the secret is not kept in one more place
    env = hashlib.sha256("\0".join(os.environ.get(name, "") for name in _CLIENT_ENV).encode()).hexdigest()
    with _lock:
        if _client is None or _client[0] != env:
            _client = (env, make_s3_client())
        return _client[1]


def _endpoint() -> str | None:
    return s3_client().meta.endpoint_url


def _explain(exc: BaseException, uri: S3Uri) -> S3StreamError:
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    if code in ("NoSuchKey", "404"):
        message = (
            f"{uri}: no such object at {_endpoint()}; the shard index lists it, so the shards under this prefix are "
            "incomplete: publish them again (shards.remote + dvc repro shards) or fix train.shard_root"
        )
    elif code == "NoSuchBucket":
        message = (
            f"{uri}: bucket '{uri.bucket}' does not exist at {_endpoint()}; fix train.shard_root or the endpoint "
            "(AWS_ENDPOINT_URL)"
        )
    else:
        message = str(explain_s3_error(exc, uri, _endpoint()))
    return S3StreamError(message)


class _UploadOnClose(io.BytesIO):
    """A write buffer that becomes one S3 object when closed."""

    def __init__(self, uri: S3Uri) -> None:
        super().__init__()
        self.uri = uri

    def close(self) -> None:
        if not self.closed:
            try:
                s3_client().put_object(Bucket=self.uri.bucket, Key=self.uri.prefix, Body=self.getvalue())
            except Exception as exc:
                raise _explain(exc, self.uri) from exc
        super().close()


def open_s3(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any) -> IO[bytes]:
    """webdataset gopen handler: a streaming reader, or a writer that uploads on close."""
    uri = S3Uri.parse(url)
    if mode.startswith("w"):
        return _UploadOnClose(uri)
    try:
        body = s3_client().get_object(Bucket=uri.bucket, Key=uri.prefix)["Body"]
    except Exception as exc:
        raise _explain(exc, uri) from exc
    return body


def register_webdataset_s3() -> None:
    # `webdataset.gopen` is shadowed by the function of that name in the package namespace
    gopen_module = importlib.import_module("webdataset.gopen")
    gopen_module.gopen_schemes["s3"] = open_s3


def read_text(url: str) -> str:
    with open_s3(url) as fh:
        return fh.read().decode()
