"""The training loop one Ray Train worker runs, for CLAP pre-training and supervised fine-tuning.

Read top to bottom: build (or resume) the model and optimiser, then for each step draw a batch, let
the objective (clap.train.objectives) compute the loss on the worker's device, step the optimiser
and the warm-up/cosine schedule; validate and checkpoint at the end of every epoch, and checkpoint
every ``checkpoint_every`` steps in between (a resume continues at the checkpoint's step).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

logger = logging.getLogger("clap.train")

#: Called by every worker before each step as ``hook(step, rank)`` (``step`` counts from 1).
StepHook = Callable[[int, int], None]

STATE_FILE = "train_state.pt"
HISTORY_FILE = "history.json"
MODEL_DIR = "model"


def warmup_cosine(warmup_steps: int, total_steps: int):
    """Linear warm-up to the base learning rate, then cosine decay to 0 (the reference's schedule)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


#: The validation metric reported with a checkpoint taken between validations (metrics are >= 0).
UNVALIDATED_SCORE = -1.0
#: What a resume restores and what it approximates (logged on resume).
RESUME_NOTE = (
    "model, optimiser, schedule and step are exact; the data stream restarts with its shuffle re-seeded "
    "by the step (a fresh draw, not the exact continuation of the interrupted pass)"
)


def checkpoint_due(step: int, config: dict[str, Any]) -> bool:
    """A checkpoint every ``checkpoint_every`` steps (besides the one after each validation)."""
    every = config.get("checkpoint_every")
    return bool(every) and step % int(every) == 0


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train entry point (``train_loop_per_worker``)."""
    import ray.train
    import ray.train.torch

    from clap.train.data import loader_workers_for, train_batches
    from clap.train.objectives import OBJECTIVES

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(config["seed"] + rank)
    if not config["use_gpu"]:
        torch.set_num_threads(max(1, int(config["cpus_per_worker"])))
    device = ray.train.torch.get_device()
    total_steps = config["epochs"] * config["steps_per_epoch"]

    objective = OBJECTIVES[config["objective"]](config)
    core = objective.build()
    optimizer = torch.optim.Adam(
        [p for p in core.parameters() if p.requires_grad], lr=config["lr"], betas=tuple(config["betas"]),
        eps=config["eps"], weight_decay=config["weight_decay"],
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config["warmup_steps"], total_steps))
    step, history = 0, {"steps": [], "val": []}

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # resume after a failure in this execution, or a run named by `resume`
        with checkpoint.as_directory() as ckpt_dir:
            objective.load(core, Path(ckpt_dir) / MODEL_DIR)
            state = torch.load(Path(ckpt_dir) / STATE_FILE, weights_only=True)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            step = int(state["step"])
            history = json.loads((Path(ckpt_dir) / HISTORY_FILE).read_text())
        history.setdefault("resumed_at", []).append(step)
        if rank == 0:  # the data stream restarts re-seeded with the step (RESUME_NOTE)
            logger.info("resumed from step %d of %d; %s", step, total_steps, RESUME_NOTE)

    step_module = objective.step_module(core) if hasattr(objective, "step_module") else core
    model = ray.train.torch.prepare_model(step_module, parallel_strategy_kwargs={"find_unused_parameters": True})
    if config.get("data_mode", "stream") == "cached":  # decoded + mel once, crops in frames (clap.train.cached_data)
        from clap.train.cached_data import cached_train_batches

        batches = cached_train_batches(
            config["train_urls"], batch_size=config["batch_size"], target=objective.target, seed=config["seed"] + step,
            rank=rank, world_size=world_size, fusion=config["fusion"], feature_dtype=config["feature_cache_dtype"],
        )
    else:
        batches = train_batches(
            config["train_urls"], batch_size=config["batch_size"], target=objective.target,
            shuffle_buffer=config["shuffle_buffer"], seed=config["seed"] + step, rank=rank, world_size=world_size,
            loader_workers=loader_workers_for(config), device=device,
        )
    objective.load_eval()
    generator = torch.Generator().manual_seed(config["seed"] * 7919 + rank + step)
    step_hooks = list(config.get("step_hooks") or ())
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    model.train()
    while step < total_steps:
        started = time.perf_counter()
        batch = next(batches)
        for hook in step_hooks:  # callables the caller passed to run_training (tests inject failures here)
            hook(step + 1, rank)
        with autocast:
            audio = batch.features if hasattr(batch, "features") else batch.waveforms  # cached: features
            loss = objective.loss(model, core, audio, batch.targets, device, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config["grad_clip"])
        optimizer.step()
        scheduler.step()
        extra = objective.after_step(core)
        step += 1

        record = {
            "step": step, "epoch": (step - 1) // config["steps_per_epoch"] + 1, "loss": float(loss.detach()),
            "lr": scheduler.get_last_lr()[0], **extra,
            "samples_per_s": config["batch_size"] * world_size / (time.perf_counter() - started),
        }
        history["steps"].append(record)
        if rank == 0 and (step % config["log_every"] == 0 or step == 1):
            logger.info("step %d/%d loss %.4f lr %.2e %.1f samples/s", step, total_steps,
                        record["loss"], record["lr"], record["samples_per_s"])

        validate = step % config["steps_per_epoch"] == 0 or step == total_steps
        if validate or checkpoint_due(step, config):
            if validate:  # every rank takes part: validation is split across ranks
                metrics = objective.evaluate(core, device)
                metrics.update(step=step, epoch=record["epoch"], loss=record["loss"])
                history["val"].append(metrics)
                if rank == 0:
                    logger.info("epoch %d: %s", record["epoch"], ", ".join(
                        f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("val_")))
            else:  # ranks below every validated checkpoint; Ray keeps it while it is the latest
                metrics = {objective.metric: UNVALIDATED_SCORE, "step": step, "epoch": record["epoch"],
                           "loss": record["loss"]}
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = None
                if rank == 0:
                    objective.save(core, Path(tmp) / MODEL_DIR)
                    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                "step": step}, Path(tmp) / STATE_FILE)
                    (Path(tmp) / HISTORY_FILE).write_text(json.dumps(history))
                    ckpt = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"step_{step:06d}")
