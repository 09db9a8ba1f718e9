"""`s3://` for WebDataset: stream shards from, and write shards to, S3-compatible storage with boto3.

webdataset 1.0.2 has no built-in s3 scheme; ``register_webdataset_s3()`` adds one to its ``gopen``
dispatch table, so ``wds.WebDataset("s3://bucket/shards/000000.tar")`` and ``wds.TarWriter`` work on
any machine with AWS credentials (environment, profile or instance role; endpoint from
``AWS_ENDPOINT_URL`` for MinIO/moto/...). Nothing about credentials goes through params or logs.
"""

from __future__ import annotations

import importlib
import io
import threading
from typing import IO, Any

from clap.data.s3 import S3Uri, explain_s3_error, make_s3_client

_lock = threading.Lock()
_client: Any = None


def s3_client() -> Any:
    """One client per process (boto3 clients are thread-safe)."""
    global _client
    with _lock:
        if _client is None:
            _client = make_s3_client()
        return _client


def _endpoint() -> str | None:
    return s3_client().meta.endpoint_url


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
                raise explain_s3_error(exc, self.uri, _endpoint(), key=self.uri.prefix) from exc
        super().close()


def open_s3(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any) -> IO[bytes]:
    """webdataset gopen handler: a streaming reader, or a writer that uploads on close."""
    uri = S3Uri.parse(url)
    if mode.startswith("w"):
        return _UploadOnClose(uri)
    try:
        body = s3_client().get_object(Bucket=uri.bucket, Key=uri.prefix)["Body"]
    except Exception as exc:
        raise explain_s3_error(exc, uri, _endpoint(), key=uri.prefix) from exc
    return body


def register_webdataset_s3() -> None:
    # `webdataset.gopen` is shadowed by the function of that name in the package namespace
    gopen_module = importlib.import_module("webdataset.gopen")
    gopen_module.gopen_schemes["s3"] = open_s3


def read_text(url: str) -> str:
    with open_s3(url) as fh:
        return fh.read().decode()
