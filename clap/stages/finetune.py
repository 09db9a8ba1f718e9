"""DVC stage `finetune`: supervised fine-tuning of the CLAP audio encoder with a classification head,
through the same Ray trainer as pre-training (clap.train).

One protocol per task of params `finetune.tasks`, and in both the checkpoint is chosen on data the
reported figure never sees:

- k-fold cross-validation (a task with ``folds``, ESC-50 style): each fold is the test split in
  turn, the next fold (cyclically) picks the checkpoint, the other folds train. Reported: every
  fold's test figures (``esc.fold1.test_top1``...) and their mean and sample standard deviation
  (``esc.test_top1_mean``, ``esc.test_top1_std``).
- a held-out test split (``test_set``, FSD50K style): the checkpoint is chosen on ``val_set``, e.g.
  a share of the training split carved out by a hash of the clip id (``val_fraction``); reported as
  ``tags.test_map`` beside the selection figure ``tags.val_map``.

Single-label tasks report top-1/top-5 accuracy, multi-label ones mAP; a linear probe or a full
fine-tune, with feature fusion when the model has it. Every run is a new Ray Train run; one Ray
serves all of them. Writes the models to data/models/finetune/<task>[/fold<k>]/ and flat metrics to
reports/finetune/metrics.json.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from clap.data.manifest import iter_manifest
from clap.params import ParamsError, check_keys, config_from_mapping, load_params, section
from clap.report.writer import write_metrics, write_rows
from clap.stages.common import run_stage, stage_parser
from clap.train.config import TrainConfig
from clap.train.trainer import TrainResult, run_training, shutdown_ray

logger = logging.getLogger(__name__)

#: Keys of a task that are not TrainConfig fields.
TASK_ONLY = {"name", "manifest", "folds"}


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
    """A task's TrainConfig: the pre-training run's settings, then `finetune`'s, then the task's.

    A task with ``folds`` runs cross-validation over its one training set, which is then also its
    validation and test set unless the task names them; otherwise the task must name a ``test_set``.
    """
    name = task.get("name", "?")
    where = f"params.yaml finetune.tasks '{name}'"
    train_keys = set(TrainConfig.__dataclass_fields__)
    check_keys(section(params, "finetune"), train_keys | {"tasks", "manifest"}, "params.yaml finetune")
    check_keys(task, train_keys | TASK_ONLY, where)
    shared = {k: v for k, v in section(params, "finetune").items() if k not in ("tasks", "manifest")}
    if shared.get("resume") or task.get("resume"):
        raise ParamsError(f"finetune.tasks {name}: resume is not offered for fine-tuning (every run starts "
                          "from the CLAP model); remove it")
    base = TrainConfig.from_params(params).to_dict()
    base["resume"] = None  # train.resume names a pre-training run
    settings = {**base, **shared, **{k: v for k, v in task.items() if k not in TASK_ONLY}}
    settings["objective"] = "classification"
    if task.get("folds"):
        if len(settings["train_sets"]) != 1:
            raise ParamsError(f"finetune.tasks {name}: cross-validation folds one set; train_sets has "
                              f"{settings['train_sets']}")
        fold_set = settings["train_sets"][0]
        settings["val_set"] = task.get("val_set", fold_set)
        settings["test_set"] = task.get("test_set", fold_set)
    elif not settings.get("test_set"):
        raise ParamsError(f"finetune.tasks {name}: name a test_set (a split never used to choose the "
                          "checkpoint), or folds for cross-validation")
    manifest = Path(task.get("manifest") or params["finetune"].get("manifest", "data/manifest/captions.jsonl"))
    settings["classes"] = task_classes(manifest, list(settings["train_sets"]) + [settings["val_set"], settings["test_set"]])
    return config_from_mapping(TrainConfig, settings, where)


def cv_splits(folds: list[int]) -> list[tuple[int, int]]:
    """(test fold, validation fold) per round: each fold tested once, the next one selects."""
    if len(folds) < 3 or len(set(folds)) != len(folds):
        raise ParamsError(f"finetune folds {folds}: cross-validation needs at least 3 distinct folds "
                          "(test, validation, training)")
    return [(fold, folds[(i + 1) % len(folds)]) for i, fold in enumerate(folds)]


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("finetune", __doc__)
    parser.add_argument("--models", default="data/models/finetune")
    parser.add_argument("--reports", default="reports/finetune")
    args = parser.parse_args(argv)

    def work() -> None:
        params = load_params(args.params)
        try:
            metrics, curves = run_tasks(params, Path(args.models))
        finally:
            shutdown_ray()
        write_metrics(Path(args.reports) / "metrics.json", {k: v for k, v in metrics.items() if v is not None})
        write_rows(Path(args.reports) / "val.csv", curves, ["task", "epoch", "step", "val_top1", "val_map"])

    return run_stage("finetune", work, timed=True)


def _figures(result: TrainResult) -> dict[str, float]:
    """The selection (``val_*``) and test (``test_*``) figures of one run."""
    return {k: v for k, v in result.metrics.items() if k.startswith(("val_", "test_"))}


def run_tasks(params: dict[str, Any], models: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train every task of `finetune.tasks` (every fold of a cross-validated one); flat metrics and
    validation curves."""
    metrics: dict[str, Any] = {}
    curves: list[dict[str, Any]] = []
    for task in section(params, "finetune")["tasks"]:
        name = task["name"]
        config = task_config(params, task)
        logger.info("fine-tune task %s: %d classes, %s, %s, %s", name, len(config.classes),
                    "multi-label" if config.multi_label else "single-label",
                    "linear probe" if config.linear_probe else "full fine-tune",
                    f"{len(task['folds'])}-fold cross-validation" if task.get("folds") else f"test on {config.test_set}")
        metrics[f"{name}.chance"] = (1.0 / len(config.classes)) if not config.multi_label else None
        if not task.get("folds"):
            result = run_training(config, models / name, run_family=f"finetune-{name}")
            metrics.update({f"{name}.{key}": value for key, value in _figures(result).items()})
            curves.extend({"task": name, **row} for row in result.history["val"])
            continue
        per_fold: list[dict[str, float]] = []
        for test_fold, val_fold in cv_splits(list(task["folds"])):
            fold_config = replace(config, test_folds=[test_fold], val_folds=[val_fold])
            logger.info("task %s fold %d: test fold %d, selection on fold %d", name, test_fold, test_fold, val_fold)
            result = run_training(fold_config, models / name / f"fold{test_fold}",
                                  run_family=f"finetune-{name}-fold{test_fold}")
            figures = _figures(result)
            per_fold.append(figures)
            metrics.update({f"{name}.fold{test_fold}.{key}": value for key, value in figures.items()})
            curves.extend({"task": f"{name}.fold{test_fold}", **row} for row in result.history["val"])
        for key in per_fold[0]:
            values = [figures[key] for figures in per_fold]
            metrics[f"{name}.{key}_mean"] = statistics.fmean(values)
            if key.startswith("test_"):
                metrics[f"{name}.{key}_std"] = statistics.stdev(values)
        logger.info("task %s: test top-1 / mAP over %d folds: %s", name, len(per_fold), ", ".join(
            f"{key} {metrics[f'{name}.{key}_mean']:.4f} ± {metrics[f'{name}.{key}_std']:.4f}"
            for key in per_fold[0] if key.startswith("test_")))
    return metrics, curves


if __name__ == "__main__":
    raise SystemExit(main())
