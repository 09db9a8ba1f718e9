"""DVC stage `finetune`: supervised fine-tuning of the CLAP audio encoder with a classification head,
through the same Ray trainer as pre-training (clap.train).

One run per task in params `finetune.tasks`: single-label (accuracy; ESC-50/VGGSound style, a fold
held out) or multi-label (mAP; FSD50K style), as a linear probe or a full fine-tune, with feature
fusion when the model has it. Writes each task's model to data/models/finetune/<task>/ and flat
metrics to reports/finetune/metrics.json.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from clap.data.manifest import iter_manifest
from clap.params import load_params, section
from clap.report.writer import write_metrics, write_rows
from clap.train.config import TrainConfig
from clap.train.trainer import run_training, shutdown_ray

logger = logging.getLogger(__name__)

#: Keys of a task that are not TrainConfig fields.
TASK_ONLY = {"name", "manifest"}


def task_classes(manifest: Path, sets: list[str]) -> list[str]:
    """Sorted labels of the rows of the named sets (``source`` or ``source/split``)."""
    wanted = [name.partition("/") for name in sets]
    labels = {
        label
        for row in iter_manifest(manifest)
        if any(row.source == source and (not split or row.split == split) for source, _, split in wanted)
        for label in row.labels
    }
    if not labels:
        raise ValueError(f"{manifest}: no labelled rows in sets {sets}; check finetune.tasks train_sets")
    return sorted(labels)


def task_config(params: dict[str, Any], task: dict[str, Any]) -> TrainConfig:
    """A task's TrainConfig: the pre-training run's settings, then `finetune`'s, then the task's."""
    base = TrainConfig.from_params(params).to_dict()
    shared = {k: v for k, v in section(params, "finetune").items() if k not in ("tasks", "manifest")}
    settings = {**base, **shared, **{k: v for k, v in task.items() if k not in TASK_ONLY}}
    settings["objective"] = "classification"
    manifest = Path(task.get("manifest") or params["finetune"].get("manifest", "data/manifest/captions.jsonl"))
    settings["classes"] = task_classes(manifest, list(settings["train_sets"]) + [settings["val_set"]])
    if "betas" in settings:
        settings["betas"] = tuple(settings["betas"])
    return TrainConfig(**settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--models", default="data/models/finetune")
    parser.add_argument("--reports", default="reports/finetune")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    params = load_params(args.params)
    try:
        metrics, curves = run_tasks(params, Path(args.models))
    finally:
        shutdown_ray()
    write_metrics(Path(args.reports) / "metrics.json", {k: v for k, v in metrics.items() if v is not None})
    write_rows(Path(args.reports) / "val.csv", curves, ["task", "epoch", "step", "val_top1", "val_map"])
    return 0


def run_tasks(params: dict[str, Any], models: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train every task of `finetune.tasks`; flat metrics and validation curves."""
    metrics: dict[str, Any] = {}
    curves: list[dict[str, Any]] = []
    for task in section(params, "finetune")["tasks"]:
        name = task["name"]
        config = task_config(params, task)
        logger.info("fine-tune task %s: %d classes, %s, %s", name, len(config.classes),
                    "multi-label" if config.multi_label else "single-label",
                    "linear probe" if config.linear_probe else "full fine-tune")
        result = run_training(config, models / name)
        for key, value in result.metrics.items():
            if key.startswith("val_"):
                metrics[f"{name}.{key[4:]}"] = value
        metrics[f"{name}.chance"] = (1.0 / len(config.classes)) if not config.multi_label else None
        curves.extend({"task": name, **row} for row in result.history["val"])
    return metrics, curves


if __name__ == "__main__":
    raise SystemExit(main())
