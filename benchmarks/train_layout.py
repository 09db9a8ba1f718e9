"""Ray Train worker layout on a small box: 1 worker x 2 threads against 2 workers x 1 thread.

Both layouts train the embedded default (params.yaml: presets, data mode, frozen text) through the
train stage's own code (clap.train.trainer.run_training) on the pipeline's shards, with the same
global batch (1 x 32 or 2 x 16) and the same steps, so they do the same optimisation work. The runs
alternate (A, B, A, B ...) inside one local Ray of ``--cpus`` CPUs, so load changes on a shared
machine hit both alike. Reported per layout: the whole ``run_training`` call's wall time (worker
start-up, data loading, steps, validations, checkpoints) and the steady training speed (median
samples/s of the steps after the first epoch).

    python -m benchmarks.train_layout [--shards data/shards] [--steps 40] [--repeats 1]

Writes benchmarks/results/train_layout.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

RESULTS = Path(__file__).parent / "results" / "train_layout.json"
PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
GLOBAL_BATCH = 32
LAYOUTS = {"1 worker x 2 threads": (1, 2), "2 workers x 1 thread": (2, 1)}

logger = logging.getLogger("benchmarks.train_layout")


def run_layout(workers: int, threads: int, shards: Path, steps: int, storage: Path) -> dict[str, Any]:
    from clap.train.config import TrainConfig
    from clap.train.trainer import run_training

    params = yaml.safe_load(PARAMS.read_text())
    params["train"].update(
        shard_root=str(shards.resolve()), storage_path=str(storage), num_workers=workers, cpus_per_worker=threads,
        batch_size=GLOBAL_BATCH // workers, epochs=2, steps_per_epoch=steps // 2, ray_num_cpus=workers * threads,
    )
    config = TrainConfig.from_params(params)
    started = time.perf_counter()
    result = run_training(config, storage / "model")
    wall = time.perf_counter() - started
    later = [s["samples_per_s"] for s in result.history["steps"] if s["epoch"] > 1]
    return {"wall_s": round(wall, 1), "samples_per_s": round(statistics.median(later), 2),
            "val_t2a_map10": round(result.metrics["val_t2a_map10"], 4)}


def main() -> None:
    import ray

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", default="data/shards")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for key, value in (("HF_HUB_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"), ("RAY_AUTH_MODE", "disabled")):
        os.environ.setdefault(key, value)
    shards = Path(args.shards)
    if not (shards / "index.json").is_file():
        raise SystemExit(f"{shards}/index.json not found: build the shards first (dvc repro shards) or pass --shards")

    load_before = os.getloadavg()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in LAYOUTS}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for repeat in range(args.repeats):
                for name, (workers, threads) in LAYOUTS.items():
                    storage = Path(tmp) / f"{workers}x{threads}-{repeat}"
                    runs[name].append(run_layout(workers, threads, shards, args.steps, storage))
                    logger.info("%s: %s", name, runs[name][-1])
    finally:
        ray.shutdown()
    rows = []
    for name, results in runs.items():
        rows.append({"layout": name, "wall_s": min(r["wall_s"] for r in results),
                     "samples_per_s": max(r["samples_per_s"] for r in results), "runs": results})
    base = rows[1]
    for row in rows:
        row["wall_vs_2x1"] = round(row["wall_s"] / base["wall_s"], 2)
        row["speed_vs_2x1"] = round(row["samples_per_s"] / base["samples_per_s"], 2)
    payload = {"what": "train stage (run_training) wall time and steady samples/s per Ray layout, same global batch "
                       f"{GLOBAL_BATCH} and steps, alternating runs", "steps": args.steps, "cpus": args.cpus,
               "load_average_before": [round(x, 2) for x in load_before],
               "load_average_after": [round(x, 2) for x in os.getloadavg()], "rows": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(payload, indent=2) + "\n")
    print("| layout | run wall (s) | steady samples/s | wall vs 2x1 | speed vs 2x1 |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layout']} | {r['wall_s']} | {r['samples_per_s']} | {r['wall_vs_2x1']} | {r['speed_vs_2x1']} |")


if __name__ == "__main__":
    main()
