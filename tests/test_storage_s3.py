"""Object storage end to end on a real S3 endpoint (moto server): shards published to and streamed
from a bucket, the DVC remote (push, clone, pull), Ray Train checkpoints kept in S3 and resumed from."""

from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
from pathlib import Path

import boto3
import pyarrow.fs
import pytest
import webdataset as wds
import yaml

from clap.data.manifest import write_manifest
from clap.data.remote_shards import PART_SIZE, RemoteShardsConfig, file_digests, publish_shards
from clap.data.s3 import S3AccessError, S3Settings
from clap.data.shards import list_shards
from clap.data.wds_s3 import register_webdataset_s3
from clap.stages import shards as shards_stage
from clap.train.data import eval_pairs, shard_urls
from clap.train.storage import ray_storage
from tests.faults import FailOnce
from tests.repo_copy import copy_repo, run
from tests.test_s3 import set_moto_auth
from tests.test_shards import make_rows
from tests.toy_shards import write_toy_shards

FAST = S3Settings(max_attempts=2, object_retries=1, backoff_s=0.1, workers=4, connect_timeout_s=2, read_timeout_s=5)


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Toy shards (train + val, 4 samples per tar) on local disk."""
    return write_toy_shards(tmp_path_factory.mktemp("toy"), seconds=0.5)


def remote_keys(endpoint: str, bucket: str, prefix: str) -> dict[str, str]:
    """``{relative key: ETag}`` of every object under the prefix."""
    client = boto3.client("s3", endpoint_url=endpoint)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/")
    return {obj["Key"][len(prefix) + 1:]: obj["ETag"] for page in pages for obj in page.get("Contents", [])}


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def raw_samples(urls: list[str]) -> list[dict[str, bytes]]:
    """The members of every sample as stored (no decoding), in shard order."""
    dataset = wds.WebDataset(urls, shardshuffle=False, nodesplitter=lambda src, group=None: src, empty_check=False)
    return [{"key": s["__key__"], "flac": s["flac"], "json": s["json"]} for s in dataset]


# --------------------------------------------------------------------------- shards to and from S3


def test_published_shards_stream_back_byte_for_byte(toy_root: Path, s3_bucket: str, s3_env: str) -> None:
    remote = f"s3://{s3_bucket}/clap/shards"
    result = publish_shards(toy_root, remote, settings=FAST, progress=False)
    assert sorted(result.uploaded) == sorted(tree(toy_root)) and not result.unchanged
    assert set(remote_keys(s3_env, s3_bucket, "clap/shards")) == set(tree(toy_root))

    register_webdataset_s3()
    for split in ("train", "val"):
        urls = shard_urls(remote, ["toy"], split)  # index.json read from the bucket
        assert all(u.startswith(f"{remote}/toy/{split}/") for u in urls)
        local = raw_samples([str(p) for p in list_shards(toy_root, ["toy"], [split])])
        streamed = raw_samples(urls)
        assert len(streamed) == len(local) == {"train": 18, "val": 6}[split]
        assert streamed == local  # same keys, same flac and json bytes, same order

    # what evaluation (and the trainer's validation) reads, from S3 and from disk alike
    waves_s3, captions_s3, owner_s3, ids_s3 = eval_pairs(shard_urls(remote, ["toy"], "val"))
    waves, captions, owner, ids = eval_pairs([str(p) for p in list_shards(toy_root, ["toy"], ["val"])])
    assert (captions_s3, owner_s3, ids_s3) == (captions, owner, ids)
    assert all((a == b).all() for a, b in zip(waves_s3, waves, strict=True))


def test_republish_moves_only_what_changed_and_drops_stale_shards(
    tmp_path: Path, s3_bucket: str, s3_env: str
) -> None:
    root = write_toy_shards(tmp_path / "a", seconds=0.25, samples_per_shard=2)
    remote = f"s3://{s3_bucket}/shards"
    first = publish_shards(root, remote, settings=FAST, progress=False)
    again = publish_shards(root, remote, settings=FAST, progress=False)
    assert (again.uploaded, again.deleted, len(again.unchanged)) == ([], [], len(first.uploaded))

    # the same clips in bigger shards: 9 + 3 tars become 5 + 2
    fewer = write_toy_shards(tmp_path / "b", seconds=0.25, samples_per_shard=4)
    shutil.rmtree(root)
    shutil.copytree(fewer, root)
    third = publish_shards(root, remote, settings=FAST, progress=False)
    assert "index.json" in third.uploaded and "toy/train/sizes.json" in third.uploaded
    assert third.deleted == [f"toy/train/00000{i}.tar" for i in (5, 6, 7, 8)] + ["toy/val/000002.tar"]
    assert set(remote_keys(s3_env, s3_bucket, "shards")) == set(tree(root))
    client = boto3.client("s3", endpoint_url=s3_env)
    for relative, data in tree(root).items():
        assert client.get_object(Bucket=s3_bucket, Key=f"shards/{relative}")["Body"].read() == data, relative


def test_multipart_uploads_are_recognised_as_unchanged(tmp_path: Path, s3_bucket: str, s3_env: str) -> None:
    root = write_toy_shards(tmp_path / "toy", per_class={"train": 1}, seconds=0.25)
    big = root / "toy" / "train" / "big.bin"
    big.write_bytes(os.urandom(11 * 1024 * 1024))  # 3 parts of 5 MiB (S3's smallest part size)
    five_mib = 5 * 1024 * 1024
    remote = f"s3://{s3_bucket}/big"
    publish_shards(root, remote, settings=FAST, part_size=five_mib, progress=False)
    etag = remote_keys(s3_env, s3_bucket, "big")["toy/train/big.bin"].strip('"')
    assert etag.endswith("-3") and etag == file_digests(big, five_mib)[1]
    assert publish_shards(root, remote, settings=FAST, part_size=five_mib, progress=False).uploaded == []
    # parts of another size give another ETag; the MD5 stored with the object still says "unchanged"
    assert publish_shards(root, remote, settings=FAST, part_size=PART_SIZE, progress=False).uploaded == []
    big.write_bytes(os.urandom(11 * 1024 * 1024))
    assert publish_shards(root, remote, settings=FAST, part_size=five_mib, progress=False).uploaded == [
        "toy/train/big.bin"
    ]


def test_shards_stage_publishes_when_remote_is_set(tmp_path: Path, s3_bucket: str, s3_env: str) -> None:
    write_manifest(make_rows(tmp_path), tmp_path / "captions.jsonl")
    remote = f"s3://{s3_bucket}/clap/shards"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"shards": {"samples_per_shard": 2, "remote": remote}}))
    args = ["--params", str(params), "--input", str(tmp_path / "captions.jsonl"), "--out", str(tmp_path / "shards"),
            "--no-progress"]
    assert shards_stage.main(args) == 0
    assert set(remote_keys(s3_env, s3_bucket, "clap/shards")) == set(tree(tmp_path / "shards"))

    params.write_text(yaml.safe_dump({"shards": {"samples_per_shard": 2, "remote": f"s3://{s3_bucket}"}}))
    with pytest.raises(ValueError, match="is a whole bucket; give the shards a prefix"):
        RemoteShardsConfig.from_params({"remote": f"s3://{s3_bucket}"})
    assert shards_stage.main(args) == 1


def test_publish_to_a_missing_bucket_names_it(toy_root: Path, s3_env: str) -> None:
    with pytest.raises(S3AccessError) as info:
        publish_shards(toy_root, "s3://no-such-shard-bucket/x", settings=FAST, progress=False)
    message = str(info.value)
    assert message.startswith("s3://no-such-shard-bucket/x: bucket 'no-such-shard-bucket' does not exist at http://")
    assert "fix shards.remote" in message


def test_wrong_credentials_while_streaming_name_the_uri_and_the_fix(
    toy_root: Path, s3_bucket: str, s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = f"s3://{s3_bucket}/clap/shards"
    publish_shards(toy_root, remote, settings=FAST, progress=False)
    urls = shard_urls(remote, ["toy"], "val")
    register_webdataset_s3()
    set_moto_auth(s3_env, b"0")
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG2")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-shard-secret")
        with pytest.raises(S3AccessError) as index_error:
            shard_urls(remote, ["toy"], "val")
        with pytest.raises(S3AccessError) as shard_error:
            eval_pairs(urls)
    finally:
        set_moto_auth(s3_env, b"inf")
    assert str(index_error.value).startswith(f"{remote}/index.json: ")
    assert str(shard_error.value).startswith(f"{urls[0]}: ")
    for message in (str(index_error.value), str(shard_error.value)):
        assert "refused the credentials (InvalidAccessKeyId" in message
        assert "AWS_ACCESS_KEY_ID" in message and "not-the-shard-secret" not in message


def test_a_shard_missing_from_the_bucket_says_how_to_fix_it(toy_root: Path, s3_bucket: str, s3_env: str) -> None:
    remote = f"s3://{s3_bucket}/clap/shards"
    publish_shards(toy_root, remote, settings=FAST, progress=False)
    urls = shard_urls(remote, ["toy"], "val")
    boto3.client("s3", endpoint_url=s3_env).delete_object(Bucket=s3_bucket, Key="clap/shards/toy/val/000001.tar")
    with pytest.raises(S3AccessError) as info:
        eval_pairs(urls)
    assert str(info.value).startswith(f"{remote}/toy/val/000001.tar: no such object at {s3_env}")
    assert "publish them again (shards.remote" in str(info.value)


# --------------------------------------------------------------------------- Ray Train storage


def test_ray_storage_maps_s3_to_a_working_filesystem(s3_bucket: str, s3_env: str, tmp_path: Path) -> None:
    path, filesystem = ray_storage(f"s3://{s3_bucket}/ray/runs")
    assert path == f"{s3_bucket}/ray/runs" and isinstance(filesystem, pyarrow.fs.S3FileSystem)
    # Ray pickles the file system to every worker: the copy must reach the same endpoint
    copy = pickle.loads(pickle.dumps(filesystem))
    with copy.open_output_stream(f"{path}/probe.txt") as fh:
        fh.write(b"checkpoint bytes")
    body = boto3.client("s3", endpoint_url=s3_env).get_object(Bucket=s3_bucket, Key="ray/runs/probe.txt")["Body"]
    assert body.read() == b"checkpoint bytes"

    assert ray_storage(str(tmp_path / "ray")) == (str((tmp_path / "ray").resolve()), None)
    with pytest.raises(S3AccessError, match=r"s3://no-such-ray-bucket/x: bucket 'no-such-ray-bucket' does not exist"
                                            r".*fix train.storage_path"):
        ray_storage("s3://no-such-ray-bucket/x")


# --------------------------------------------------------------------------- DVC remote on S3


@pytest.mark.slow
def test_dvc_remote_push_then_clone_and_pull(tmp_path: Path, s3_bucket: str, s3_env: str, make_audio) -> None:
    origin = copy_repo(tmp_path / "origin")
    data = origin / "data" / "external" / "clips"
    for i in range(3):
        make_audio(data / f"clip-{i}.flac", seconds=0.2)
    make_audio(data / "nested" / "clip.wav", seconds=0.1)
    run(["dvc", "add", "data/external/clips"], origin)
    # the remote's URL is shared through git; the endpoint is this machine's business (config.local)
    run(["dvc", "remote", "add", "-d", "s3remote", f"s3://{s3_bucket}/dvc"], origin)
    run(["dvc", "remote", "modify", "--local", "s3remote", "endpointurl", s3_env], origin)
    run(["git", "add", "-A"], origin)
    run(["git", "commit", "-q", "-m", "track clips, S3 remote"], origin)
    pushed = run(["dvc", "push"], origin)
    assert "5 files pushed" in pushed.stdout  # 4 files + the directory listing
    assert any(k.startswith("files/md5/") for k in remote_keys(s3_env, s3_bucket, "dvc"))

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)
    assert not (clone / "data" / "external" / "clips").exists()
    # no config.local here: the endpoint comes from AWS_ENDPOINT_URL, the credentials from AWS_*
    run(["dvc", "pull", "data/external/clips.dvc"], clone)
    assert tree(clone / "data" / "external" / "clips") == tree(data)


# --------------------------------------------------------------------------- training with S3 storage


class RequestLog(logging.Handler):
    """The moto server's request lines (werkzeug logs one per request)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.mark.slow
