"""Driver side of training: start or join Ray, run the TorchTrainer, export the model and reports.

Every call is a new Ray Train run with a fresh name, so a stage that DVC re-runs trains from its
current inputs. Ray resumes a run only after a failure within the call (``max_failures``) or when
``config.resume`` names one. After the export the run is marked finished and older finished runs of
its family beyond ``keep_runs`` are deleted from the storage.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from clap.train.config import TrainConfig
from clap.train.data import shard_urls
from clap.train.loop import HISTORY_FILE, MODEL_DIR, StepHook, train_loop
from clap.train.storage import RunStore, new_run_name, run_store

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_name: str
    model_dir: Path
    metrics: dict[str, Any]
    history: dict[str, list[dict[str, Any]]]


def init_ray(config: TrainConfig) -> None:
    """Join the cluster named by params or RAY_ADDRESS; otherwise start a local Ray without dashboard."""
    import ray

    if ray.is_initialized():
        return
    address = config.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        logger.info("joining Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
    else:
        num_cpus = config.ray_num_cpus or max(config.num_workers * config.cpus_per_worker, os.cpu_count() or 1)
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)


def shutdown_ray() -> None:
    """Stop the local Ray this process started (or leave the cluster), so a failed stage exits."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _storage_path(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


def loop_config(config: TrainConfig, step_hooks: Sequence[StepHook] = ()) -> dict[str, Any]:
    root = _storage_path(config.shard_root)
    loop = config.to_dict()
    loop.update(
        train_urls=shard_urls(root, config.train_sets, "train"),
        val_urls=shard_urls(root, [config.val_set], "val"),
        caption_kinds=config.caption_kinds,
        step_hooks=list(step_hooks),
    )
    # Ray workers run in their own directories: hand them absolute paths to local weights
    for key in ("init_checkpoint", "audio_pretrained", "text_pretrained", "text_features"):
        if loop.get(key) and Path(loop[key]).exists():
            loop[key] = str(Path(loop[key]).resolve())
    return loop


def _set_name(name: str, default_split: str) -> str:
    """``source`` -> ``source/<default split>``, as shard_urls reads a set name."""
    source, _, split = name.partition("/")
    return f"{source}/{split or default_split}"


def check_splits(config: TrainConfig) -> None:
    """Refuse a protocol whose selection or test data is also trained on, or whose test data selects."""
    train = {_set_name(name, "train") for name in config.train_sets}
    val = _set_name(config.val_set, "val")
    holds_out_val = bool(config.val_folds or config.val_fraction)
    if config.objective == "classification" and val in train and not holds_out_val:
        raise ValueError(f"val_set {config.val_set} is also a training set: hold part of it out with "
                         "val_folds or val_fraction, or choose another val_set")
    if config.val_fraction is not None and not 0.0 < config.val_fraction < 1.0:
        raise ValueError(f"val_fraction {config.val_fraction}: expected a share between 0 and 1, e.g. 0.2")
    if not config.test_set:
        return
    test = _set_name(config.test_set, "test")
    if test in train and not config.test_folds:
        raise ValueError(f"test_set {config.test_set} is also a training set: name its test_folds or choose another test_set")
    if test == val:
        if not (config.test_folds and config.val_folds) or set(config.test_folds) & set(config.val_folds):
            raise ValueError(f"test_set and val_set are both {config.test_set}: give them disjoint "
                             f"test_folds and val_folds (now {config.test_folds} and {config.val_folds})")


def run_name_for(config: TrainConfig, store: RunStore, family: str) -> str:
    """A fresh name, or the run the user asked to continue (which must exist)."""
    if not config.resume:
        return new_run_name(family)
    if not store.has_run(config.resume):
        known = ", ".join(store.run_names()) or "none"
        raise ValueError(f"resume: no run {config.resume} in {store.uri} (runs there: {known}); "
                         "set resume to one of them or to null for a new run")
    return config.resume


