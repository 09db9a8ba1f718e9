"""Ray Train end to end on CPU: 2 workers, failure injection and resume, run identity and pruning, export."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from clap.train.config import TrainConfig
from clap.train.trainer import run_training
from tests.faults import FailOnce
from tests.toy_shards import write_toy_shards

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_shards(tmp_path_factory.mktemp("toy"))


def tiny_config(shard_root: Path, storage: Path, **overrides) -> TrainConfig:
    settings = dict(
        audio_encoder="htsat-cpu", text_encoder="tiny-bert", train_sets=["toy"], val_set="toy/val",
        shard_root=str(shard_root), storage_path=str(storage), batch_size=4, epochs=2, steps_per_epoch=3,
        warmup_steps=1, lr=5e-4, shuffle_buffer=8, num_workers=2, cpus_per_worker=1, max_failures=1,
        keep_checkpoints=1, log_every=1, caption_augmentation="none",
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def run_dirs(storage: Path) -> set[str]:
    return {p.name for p in storage.iterdir() if p.is_dir()} if storage.exists() else set()


def test_two_workers_train_export_and_embed(ray_cluster, shard_root: Path, tmp_path: Path) -> None:
    from clap.model.factory import load_model

    config = tiny_config(shard_root, tmp_path / "ray")
    result = run_training(config, tmp_path / "model")
    steps = [s["step"] for s in result.history["steps"]]
    assert steps == list(range(1, config.total_steps + 1))
    assert len(result.history["val"]) == config.epochs
    assert 0.0 <= result.metrics["val_t2a_map10"] <= 1.0
    assert all(torch.isfinite(torch.tensor(s["loss"])) for s in result.history["steps"])

    model = load_model(tmp_path / "model")
    tokens = model.tokenize(["a low hum"])
    with torch.no_grad():
        text = model.encode_text(tokens["input_ids"], tokens["attention_mask"])
    assert text.shape == (1, 512)
    assert torch.allclose(text.norm(dim=-1), torch.ones(1), atol=1e-5)


def test_failure_resumes_from_last_checkpoint(ray_cluster, shard_root: Path, tmp_path: Path) -> None:
    config = tiny_config(shard_root, tmp_path / "ray")
    marker = tmp_path / "failed-once"
    # the first checkpoint is at step 3 (end of epoch 1); rank 1 dies at step 5
    result = run_training(config, tmp_path / "model", step_hooks=[FailOnce(step=5, rank=1, marker=str(marker))])
    assert marker.read_text().startswith("failed once at step 5")
    steps = [s["step"] for s in result.history["steps"]]
    # resumed from step 3: steps 4.. were run again after the restart, each recorded once, same total
    assert steps == list(range(1, config.total_steps + 1))
    assert result.metrics["steps"] == config.total_steps
    assert run_dirs(tmp_path / "ray") == {result.run_name}  # one run, resumed within this execution


def test_each_execution_is_a_new_run_from_the_current_data(ray_cluster, tmp_path: Path) -> None:
    """The same settings over re-written shards (same file names, other captions) train afresh;
    a finished run is resumed only when named, and finished runs beyond keep_runs are deleted."""
    from dataclasses import replace

    from clap.model.factory import load_model
    from tests.fold_shards import write_fold_shards
    from tests.tiny_clap import save_tiny_model

    shards = write_fold_shards(tmp_path / "data", folds=2, caption="a {label}")
    storage = tmp_path / "ray"
    config = tiny_config(shards, storage, val_set="toy/train", init_checkpoint=str(save_tiny_model(tmp_path / "init", False)),
                         num_workers=1, epochs=1, steps_per_epoch=2, keep_runs=1)
    one = run_training(config, tmp_path / "m1")
    index = (shards / "index.json").read_text()
    write_fold_shards(tmp_path / "data", folds=2, caption="the sound of {label} in a big hall")
    assert (shards / "index.json").read_text() == index  # only the shards' bytes changed
    two = run_training(config, tmp_path / "m2")

    assert two.run_name != one.run_name
    assert [s["step"] for s in two.history["steps"]] == [1, 2]  # from step 1, not "resumed from step 2 of 2"
    first, second = load_model(tmp_path / "m1").state_dict(), load_model(tmp_path / "m2").state_dict()
    assert any(not torch.equal(first[key], second[key]) for key in first)  # a model of the new captions
    assert run_dirs(storage) == {two.run_name}  # keep_runs=1: the older finished run is gone

    # continuing a run is explicit: it carries on from the named run's last checkpoint
    three = run_training(replace(config, resume=two.run_name, epochs=2), tmp_path / "m3")
    assert three.run_name == two.run_name
    assert [s["step"] for s in three.history["steps"]] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="resume: no run clap-19990101T000000Z-000000"):
        run_training(replace(config, resume="clap-19990101T000000Z-000000"), tmp_path / "m4")


def test_prune_keeps_the_newest_finished_runs_of_a_family(tmp_path: Path) -> None:
    from clap.train.storage import RUN_INFO_FILE, new_run_name, run_store

    names = ["clap-20240101T000000Z-aaaaaa", "clap-20240102T000000Z-bbbbbb", "clap-20240103T000000Z-cccccc",
             "clap-20240104T000000Z-dddddd", "finetune-esc-fold1-20240101T000000Z-eeeeee", "clap-by-hand"]
    for name in names:
        (tmp_path / name).mkdir()
        if name != "clap-20240104T000000Z-dddddd":  # the newest one never finished (a crashed execution)
            (tmp_path / name / RUN_INFO_FILE).write_text("{}")
    store = run_store(str(tmp_path))
    assert store.prune("clap", keep=1) == ["clap-20240101T000000Z-aaaaaa", "clap-20240102T000000Z-bbbbbb"]
    assert run_dirs(tmp_path) == {"clap-20240103T000000Z-cccccc", "clap-20240104T000000Z-dddddd",
                                  "finetune-esc-fold1-20240101T000000Z-eeeeee", "clap-by-hand"}
    assert store.prune("finetune-esc-fold1", keep=0) == ["finetune-esc-fold1-20240101T000000Z-eeeeee"]
    fresh = {new_run_name("clap") for _ in range(20)}
    assert len(fresh) == 20 and all(name.startswith("clap-") for name in fresh)


def test_finetune_classes_come_from_the_named_sets(tmp_path: Path) -> None:
    from clap.data.manifest import ManifestRow, write_manifest
    from clap.stages.finetune import task_classes

    rows = [
        ManifestRow(id="a/1", source="a", split="train", path="x", labels=["dog", "rain"]),
        ManifestRow(id="a/2", source="a", split="test", path="x", labels=["bell"]),
        ManifestRow(id="b/1", source="b", split="train", path="x", labels=["siren"]),
    ]
    write_manifest(rows, tmp_path / "m.jsonl")
    assert task_classes(tmp_path / "m.jsonl", ["a/train"]) == ["dog", "rain"]
    assert task_classes(tmp_path / "m.jsonl", ["a"]) == ["bell", "dog", "rain"]
    with pytest.raises(ValueError, match="no labelled rows"):
        task_classes(tmp_path / "m.jsonl", ["c"])


def test_no_usable_clip_is_an_error_not_a_hang(shard_root: Path) -> None:
    from clap.train.data import shard_urls, train_batches

    urls = shard_urls(shard_root, ["toy"], "train")
    batches = train_batches(urls, batch_size=2, target=lambda meta: None, shuffle_buffer=4, seed=0, rank=0, world_size=1)
    with pytest.raises(ValueError, match="has a training target"):
        next(batches)


def test_prune_deletes_finished_runs_in_s3(s3_bucket: str, s3_env: str) -> None:
    import boto3

    from clap.train.storage import RUN_INFO_FILE, run_store

    client = boto3.client("s3", endpoint_url=s3_env)
    old, new = "clap-20240101T000000Z-aaaaaa", "clap-20240102T000000Z-bbbbbb"
    for name in (old, new):
        client.put_object(Bucket=s3_bucket, Key=f"ray/{name}/step_000001/model.safetensors", Body=b"x")
    store = run_store(f"s3://{s3_bucket}/ray")
    store.write_info(old, {"run": old})
    store.write_info(new, {"run": new})
    assert store.run_names() == [old, new] and store.is_finished(old)
    assert store.prune("clap", keep=1) == [old]
    listed = client.list_objects_v2(Bucket=s3_bucket, Prefix="ray/").get("Contents", [])
    keys = {obj["Key"] for obj in listed if not obj["Key"].endswith("/")}  # pyarrow may leave a folder marker
    assert keys == {f"ray/{new}/step_000001/model.safetensors", f"ray/{new}/{RUN_INFO_FILE}"}