def test_training_keeps_checkpoints_in_s3_and_resumes_from_them(
    toy_root: Path, s3_bucket: str, s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    from clap.train.trainer import run_training
    from tests.test_train import tiny_config

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    shard_root = f"s3://{s3_bucket}/clap/shards"
    publish_shards(toy_root, shard_root, settings=FAST, progress=False)
    # shards and checkpoints both in S3: nothing of the run lives on the driver's disk
    config = tiny_config(shard_root, f"s3://{s3_bucket}/ray", num_workers=1, epochs=2, steps_per_epoch=1,
                         keep_checkpoints=2, ray_num_cpus=2)
    marker = tmp_path / "failed-once"
    requests = RequestLog()
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.addHandler(requests)
    werkzeug.setLevel(logging.INFO)
    try:
        # Ray is started here, after s3_env, so that its workers inherit the AWS variables
        result = run_training(config, tmp_path / "model", step_hooks=[FailOnce(step=2, rank=0, marker=str(marker))])
    finally:
        werkzeug.removeHandler(requests)
        werkzeug.setLevel(level)
        ray.shutdown()
    assert marker.read_text().startswith("failed once at step 2")
    assert [s["step"] for s in result.history["steps"]] == [1, 2]
    keys = remote_keys(s3_env, s3_bucket, "ray")
    checkpoints = {k.split("/")[1] for k in keys if k.startswith(f"{result.run_name}/step_")}
    assert "step_000002" in checkpoints
    assert any(k.endswith("train_state.pt") for k in keys)
    # the restarted worker read the step-1 checkpoint's training state back from the bucket before
    # step 2 was checkpointed (the driver reads checkpoints only after the run)
    lines = requests.lines
    reads = [i for i, line in enumerate(lines) if re.search(r"GET /\S*step_000001/train_state\.pt", line)]
    writes = [i for i, line in enumerate(lines) if re.search(r"(PUT|POST) /\S*step_000002/", line)]
    assert reads and writes and reads[0] < writes[0], "\n".join(line for line in lines if "step_0" in line)
    assert (tmp_path / "model").is_dir()