def run_training(
    config: TrainConfig, model_out: Path, *, run_family: str = "clap",
    step_hooks: Sequence[StepHook] = (),
) -> TrainResult:
    """Train with Ray Train and write the best checkpoint's model (by ``config.val_metric``) to
    ``model_out``; with ``config.test_set``, evaluate that model once on the test split.

    ``step_hooks``: picklable callables each worker calls as ``hook(step, rank)`` before every
    step (``step`` counts from 1); their module must be importable by the Ray workers."""
    import ray.train
    from ray.train.torch import TorchTrainer

    check_splits(config)
    loop = loop_config(config, step_hooks)
    store = run_store(config.storage_path)
    name = run_name_for(config, store, run_family)
    started = datetime.now(timezone.utc)
    logger.info("Ray Train run %s (%s; storage %s): %d steps, %d workers x batch %d", name,
                "continued as asked by resume" if config.resume else "new", store.uri,
                config.total_steps, config.num_workers, config.batch_size)
    init_ray(config)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop,
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.num_workers, use_gpu=config.use_gpu,
            resources_per_worker={"CPU": config.cpus_per_worker, **({"GPU": 1} if config.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=name, storage_path=store.ray_path, storage_filesystem=store.ray_filesystem,
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=config.keep_checkpoints, checkpoint_score_attribute=config.val_metric,
                checkpoint_score_order="max",
            ),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {name} finished without a checkpoint; see the log above")
    best = result.get_best_checkpoint(metric=config.val_metric, mode="max") or result.checkpoint
    with result.checkpoint.as_directory() as latest_dir:
        history = json.loads((Path(latest_dir) / HISTORY_FILE).read_text())
    model_out = Path(model_out)
    if model_out.exists():
        shutil.rmtree(model_out)
    with best.as_directory() as best_dir:
        shutil.copytree(Path(best_dir) / MODEL_DIR, model_out)
    best_val = max(history["val"], key=lambda m: m[config.val_metric])
    steps = history["steps"]
    tail = steps[-min(len(steps), 10):]
    metrics = {
        "steps": steps[-1]["step"] if steps else 0,
        "final_loss": steps[-1]["loss"] if steps else None,
        "mean_samples_per_s": sum(s["samples_per_s"] for s in tail) / max(1, len(tail)),
        "best_step": best_val["step"],
        **{k: v for k, v in best_val.items() if k.startswith("val_")},
    }
    if config.test_set:
        metrics.update(evaluate_test_split(config, model_out))
    store.write_info(name, {
        "run": name, "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": str(model_out.resolve()),
        "steps": metrics["steps"], "best_step": metrics["best_step"], "resumed": bool(config.resume),
    })
    logger.info("run %s finished: best step %d, model exported to %s", name, metrics["best_step"], model_out)
    store.prune(run_family, config.keep_runs)
    return TrainResult(name, model_out, metrics, history)


def evaluate_test_split(config: TrainConfig, model_dir: Path) -> dict[str, float]:
    """The exported model on ``config.test_set`` (``test_folds``), once, after selection:
    the objective's validation metrics renamed ``test_*``."""
    import torch

    from clap.train.objectives import OBJECTIVES

    settings = loop_config(config)
    settings.update(val_set=config.test_set, val_urls=shard_urls(_storage_path(config.shard_root), [config.test_set], "test"),
                    val_folds=config.test_folds, val_fraction=None, test_set=None, test_folds=None)
    objective = OBJECTIVES[config.objective](settings)
    core = objective.build()
    objective.load(core, model_dir)
    objective.load_eval()
    device = torch.device("cuda" if config.use_gpu and torch.cuda.is_available() else "cpu")
    metrics = objective.evaluate(core.to(device), device)
    logger.info("test %s: %s", config.test_set, ", ".join(f"{k[4:]} {v:.4f}" for k, v in metrics.items()))
    return {f"test_{key[len('val_'):]}": value for key, value in metrics.items()}
