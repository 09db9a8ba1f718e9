"""The fine-tune protocol: the checkpoint is chosen on data the reported test figure never sees.

k-fold cross-validation for single-label sets with folds, a held-out test split (selection on a
hashed share of train) for multi-label sets; through the real stage code and Ray Train on tiny shards.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from clap.params import ParamsError
from clap.stages.finetune import cv_splits, run_tasks, task_config
from clap.train.config import TrainConfig
from clap.train.objectives import ClassificationObjective, id_share
from clap.train.trainer import check_splits
from tests.fold_shards import write_fold_shards
from tests.test_train import ray_cluster  # noqa: F401 - the module's Ray
from tests.toy_shards import TOY_CLASSES


def finetune_params(data: Path, init: Path | None, storage: Path) -> dict[str, Any]:
    """Params as the stage reads them: tiny settings, a 3-fold task and a multi-label task."""
    return {
        "seed": 1, "fusion": False, "audio_encoder": "htsat-cpu", "text_encoder": "tiny-bert",
        "caption_augmentation": "none", "train_sets": ["toy"],
        "train": {"shard_root": str(data / "shards"), "storage_path": str(storage), "batch_size": 3,
                  "num_workers": 1, "cpus_per_worker": 1, "shuffle_buffer": 4, "log_every": 1,
                  "resume": "clap-20240101T000000Z-abcdef"},  # names a pre-training run: not fine-tune's
        "finetune": {
            "init_checkpoint": str(init) if init else None, "manifest": str(data / "manifest.jsonl"),
            "epochs": 2, "steps_per_epoch": 1, "lr": 1e-2, "warmup_steps": 1, "keep_runs": 0,
            "keep_checkpoints": 1,
            "tasks": [
                {"name": "esc", "train_sets": ["toy/train"], "folds": [1, 2, 3], "linear_probe": True},
                {"name": "tags", "train_sets": ["toytags/train"], "val_set": "toytags/train", "val_fraction": 0.5,
                 "test_set": "toytags/test", "multi_label": True},
            ],
        },
    }


@pytest.fixture(scope="module")
def fold_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("folds")
    write_fold_shards(root, folds=3, per_fold=1, tag_clips=8)
    return root


def test_each_fold_is_tested_once_and_the_next_one_selects() -> None:
    assert cv_splits([1, 2, 3, 4, 5]) == [(1, 2), (2, 3), (3, 4), (4, 5), (5, 1)]
    for folds in ([1], [1, 2], [1, 1, 2]):
        with pytest.raises(ParamsError, match="at least 3 distinct folds"):
            cv_splits(folds)


def test_task_settings_name_disjoint_splits(fold_data: Path, tmp_path: Path) -> None:
    params = finetune_params(fold_data, None, tmp_path / "ray")
    esc, tags = (task_config(params, task) for task in params["finetune"]["tasks"])
    assert (esc.val_set, esc.test_set, esc.resume) == ("toy/train", "toy/train", None)
    assert esc.classes == sorted(TOY_CLASSES)
    assert (tags.val_set, tags.val_fraction, tags.test_set) == ("toytags/train", 0.5, "toytags/test")
    no_test = {"name": "tags", "train_sets": ["toytags/train"], "val_set": "toytags/train", "val_fraction": 0.5}
    with pytest.raises(ParamsError, match="tags: name a test_set"):
        task_config(params, no_test)
    with pytest.raises(ParamsError, match="resume is not offered"):
        task_config(params, {**params["finetune"]["tasks"][1], "resume": "x"})


@pytest.mark.parametrize("settings,message", [
    ({"val_set": "a/train", "val_folds": None}, "val_set a/train is also a training set"),
    ({"test_set": "a/train", "test_folds": None}, "test_set a/train is also a training set"),
    ({"test_set": "a/train", "test_folds": [2], "val_folds": [2]}, "disjoint test_folds and val_folds"),
    ({"val_fraction": 1.5, "val_folds": None}, "val_fraction 1.5"),
])
def test_overlapping_splits_are_refused(settings: dict[str, Any], message: str) -> None:
    base = dict(objective="classification", train_sets=["a"], val_set="a/train", val_folds=[1])
    with pytest.raises(ValueError, match=message):
        check_splits(TrainConfig(**{**base, **settings}))
    check_splits(TrainConfig(**{**base, "test_set": "a/train", "test_folds": [2]}))  # disjoint folds: fine


def test_selection_and_test_clips_are_never_trained_on() -> None:
    config = TrainConfig(objective="classification", classes=["x", "y"], train_sets=["s"], val_set="s/train",
                         val_folds=[2], test_set="s/train", test_folds=[1]).to_dict()
    objective = ClassificationObjective(config)
    clip = {"source": "s", "split": "train", "tag": ["x"]}
    assert objective.target({**clip, "fold": 1}) is None           # test fold
    assert objective.target({**clip, "fold": 2}) is None           # selection fold
    assert objective.target({**clip, "fold": 3}).tolist() == [1.0, 0.0]
    assert objective.target({**clip, "source": "other", "fold": 1}) is not None  # another set's fold 1

    hashed = ClassificationObjective({**config, "val_folds": None, "val_fraction": 0.2, "test_set": "s/test",
                                      "test_folds": None})
    ids = [f"s/clip-{i}" for i in range(2000)]
    held = [i for i in ids if hashed.target({**clip, "id": i}) is None]
    assert held == [i for i in ids if id_share(i) < 0.2]            # the hashed share, and only it
    assert 0.17 < len(held) / len(ids) < 0.23
    assert hashed.target({"source": "s", "split": "test", "tag": ["y"], "id": "t"}) is None  # test split
    assert id_share("builtin_tags/train-0001") == id_share("builtin_tags/train-0001")


@pytest.mark.slow
def test_cross_validation_and_held_out_test_through_the_stage(ray_cluster, fold_data: Path,  # noqa: F811
                                                              tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from tests.tiny_clap import save_tiny_model

    storage = tmp_path / "ray"
    params = finetune_params(fold_data, save_tiny_model(tmp_path / "clap", fusion=False), storage)
    metrics, curves = run_tasks(params, tmp_path / "models")

    for fold in (1, 2, 3):
        for key in ("test_top1", "test_map", "val_top1"):  # top-5 only with 5+ classes
            assert 0.0 <= metrics[f"esc.fold{fold}.{key}"] <= 1.0, (fold, key)
        saved = json.loads((tmp_path / "models" / "esc" / f"fold{fold}" / "classes.json").read_text())
        assert saved == {"classes": sorted(TOY_CLASSES), "multi_label": False, "linear_probe": True}
    per_fold = [metrics[f"esc.fold{fold}.test_top1"] for fold in (1, 2, 3)]
    assert metrics["esc.test_top1_mean"] == pytest.approx(statistics.fmean(per_fold))
    assert metrics["esc.test_top1_std"] == pytest.approx(statistics.stdev(per_fold))
    assert metrics["esc.chance"] == pytest.approx(1 / 3)
    assert 0.0 <= metrics["tags.test_map"] <= 1.0 and 0.0 <= metrics["tags.val_map"] <= 1.0
    assert not any(key in metrics for key in ("esc.top1", "tags.map", "esc.map"))  # every figure says its split
    head = load_file(str(tmp_path / "models" / "tags" / "head.safetensors"))
    assert head["weight"].shape == (len(TOY_CLASSES), 512)
    assert {row["task"] for row in curves} == {"esc.fold1", "esc.fold2", "esc.fold3", "tags"}
    assert not any(storage.iterdir())  # keep_runs 0: every fine-tune run deleted once exported
