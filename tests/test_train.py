"""Ray Train end to end on CPU: 2 workers, failure injection and resume, run naming, export."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from clap.train.config import TrainConfig
from clap.train.trainer import run_training
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
    from clap.model.checkpoint import load_model

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
    result = run_training(config, tmp_path / "model", fault_injection={"step": 5, "rank": 1, "marker": str(marker)})
    assert marker.read_text().startswith("failed once at step 5")
    steps = [s["step"] for s in result.history["steps"]]
    # resumed from step 3: steps 4.. were run again after the restart, each recorded once, same total
    assert steps == list(range(1, config.total_steps + 1))
    assert result.metrics["steps"] == config.total_steps


def test_changed_param_starts_a_fresh_run(ray_cluster, shard_root: Path, tmp_path: Path) -> None:
    storage = tmp_path / "ray"
    first = tiny_config(shard_root, storage, epochs=1, steps_per_epoch=2)
    same = tiny_config(shard_root, storage, epochs=1, steps_per_epoch=2)
    changed = tiny_config(shard_root, storage, epochs=1, steps_per_epoch=2, lr=1e-3)
    assert first.run_name("data") == same.run_name("data")
    assert first.run_name("data") != changed.run_name("data")

    one = run_training(first, tmp_path / "m1")
    two = run_training(changed, tmp_path / "m2")
    assert one.run_name != two.run_name
    assert run_dirs(storage) >= {one.run_name, two.run_name}
    # the changed run trained from scratch: its own full history, not a continuation of the first
    assert [s["step"] for s in two.history["steps"]] == [1, 2]


@pytest.mark.parametrize("multi_label,linear_probe", [(False, True), (True, False)])
def test_supervised_finetune_through_the_same_trainer(ray_cluster, shard_root: Path, tmp_path: Path,
                                                      multi_label: bool, linear_probe: bool) -> None:
    import json

    from safetensors.torch import load_file

    from clap.model.checkpoint import save_model
    from clap.model.model import ClapConfig, ClapModel
    from tests.toy_shards import TOY_CLASSES

    save_model(ClapModel(ClapConfig(audio_encoder="htsat-cpu", text_encoder="tiny-bert")), tmp_path / "clap")
    config = tiny_config(
        shard_root, tmp_path / "ray", objective="classification", init_checkpoint=str(tmp_path / "clap"),
        classes=sorted(TOY_CLASSES), multi_label=multi_label, linear_probe=linear_probe,
        epochs=1, steps_per_epoch=2, num_workers=1, lr=1e-2,
    )
    assert config.val_metric == ("val_map" if multi_label else "val_top1")
    result = run_training(config, tmp_path / "classifier")
    assert 0.0 <= result.metrics["val_map"] <= 1.0
    if not multi_label:
        assert 0.0 <= result.metrics["val_top1"] <= 1.0
    saved = json.loads((tmp_path / "classifier" / "classes.json").read_text())
    assert saved == {"classes": sorted(TOY_CLASSES), "multi_label": multi_label, "linear_probe": linear_probe}
    head = load_file(str(tmp_path / "classifier" / "head.safetensors"))
    assert head["weight"].shape == (len(TOY_CLASSES), 512)


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
