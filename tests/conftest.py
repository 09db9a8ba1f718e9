"""Shared fixtures: small generated audio files and a real S3 endpoint (moto server on 127.0.0.1)."""

from __future__ import annotations

import itertools
import logging
import os
import uuid
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import soundfile as sf

# Nothing in the tests may reach a model hub or send analytics.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

AudioWriter = Callable[..., Path]


@pytest.fixture(scope="session")
def make_audio() -> AudioWriter:
    """``make_audio(path, seconds=0.25, sample_rate=16000, channels=1)`` writes a tone and returns the path.

    Every call writes a different tone (so different bytes and hashes) unless ``freq`` is given;
    the format follows the file ending (.wav, .flac, .ogg).
    """
    counter = itertools.count()

    def write(
        path: str | Path,
        seconds: float = 0.25,
        sample_rate: int = 16000,
        channels: int = 1,
        freq: float | None = None,
    ) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tone = freq if freq is not None else 200.0 + 37.0 * next(counter)
        t = np.arange(int(seconds * sample_rate)) / sample_rate
        wave = 0.3 * np.sin(2 * np.pi * tone * t)
        data = np.stack([wave * (0.5 + 0.5 * c / max(1, channels)) for c in range(channels)], axis=1)
        sf.write(str(path), data.astype(np.float32), sample_rate)
        return path

    return write


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto S3 server on a free 127.0.0.1 port for the whole session; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request drowns test logs
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_env(moto_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """AWS_* variables pointing boto3 at the moto server with test credentials; yields the endpoint URL.

    The user's own AWS profile and config files are hidden so a test can never touch a real account.
    """
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    return moto_server


@pytest.fixture
def s3_bucket(s3_env: str) -> str:
    """A fresh, empty bucket on the moto server (unique name per test)."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_env).create_bucket(Bucket=name)
    return name


def upload_folder(folder: Path, bucket: str, prefix: str, endpoint_url: str) -> list[str]:
    """Upload every file under ``folder`` to ``s3://bucket/prefix/<relative path>``; returns the keys."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint_url)
    keys = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = f"{prefix}/{path.relative_to(folder).as_posix()}" if prefix else path.relative_to(folder).as_posix()
        client.upload_file(str(path), bucket, key)
        keys.append(key)
    return keys


@pytest.fixture
def s3_upload(s3_env: str) -> Callable[[Path, str, str], list[str]]:
    """``s3_upload(folder, bucket, prefix)`` copies a local folder into the moto server."""

    def upload(folder: Path, bucket: str, prefix: str) -> list[str]:
        return upload_folder(folder, bucket, prefix, s3_env)

    return upload
