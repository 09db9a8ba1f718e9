"""Training throughput: a plain single-process loop vs Ray Train with 1 and 2 CPU workers.

Side by side in one run on the same toy shards, model presets and batch size per worker. Reports
steady-state samples/s (median over steps after the first), the wall time of the whole call
(Ray's start-up included) and the ratios. Writes benchmarks/results/train_scaling.json.

    python -m benchmarks.train_scaling [--steps 12] [--batch 8] [--audio htsat-cpu] [--text minilm]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "train_scaling.json"


def plain_loop(config, steps: int) -> dict:
    """The same objective and data path as a Ray worker, in this process, without Ray or DDP."""
    from clap.train.data import train_batches
    from clap.train.objectives import OBJECTIVES
    from clap.train.trainer import loop_config

    loop = loop_config(config)
    torch.set_num_threads(config.cpus_per_worker)
    objective = OBJECTIVES[loop["objective"]](loop)
    model = objective.build()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    batches = train_batches(loop["train_urls"], batch_size=config.batch_size, target=objective.target,
                            shuffle_buffer=config.shuffle_buffer, seed=config.seed, rank=0, world_size=1)
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    rates = []
    model.train()
    for _ in range(steps):
        step_start = time.perf_counter()
        batch = next(batches)
        loss = objective.loss(model, model, batch.waveforms, batch.targets, torch.device("cpu"), generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        objective.after_step(model)
        rates.append(config.batch_size / (time.perf_counter() - step_start))
    return {"samples_per_s": statistics.median(rates[1:]), "wall_s": time.perf_counter() - started}


def ray_run(config, steps: int, workdir: Path) -> dict:
    from dataclasses import replace

    from clap.train.trainer import run_training

    config = replace(config, epochs=1, steps_per_epoch=steps)
    started = time.perf_counter()
    result = run_training(config, workdir / f"model-{config.num_workers}")
    rates = [s["samples_per_s"] for s in result.history["steps"]]
    return {"samples_per_s": statistics.median(rates[1:]), "wall_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--audio", default="htsat-cpu")
    parser.add_argument("--text", default="minilm")
    parser.add_argument("--freeze-text", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import ray

    from clap.train.config import TrainConfig
    from tests.toy_shards import write_toy_shards

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shards = write_toy_shards(work / "toy", per_class={"train": 16, "val": 2}, seconds=6.0)
        base = TrainConfig(
            audio_encoder=args.audio, text_encoder=args.text, freeze_text=args.freeze_text, train_sets=["toy"],
            val_set="toy/val", shard_root=str(shards), storage_path=str(work / "ray"), batch_size=args.batch,
            warmup_steps=1, shuffle_buffer=16, cpus_per_worker=1, caption_augmentation="none", seed=1,
        )
        rows = {"plain loop, 1 process, 1 thread": plain_loop(base, args.steps)}
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            from dataclasses import replace

            for workers in (1, 2):
                rows[f"Ray Train, {workers} worker(s) x 1 CPU"] = ray_run(replace(base, num_workers=workers), args.steps, work)
        finally:
            ray.shutdown()
    reference = rows["plain loop, 1 process, 1 thread"]["samples_per_s"]
    table = [{"setup": name, **{k: round(v, 3) for k, v in row.items()},
              "vs_plain": round(row["samples_per_s"] / reference, 3)} for name, row in rows.items()]
    report = {"steps": args.steps, "batch_per_worker": args.batch, "audio": args.audio, "text": args.text,
              "freeze_text": args.freeze_text, "cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
              "rows": table}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print("| setup | samples/s | wall s | vs plain |\n|---|---|---|---|")
    for row in table:
        print(f"| {row['setup']} | {row['samples_per_s']:.2f} | {row['wall_s']:.1f} | {row['vs_plain']:.2f} |")


if __name__ == "__main__":
    main()
