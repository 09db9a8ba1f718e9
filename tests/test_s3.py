"""S3 sources against a real S3 endpoint (moto server): mirror, ingest, errors, an outage mid-download."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from pathlib import Path

import urllib.request

import boto3
import pytest

from clap.data.ingest import IngestConfig, IngestOutputs, describe_audio, read_sources, run_ingest
from clap.data.manifest import read_manifest, sha256_file
from clap.data.s3 import S3AccessError, S3Settings, make_s3_client, mirror_prefix
from clap.data.sources import parse_sources
from tests.test_sources import build_clotho

FAST = S3Settings(max_attempts=2, object_retries=6, backoff_s=0.2, workers=2, connect_timeout_s=2, read_timeout_s=5)


@pytest.fixture
def clotho_in_s3(tmp_path: Path, make_audio, s3_bucket: str, s3_upload) -> tuple[Path, str]:
    local = build_clotho(tmp_path / "clotho", make_audio)
    s3_upload(local, s3_bucket, "datasets/clotho")
    return local, f"s3://{s3_bucket}/datasets/clotho"


def comparable(rows) -> list[tuple]:
    return sorted((r.id, r.split, tuple(r.captions), r.sha256, r.duration, r.sample_rate) for r in rows)


def test_s3_clotho_ingests_like_the_local_copy(clotho_in_s3, tmp_path: Path) -> None:
    local, uri = clotho_in_s3
    specs = parse_sources([{"name": "clotho", "kind": "clotho", "path": uri}])
    outputs = IngestOutputs(manifest=tmp_path / "s3.jsonl", report=tmp_path / "report.json", gx_dir=tmp_path / "gx")
    run_ingest(IngestConfig(sources=specs, s3_cache=tmp_path / "cache", s3=FAST, progress=False), outputs)
    from_s3 = read_manifest(outputs.manifest)

    local_specs = parse_sources([{"name": "clotho", "kind": "clotho", "path": str(local)}])
    local_config = IngestConfig(sources=local_specs, progress=False)
    from_disk = [row for source in read_sources(local_config) for row in source.rows]
    describe_audio(from_disk, progress=False)
    assert comparable(from_s3) == comparable(from_disk) and len(from_s3) == 4
    assert all(Path(r.path).is_relative_to(tmp_path / "cache") for r in from_s3)
    mirror = json.loads(outputs.report.read_text())["sources"]["clotho"]["s3"]
    assert mirror["downloaded"] == 7 and mirror["listed"] == 7  # 4 clips + 3 caption tables


def test_mirror_moves_only_new_or_changed_objects(clotho_in_s3, tmp_path: Path, s3_env: str) -> None:
    _, uri = clotho_in_s3
    bucket = uri.split("/")[2]
    cache = tmp_path / "cache"
    first = mirror_prefix(uri, cache, settings=FAST, progress=False)
    again = mirror_prefix(uri, cache, settings=FAST, progress=False)
    assert (first.downloaded, again.downloaded, again.skipped) == (7, 0, 7)

    client = boto3.client("s3", endpoint_url=s3_env)
    client.put_object(Bucket=bucket, Key="datasets/clotho/development/Rain on roof.wav", Body=b"changed bytes")
    client.delete_object(Bucket=bucket, Key="datasets/clotho/evaluation/Traffic noise.wav")
    third = mirror_prefix(uri, cache, settings=FAST, progress=False)
    assert (third.downloaded, third.skipped, third.removed) == (1, 5, 1)
    assert (first.local_dir / "development" / "Rain on roof.wav").read_bytes() == b"changed bytes"
    assert not (first.local_dir / "evaluation" / "Traffic noise.wav").exists()


def set_moto_auth(endpoint: str, requests_before_auth: bytes) -> None:
    """moto's own API: check credentials after this many requests (b"0": from now on; b"inf": never)."""
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth", data=requests_before_auth, method="POST",
        headers={"Content-Type": "text/plain"},  # a form content type would hide the body from moto
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def test_wrong_credentials_name_the_uri_and_the_fix(
    clotho_in_s3, tmp_path: Path, s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, uri = clotho_in_s3
    # make the moto server check credentials (its own HTTP API), and restore it afterwards
    set_moto_auth(s3_env, b"0")
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        with pytest.raises(S3AccessError) as info:
            mirror_prefix(uri, tmp_path / "cache", settings=FAST, progress=False)
    finally:
        set_moto_auth(s3_env, b"inf")
    message = str(info.value)
    assert message.startswith(uri) and "refused the credentials (InvalidAccessKeyId" in message
    assert "AWS_ACCESS_KEY_ID" in message and "not-the-secret" not in message


def test_missing_bucket_is_a_clear_error(s3_env: str, tmp_path: Path) -> None:
    with pytest.raises(S3AccessError, match=r"s3://no-such-bucket-here/x: bucket 'no-such-bucket-here' does not exist"):
        mirror_prefix("s3://no-such-bucket-here/x", tmp_path / "cache", settings=FAST, progress=False)


def test_empty_prefix_is_a_clear_error(s3_bucket: str, tmp_path: Path) -> None:
    with pytest.raises(S3AccessError, match="no objects under this prefix"):
        mirror_prefix(f"s3://{s3_bucket}/nothing", tmp_path / "cache", settings=FAST, progress=False)


class OutageProxy:
    """A TCP proxy in front of the S3 endpoint that goes down once, on the Nth GET it forwards, and
    comes back on the same port after ``downtime`` seconds (never if None): open connections are cut,
    new ones refused. With ``cut_after_bytes`` the Nth GET is answered for that many bytes first, so
    the outage breaks a response in the middle of its body."""

    def __init__(self, target: tuple[str, int], fail_on_get: int, downtime: float | None,
                 cut_after_bytes: int | None = None) -> None:
        self.target = target
        self.fail_on_get = fail_on_get
        self.downtime = downtime
        self.cut_after_bytes = cut_after_bytes
        self.gets = 0
        self.outages = 0
        self.port = 0
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._doomed: dict[socket.socket, int] = {}  # client socket -> response bytes left before the cut

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            live, self._live = self._live, set()
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            except OSError:
                pass
            listener.close()
        for sock in live:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # listener closed
            if self._listener is not listener:  # accepted while going down: refuse
                client.close()
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._live |= {client, upstream}
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _go_down(self) -> None:
        self.outages += 1
        with self._lock:
            self._doomed.clear()
        self.stop()
        if self.downtime is not None:
            threading.Timer(self.downtime, self.start).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_client and data.startswith(b"GET /"):
                    with self._lock:
                        self.gets += 1
                        trip = self.gets == self.fail_on_get
                    if trip and self.cut_after_bytes is not None:
                        with self._lock:
                            self._doomed[src] = self.cut_after_bytes
                    elif trip:
                        self._go_down()  # the request dies with the connection; nothing listens now
                        return
                if not from_client and dst in self._doomed:
                    left = self._doomed[dst]
                    if len(data) >= left:
                        dst.sendall(data[:left])
                        self._go_down()  # the response breaks mid-body
                        return
                    self._doomed[dst] = left - len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.close()
                except OSError:
                    pass


def test_outage_mid_download_is_retried_and_loses_nothing(clotho_in_s3, tmp_path: Path, s3_env: str) -> None:
    local, uri = clotho_in_s3
    host, port = s3_env.removeprefix("http://").split(":")
    # GET 1 lists the bucket; GET 3 is the second object download: the server vanishes for 3 s,
    # longer than botocore's own retry (max_attempts=2 waits at most 2 s), so ours must carry it
    proxy = OutageProxy((host, int(port)), fail_on_get=3, downtime=3.0)
    proxy.start()
    try:
        started = time.monotonic()
        result = mirror_prefix(uri, tmp_path / "cache", endpoint_url=proxy.endpoint, settings=FAST, progress=False)
        elapsed = time.monotonic() - started
    finally:
        proxy.stop()
    assert proxy.outages == 1 and elapsed >= 2.5, "the outage did not happen during the mirror"
    assert result.retries >= 1 and result.downloaded == result.listed == 7
    for original in (p for p in local.rglob("*") if p.is_file()):
        copy = result.local_dir / original.relative_to(local)
        assert sha256_file(copy) == sha256_file(original), f"{copy} differs from what was uploaded"


def test_a_mirror_cut_short_resumes_without_fetching_twice(clotho_in_s3, tmp_path: Path, s3_env: str) -> None:
    local, uri = clotho_in_s3
    host, port = s3_env.removeprefix("http://").split(":")
    proxy = OutageProxy((host, int(port)), fail_on_get=4, downtime=None)  # down for good after 2 objects
    proxy.start()
    one_worker_no_retries = S3Settings(max_attempts=1, object_retries=0, workers=1, connect_timeout_s=2)
    try:
        with pytest.raises(S3AccessError, match="could not reach the S3 endpoint"):
            mirror_prefix(uri, tmp_path / "cache", endpoint_url=proxy.endpoint, settings=one_worker_no_retries,
                          progress=False)
    finally:
        proxy.stop()
    resumed = mirror_prefix(uri, tmp_path / "cache", settings=FAST, progress=False)
    assert (resumed.skipped, resumed.downloaded) == (2, 5)
    for original in (p for p in local.rglob("*") if p.is_file()):
        assert sha256_file(resumed.local_dir / original.relative_to(local)) == sha256_file(original)


def test_training_stream_resumes_a_shard_cut_mid_read(tmp_path: Path, s3_bucket: str, s3_env: str,
                                                      monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """The endpoint drops while a training shard streams (mid-body) and is back 1 s later: the
    read resumes where it broke, and the pass still gives every clip exactly once."""
    from collections import Counter

    from clap.data import wds_s3
    from clap.train.data import eval_pairs, train_batches
    from tests.conftest import upload_folder
    from tests.toy_shards import write_toy_shards

    shard_root = write_toy_shards(tmp_path / "toy", seconds=1.0, samples_per_shard=4)
    upload_folder(shard_root, s3_bucket, "shards", s3_env)
    names = sorted(p.name for p in (shard_root / "toy" / "train").glob("*.tar"))
    urls = [f"s3://{s3_bucket}/shards/toy/train/{name}" for name in names]
    expected = eval_pairs([str(shard_root / "toy" / "train" / name) for name in names])[3]
    assert min((shard_root / "toy" / "train" / n).stat().st_size for n in names) > 120_000  # the cut lands mid-shard

    host, port = s3_env.removeprefix("http://").split(":")
    proxy = OutageProxy((host, int(port)), fail_on_get=2, downtime=1.0, cut_after_bytes=100_000)
    proxy.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    monkeypatch.setattr(wds_s3, "STREAM_RETRY", S3Settings(object_retries=6, backoff_s=0.2))
    seen = []
    try:
        with caplog.at_level("WARNING", logger="clap.data.wds_s3"):
            for batch in train_batches(urls, batch_size=4, target=lambda meta: meta["text"][0], shuffle_buffer=3,
                                       seed=0, rank=0, world_size=1, loader_workers=0, passes=1):
                seen.extend(batch.ids)
    finally:
        proxy.stop()
    assert proxy.outages == 1, "the outage did not happen during the pass"
    assert "read broke at byte" in caplog.text and "reopening there" in caplog.text
    assert Counter(seen) == Counter(expected) and len(seen) == 18


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


def test_an_unreachable_endpoint_fails_once_naming_the_uri_and_the_fix(
    s3_env: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    defaults = S3Settings()
    client = make_s3_client(endpoint, settings=defaults)
    # every client is bounded: ~attempts x connect timeout (+ botocore's backoff) before it gives up
    assert (client.meta.config.connect_timeout, client.meta.config.retries["total_max_attempts"]) == (5.0, 3)
    with caplog.at_level(logging.WARNING), pytest.raises(S3AccessError) as info:
        mirror_prefix("s3://some-bucket/clotho", tmp_path / "cache", endpoint_url=endpoint, progress=False)
    message = str(info.value)
    assert message.startswith(f"s3://some-bucket/clotho: could not reach the S3 endpoint at {endpoint}")
    assert "AWS_ENDPOINT_URL" in message and "`endpoint_url`" in message
    # an endpoint that never answered is not retried again on top of botocore's own attempts
    assert "retry 1/" not in caplog.text


def test_a_blackholed_endpoint_costs_botocores_attempts_only(
    s3_env: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # a listener that never accepts, its backlog full: new connections hang like packets sent into a void
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    short = S3Settings(max_attempts=2, connect_timeout_s=0.3)
    try:
        with caplog.at_level(logging.WARNING), pytest.raises(S3AccessError) as info:
            mirror_prefix("s3://some-bucket/x", tmp_path / "cache", endpoint_url=f"http://127.0.0.1:{port}",
                          settings=short, progress=False)
    finally:
        for sock in fillers + [listener]:
            sock.close()
    assert "could not reach the S3 endpoint" in str(info.value) and "ConnectTimeoutError" in str(info.value)
    assert "retry 1/" not in caplog.text  # 2 attempts x 0.3 s, not 5 x that
