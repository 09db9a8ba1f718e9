"""`s3://` for WebDataset: stream shards from, and write shards to, S3-compatible storage with boto3.

webdataset 1.0.2 has no built-in s3 scheme; ``register_webdataset_s3()`` adds one to its ``gopen``
dispatch table, so ``wds.WebDataset("s3://bucket/shards/000000.tar")`` and ``wds.TarWriter`` work on
any machine with AWS credentials (environment, profile or instance role; endpoint from
``AWS_ENDPOINT_URL`` for MinIO/moto/...). Nothing about credentials goes through params or logs.

Reads survive transient errors: when a stream breaks mid-object (connection cut, read timeout,
endpoint restarting), the object is opened again from the byte where it broke (``Range``, pinned to
the same version with ``If-Match`` on its ETag) after a backoff, with a warning; nothing is lost or
read twice. After ``STREAM_RETRY.object_retries`` failed reopenings the read raises
:class:`S3StreamError` (training then skips the rest of that shard, see clap.train.data).
"""

from __future__ import annotations

import hashlib
import importlib
import io
import logging
import os
import threading
import time
from typing import IO, Any

from clap.data.s3 import S3AccessError, S3Settings, S3Uri, _is_transient, explain_s3_error, make_s3_client

logger = logging.getLogger(__name__)

#: How often and how patiently a broken stream is reopened (botocore's own request retries come first).
STREAM_RETRY = S3Settings()

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


def _forget_client() -> None:
    """A forked process (a DataLoader worker) must not share the parent's connection pool."""
    global _client
    _client = None


os.register_at_fork(after_in_child=_forget_client)


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


class ResumingReader(io.RawIOBase):
    """An S3 object as a stream that reopens itself at the current byte when a read breaks."""

    def __init__(self, uri: S3Uri, settings: S3Settings | None = None) -> None:
        super().__init__()
        self.uri = uri
        self.settings = settings or STREAM_RETRY
        self.position = 0
        self.reopened = 0
        try:
            response = s3_client().get_object(Bucket=uri.bucket, Key=uri.prefix)
        except Exception as exc:
            if not _is_transient(exc):
                raise _explain(exc, uri) from exc
            response = {"Body": _BrokenBody(exc)}  # the first read retries the opening
        self.etag = response.get("ETag")
        self.size = int(response.get("ContentLength", -1))
        self._body = response["Body"]

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        delay = self.settings.backoff_s
        for attempt in range(self.settings.object_retries + 1):
            try:
                chunk = self._body.read(None if size is None or size < 0 else size)
                self.position += len(chunk)
                return chunk
            except Exception as exc:
                if not _is_transient(exc) or attempt == self.settings.object_retries:
                    explained = _explain(exc, self.uri)
                    if self.position:
                        explained = S3StreamError(f"{explained} (the read broke at byte {self.position} of "
                                                  f"{self.size} and could not be resumed)")
                    raise explained from exc
                logger.warning("%s: read broke at byte %d of %d (%s: %s); reopening there in %.1f s (retry %d/%d)",
                               self.uri, self.position, self.size, type(exc).__name__, exc, delay, attempt + 1,
                               self.settings.object_retries)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
                self._reopen()
        raise AssertionError("unreachable")  # pragma: no cover

    def _reopen(self) -> None:
        """The rest of the object from ``position``; a failure here is left to the next read attempt."""
        try:
            self._body.close()
        except Exception:  # noqa: BLE001 - the old connection is already broken
            pass
        extra: dict[str, Any] = {"Range": f"bytes={self.position}-"}
        if self.etag:
            extra["IfMatch"] = self.etag
        try:
            self._body = s3_client().get_object(Bucket=self.uri.bucket, Key=self.uri.prefix, **extra)["Body"]
            self.reopened += 1
        except Exception as exc:  # noqa: BLE001
            if not _is_transient(exc):
                raise _explain(exc, self.uri) from exc
            self._body = _BrokenBody(exc)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self._body.close()
            finally:
                super().close()


class _BrokenBody:
    """Stands in for a body that could not be reopened: its read raises the error, so the reader
    retries again."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def read(self, size: int | None = None) -> bytes:
        raise self.exc

    def close(self) -> None:
        pass


def open_s3(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any) -> IO[bytes]:
    """webdataset gopen handler: a reader that resumes broken streams, or a writer that uploads on close."""
    uri = S3Uri.parse(url)
    if mode.startswith("w"):
        return _UploadOnClose(uri)
    return ResumingReader(uri)


def register_webdataset_s3() -> None:
    # `webdataset.gopen` is shadowed by the function of that name in the package namespace
    gopen_module = importlib.import_module("webdataset.gopen")
    gopen_module.gopen_schemes["s3"] = open_s3


def read_text(url: str) -> str:
    with open_s3(url) as fh:
        return fh.read().decode()
