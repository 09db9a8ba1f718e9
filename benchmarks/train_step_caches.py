"""Milliseconds per training sample with and without the training-step caches, side by side in one run.

The embedded default's step (params.yaml's audio encoder, pann-cpu, or ``--audio-encoder``; frozen
MiniLM; batch 16; one process) on the pipeline's real training shards, in four rows:

* ``none``: the streaming data path (decode FLAC, mel of every clip at every step) and captions
  through the frozen MiniLM at every step, padded to 77 tokens (the code before the caches);
* ``text cache``: the frozen tower's output per distinct caption, only the projection trains
  (clap.train.text_cache): preloaded from the table the ``text_features`` stage writes once per
  caption set and text tower (DVC restores it for every run that shares them); captions it lacks
  are encoded on first use. The benchmark builds that table once before the rows, as the stage
  does, and records the time (``text_features_build_s``): a one-off of the pipeline, not of a run;
  the row's objective loads it at its first step, as in training (counted in the run's total);
* ``feature cache``: ``data_mode: cached`` - decode + mel once per clip, crops in mel frames
  (clap.train.cached_data);
* ``both``: the two together (the default).

Each row is a fresh model (same seed) and data pipeline; the rows take their steps round-robin
(one step of each, repeated), so load changes on a shared machine hit all rows alike. A row's
time covers everything a worker does per step: data, features, both towers, loss, backward, Adam.
``ms_per_sample`` is the run's total (the run's one-off work included: building the feature cache,
loading the text table, encoding captions it lacks) over ``--steps`` steps;
``ms_per_sample_steady`` leaves out the set-up and the first pass's cache misses (median step of
the second half). CPU time (process time) is recorded beside wall time.

``--steps`` defaults to the steps one worker takes in the embedded default's training run
(params.yaml: ``train.epochs`` x ``train.steps_per_epoch``, 300), so the run's one-off work is spread
over as many steps as in ``dvc repro``.

    python -m benchmarks.train_step_caches [--shards data/shards] [--steps N] [--threads 1] [--audio-encoder htsat-cpu]

Writes benchmarks/results/train_step_caches.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from clap.model.loss import contrastive_loss

RESULTS = Path(__file__).parent / "results" / "train_step_caches.json"
ROWS = {"none": (False, False), "text cache": (True, False), "feature cache": (False, True), "both": (True, True)}

logger = logging.getLogger("benchmarks.train_step_caches")


class Row:
    """One cache configuration: its own model, optimiser and batch stream."""

    def __init__(self, name: str, text_cache: bool, feature_cache: bool, loop: dict[str, Any],
                 text_features: Path) -> None:
        from clap.train.cached_data import cached_train_batches
        from clap.train.data import train_batches
        from clap.train.objectives import ContrastiveObjective

        self.name, self.text_cache, self.feature_cache = name, text_cache, feature_cache
        torch.manual_seed(0)
        w0, c0 = time.perf_counter(), time.process_time()
        # the training code's own path: the objective preloads the table at its first step
        self.objective = ContrastiveObjective({**loop, "text_features": str(text_features) if text_cache else None})
        self.model = self.objective.build().train()
        self.optimizer = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=loop["lr"])
        self.generator = torch.Generator().manual_seed(0)
        common = dict(batch_size=loop["batch_size"], target=self.objective.target, seed=loop["seed"], rank=0,
                      world_size=1)
        if feature_cache:
            self.batches = cached_train_batches(loop["train_urls"], fusion=False, **common)
        else:
            self.batches = train_batches(loop["train_urls"], shuffle_buffer=loop["shuffle_buffer"], **common)
        self.setup_wall, self.setup_cpu = time.perf_counter() - w0, time.process_time() - c0
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def _loss(self, batch) -> torch.Tensor:
        audio = batch.features if self.feature_cache else batch.waveforms
        if self.text_cache:
            return self.objective.loss(self.model, self.model, audio, batch.targets, torch.device("cpu"),
                                       self.generator)
        # before the caches: the frozen tower on 77-token captions at every step
        from clap.train.objectives import _features

        feats = _features(audio, False, True, torch.device("cpu"), self.generator)
        tokens = self.model.tokenize(list(batch.targets))
        out = self.model(feats.input_features, feats.is_longer, tokens["input_ids"], tokens["attention_mask"])
        return contrastive_loss(out.audio_embeds, out.text_embeds, out.logit_scale)

    def step(self) -> None:
        w0, c0 = time.perf_counter(), time.process_time()
        loss = self._loss(next(self.batches))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.model.clamp_logit_scale()
        self.wall.append(time.perf_counter() - w0)
        self.cpu.append(time.process_time() - c0)

    def result(self, batch: int) -> dict[str, Any]:
        steps = len(self.wall)
        samples = steps * batch
        return {
            "row": self.name, "text_cache": self.text_cache, "feature_cache": self.feature_cache,
            "setup_s": round(self.setup_wall, 2),
            "ms_per_sample": round(1000 * (self.setup_wall + sum(self.wall)) / samples, 2),
            "cpu_ms_per_sample": round(1000 * (self.setup_cpu + sum(self.cpu)) / samples, 2),
            "ms_per_sample_steady": round(1000 * statistics.median(self.wall[steps // 2 :]) / batch, 2),
            "captions_encoded_in_run": self.objective.text_cache.encoded if self.objective.text_cache else None,
        }


def build_text_features(loop: dict[str, Any], out: Path) -> tuple[Path, float, int]:
    """What the text_features stage does, timed: every distinct training caption through the frozen
    tower once, saved to ``out``; returns (out, seconds, captions)."""
    from clap.model.factory import create_training_model
    from clap.train.data import training_captions
    from clap.train.text_cache import FrozenTextCache

    started = time.perf_counter()
    cache = FrozenTextCache(create_training_model(loop).text_encoder, "cpu")
    cache.add(training_captions(loop["train_urls"], loop["caption_kinds"]))
    cache.save(out)
    return out, time.perf_counter() - started, len(cache)


def default_params() -> dict[str, Any]:
    """The embedded default's params (params.yaml next to this repository's benchmarks/)."""
    from clap.params import load_params

    return load_params(Path(__file__).resolve().parents[1] / "params.yaml")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", default="data/shards", help="the shards stage's output (dvc repro shards)")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per row (default: one worker's steps in the default run, epochs x steps_per_epoch)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--audio-encoder", default=None, help="audio preset (default: params.yaml's audio_encoder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)

    from clap.train.config import TrainConfig
    from clap.train.trainer import loop_config

    if not (Path(args.shards) / "index.json").is_file():
        raise SystemExit(f"{args.shards}/index.json not found: build the shards first (dvc repro shards) or pass --shards")
    defaults = default_params()
    audio_encoder = args.audio_encoder or str(defaults["audio_encoder"])
    if args.steps is None:
        args.steps = int(defaults["train"]["epochs"]) * int(defaults["train"]["steps_per_epoch"])
    config = TrainConfig(audio_encoder=audio_encoder, text_encoder="minilm", freeze_text=True, batch_size=args.batch,
                         shard_root=str(Path(args.shards).resolve()))
    loop = loop_config(config)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        text_features, build_s, captions = build_text_features(loop, Path(scratch) / "text")
        rows = [Row(name, text, feature, loop, text_features) for name, (text, feature) in ROWS.items()]
        for step in range(args.steps):
            if step % 10 == 0:
                logger.info("step %d of %d", step, args.steps)
            for row in rows:
                row.step()
    results = [row.result(args.batch) for row in rows]
    for name, key in (("speedup_run", "ms_per_sample"), ("speedup_cpu", "cpu_ms_per_sample"),
                      ("speedup_steady", "ms_per_sample_steady")):
        for r in results:
            r[name] = round(results[0][key] / r[key], 2)
    payload = {
        "what": f"ms per training sample, {audio_encoder} + frozen MiniLM, one process; rows round-robin",
        "audio_encoder": audio_encoder,
        "steps": args.steps, "batch": args.batch, "threads": args.threads, "train_sets": config.train_sets,
        "text_features_build_s": round(build_s, 2), "text_features_captions": captions,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
        "rows": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"text_features table: {captions} captions in {build_s:.1f} s (once per caption set and text tower)")
    print("| caches | set-up (s) | ms/sample (run) | CPU ms/sample | ms/sample (steady) | speed-up (run) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['row']} | {r['setup_s']} | {r['ms_per_sample']} | {r['cpu_ms_per_sample']} | "
              f"{r['ms_per_sample_steady']} | {r['speedup_run']} |")


if __name__ == "__main__":
    main()
