"""The training loop one Ray Train worker runs: CLAP pre-training on WebDataset shards.

Read top to bottom: build (or resume) the model and optimiser, then for each step draw a batch,
compute mel features on the worker, run both towers, take the contrastive loss over the global
batch, step, clamp the temperature; validate and checkpoint at the end of every epoch.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("clap.train")

STATE_FILE = "train_state.pt"
HISTORY_FILE = "history.json"
MODEL_DIR = "model"
VAL_METRIC = "val_t2a_map10"


def warmup_cosine(warmup_steps: int, total_steps: int):
    """Linear warm-up to the base learning rate, then cosine decay to 0 (the reference's schedule)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def build_model(config: dict[str, Any]) -> torch.nn.Module:
    from clap.model.checkpoint import load_model
    from clap.model.model import ClapConfig, ClapModel

    if config.get("init_checkpoint"):
        model = load_model(config["init_checkpoint"])
        if bool(model.config.fusion) != bool(config["fusion"]):
            raise ValueError(
                f"train.init_checkpoint {config['init_checkpoint']}: checkpoint fusion={model.config.fusion} "
                f"but params fusion={config['fusion']}; set fusion to match the checkpoint"
            )
    else:
        model = ClapModel(ClapConfig(
            audio_encoder=config["audio_encoder"], text_encoder=config["text_encoder"], fusion=config["fusion"],
            freeze_audio=config["freeze_audio"], freeze_text=config["freeze_text"],
        ))
    return model


@torch.no_grad()
def embed_eval_set(model: torch.nn.Module, waveforms: list, captions: list[str], fusion: bool,
                   device: torch.device, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Audio and caption embeddings of an evaluation split (deterministic features)."""
    from clap.model.frontend import prepare_audio_features

    was_training = model.training
    model.eval()
    audio, text = [], []
    for start in range(0, len(waveforms), batch_size):
        feats = prepare_audio_features(waveforms[start:start + batch_size], fusion=fusion, training=False, device=device)
        audio.append(model.encode_audio(feats.input_features, feats.is_longer).float().cpu())
    for start in range(0, len(captions), batch_size):
        tokens = {k: v.to(device) for k, v in model.tokenize(captions[start:start + batch_size]).items()}
        text.append(model.encode_text(tokens["input_ids"], tokens["attention_mask"]).float().cpu())
    model.train(was_training)
    return torch.cat(audio), torch.cat(text)


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train entry point (``train_loop_per_worker``)."""
    import ray.train
    import ray.train.torch

    from clap.eval.metrics import retrieval_metrics
    from clap.model.checkpoint import load_model, save_model
    from clap.model.frontend import prepare_audio_features
    from clap.model.loss import contrastive_loss
    from clap.train.data import eval_pairs, train_batches

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(config["seed"] + rank)
    if not config["use_gpu"]:
        torch.set_num_threads(max(1, int(config["cpus_per_worker"])))
    device = ray.train.torch.get_device()
    total_steps = config["epochs"] * config["steps_per_epoch"]

    core = build_model(config)
    # logit_scale_t exists for checkpoint compatibility; the contrastive loss (like the reference's
    # default) uses logit_scale_a only, and DDP rejects parameters that never receive a gradient.
    core.logit_scale_t.requires_grad_(False)
    optimizer = torch.optim.Adam(
        [p for p in core.parameters() if p.requires_grad], lr=config["lr"], betas=tuple(config["betas"]),
        eps=config["eps"], weight_decay=config["weight_decay"],
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config["warmup_steps"], total_steps))
    step, history = 0, {"steps": [], "val": []}

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # resume after a failure (or a re-run of the same experiment)
        with checkpoint.as_directory() as ckpt_dir:
            core.load_state_dict(load_model(Path(ckpt_dir) / MODEL_DIR).state_dict())
            state = torch.load(Path(ckpt_dir) / STATE_FILE, weights_only=True)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            step = int(state["step"])
            history = json.loads((Path(ckpt_dir) / HISTORY_FILE).read_text())
        if rank == 0:
            logger.info("resumed from step %d of %d", step, total_steps)

    model = ray.train.torch.prepare_model(core, parallel_strategy_kwargs={"find_unused_parameters": True})
    batches = train_batches(
        config["train_urls"], batch_size=config["batch_size"], caption_kinds=config["caption_kinds"],
        shuffle_buffer=config["shuffle_buffer"], seed=config["seed"] + step, rank=rank, world_size=world_size,
    )
    val_waveforms, val_captions, val_owner, _ = eval_pairs(config["val_urls"])
    generator = torch.Generator().manual_seed(config["seed"] * 7919 + rank + step)
    fault = config.get("fault_injection") or {}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    model.train()
    while step < total_steps:
        started = time.perf_counter()
        batch = next(batches)
        if fault and step + 1 == fault["step"] and rank == fault.get("rank", 0) and not Path(fault["marker"]).exists():
            Path(fault["marker"]).write_text(f"failed once at step {step + 1}\n")
            raise RuntimeError(f"injected failure at step {step + 1} on rank {rank}")
        feats = prepare_audio_features(batch.waveforms, fusion=config["fusion"], training=True,
                                       generator=generator, device=device)
        tokens = {k: v.to(device) for k, v in core.tokenize(batch.captions).items()}
        with autocast:
            out = model(feats.input_features, feats.is_longer, tokens["input_ids"], tokens["attention_mask"])
            loss = contrastive_loss(out.audio_embeds.float(), out.text_embeds.float(), out.logit_scale.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config["grad_clip"])
        optimizer.step()
        scheduler.step()
        core.clamp_logit_scale()
        step += 1

        elapsed = time.perf_counter() - started
        record = {
            "step": step, "epoch": (step - 1) // config["steps_per_epoch"] + 1, "loss": float(loss.detach()),
            "lr": scheduler.get_last_lr()[0], "logit_scale": float(core.logit_scale_a.exp().detach()),
            "samples_per_s": config["batch_size"] * world_size / elapsed,
        }
        history["steps"].append(record)
        if rank == 0 and (step % config["log_every"] == 0 or step == 1):
            logger.info("step %d/%d loss %.4f lr %.2e scale %.2f %.1f samples/s", step, total_steps,
                        record["loss"], record["lr"], record["logit_scale"], record["samples_per_s"])

        if step % config["steps_per_epoch"] == 0 or step == total_steps:
            audio_embeds, text_embeds = embed_eval_set(core, val_waveforms, val_captions, config["fusion"], device)
            metrics = {f"val_{k}": v for k, v in retrieval_metrics(audio_embeds, text_embeds, val_owner).items()}
            metrics.update(step=step, epoch=record["epoch"], loss=record["loss"])
            history["val"].append(metrics)
            if rank == 0:
                logger.info("epoch %d: val t2a mAP@10 %.4f R@1 %.4f a2t mAP@10 %.4f", record["epoch"],
                            metrics[VAL_METRIC], metrics["val_t2a_r1"], metrics["val_a2t_map10"])
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = None
                if rank == 0:
                    save_model(core, Path(tmp) / MODEL_DIR)
                    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                "step": step}, Path(tmp) / STATE_FILE)
                    (Path(tmp) / HISTORY_FILE).write_text(json.dumps(history))
                    ckpt = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"step_{step:06d}")
