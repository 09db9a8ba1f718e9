"""Driver side of training: start or join Ray, run the TorchTrainer, export the model and reports."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import clap
from clap.train.config import TrainConfig, source_fingerprint
from clap.train.data import shard_urls
from clap.train.loop import HISTORY_FILE, MODEL_DIR, train_loop
from clap.train.storage import ray_storage

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


def _shard_index_digest(shard_root: str) -> str:
    """The shard index's content: re-written shards (local or published to S3) name a new run."""
    if shard_root.startswith("s3://"):
        from clap.data.wds_s3 import read_text

        return read_text(f"{shard_root.rstrip('/')}/index.json")
    index = Path(shard_root) / "index.json"
    return index.read_text() if index.is_file() else shard_root


def loop_config(config: TrainConfig, fault_injection: dict[str, Any] | None = None) -> dict[str, Any]:
    root = _storage_path(config.shard_root)
    loop = config.to_dict()
    loop.update(
        train_urls=shard_urls(root, config.train_sets, "train"),
        val_urls=shard_urls(root, [config.val_set], "val"),
        caption_kinds=config.caption_kinds,
        fault_injection=fault_injection,
    )
    # Ray workers run in their own directories: hand them absolute paths to local weights
    for key in ("init_checkpoint", "audio_pretrained", "text_pretrained"):
        if loop.get(key) and Path(loop[key]).exists():
            loop[key] = str(Path(loop[key]).resolve())
    return loop


def run_training(
    config: TrainConfig, model_out: Path, *, fault_injection: dict[str, Any] | None = None,
) -> TrainResult:
    """Train with Ray Train and write the best checkpoint's model (by ``config.val_metric``) to ``model_out``."""
    import ray.train
    from ray.train.torch import TorchTrainer

    loop = loop_config(config, fault_injection)
    package_root = Path(clap.__file__).parent
    name = config.run_name(_shard_index_digest(config.shard_root),
                           source_fingerprint(package_root / "model", package_root / "train"))
    storage, storage_filesystem = ray_storage(config.storage_path)
    logger.info("Ray Train run %s (storage %s): %d steps, %d workers x batch %d", name, storage,
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
            name=name, storage_path=storage, storage_filesystem=storage_filesystem,
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
        "run_name": name,
        "steps": steps[-1]["step"] if steps else 0,
        "final_loss": steps[-1]["loss"] if steps else None,
        "mean_samples_per_s": sum(s["samples_per_s"] for s in tail) / max(1, len(tail)),
        "best_step": best_val["step"],
        **{k: v for k, v in best_val.items() if k.startswith("val_")},
    }
    return TrainResult(name, model_out, metrics, history)
