"""Training throughput of the encoder presets, side by side in one run (CPU).

One training step = forward of both towers on a batch of 10 s features + 77-token captions, the
contrastive loss, backward, an Adam step and the temperature clamp: what the trainer does per step
minus data loading and the mel front-end. Rows: the CPU presets of the embedded default (with the
MiniLM text tower trained or frozen) next to the paper's HTS-AT tiny and PANN CNN10, so the table
reads as ratios. The rows are measured round-robin (one step of each, repeated), so a load change
on a shared machine hits all rows alike.

    python -m benchmarks.preset_training_throughput [--batch 16] [--rounds 3] [--threads 2]

Speed is samples per second of wall time and per CPU-second (process time; comparable on a shared
machine where wall time is not), best of ``--rounds`` steps after one warm-up step.
``min_300_steps`` projects the wall time of 300 steps at the measured speed.

Writes benchmarks/results/preset_training_throughput.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import torch

from clap.model.loss import contrastive_loss
from clap.model.factory import create_model
from clap.model.model import ClapConfig

RESULTS = Path(__file__).parent / "results"
ROWS = [
    ("htsat-cpu", "minilm", False),
    ("htsat-cpu", "minilm", True),
    ("pann-cpu", "minilm", False),
    ("pann-cpu", "minilm", True),
    ("htsat-tiny", "minilm", True),
    ("pann-cnn10", "minilm", True),
]
CAPTIONS = ["a dog barks twice in a quiet park", "rain falls on a tin roof while thunder rolls far away"]

logger = logging.getLogger("benchmarks.preset_training_throughput")


class Row:
    """One preset combination, its optimiser and fixed inputs."""

    def __init__(self, audio: str, text: str, freeze_text: bool, batch: int) -> None:
        torch.manual_seed(0)
        self.audio, self.text, self.freeze_text, self.batch = audio, text, freeze_text, batch
        self.model = create_model(ClapConfig(audio_encoder=audio, text_encoder=text, freeze_text=freeze_text)).train()
        self.optimizer = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=1e-4)
        self.features = torch.randn(batch, 1, 1001, 64) * 10 - 40
        self.tokens = self.model.tokenize([CAPTIONS[i % 2] for i in range(batch)])
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def step(self, record: bool) -> None:
        w0, c0 = time.perf_counter(), time.process_time()
        out = self.model(self.features, None, self.tokens["input_ids"], self.tokens["attention_mask"])
        loss = contrastive_loss(out.audio_embeds, out.text_embeds, out.logit_scale)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.model.clamp_logit_scale()
        if record:
            self.wall.append(time.perf_counter() - w0)
            self.cpu.append(time.process_time() - c0)

    def result(self) -> dict[str, float | str | bool]:
        model = self.model
        return {
            "audio_encoder": self.audio, "text_encoder": self.text, "freeze_text": self.freeze_text,
            "audio_params_m": round(sum(p.numel() for p in model.audio_encoder.parameters()) / 1e6, 2),
            "trainable_params_m": round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 2),
            "samples_per_s": round(self.batch / min(self.wall), 2),
            "samples_per_cpu_s": round(self.batch / min(self.cpu), 2),
            "min_300_steps": round(300 * min(self.wall) / 60, 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    rows = [Row(audio, text, frozen, args.batch) for audio, text, frozen in ROWS]
    for round_ in range(args.rounds + 1):
        logger.info("round %d of %d", round_, args.rounds)
        for row in rows:
            row.step(record=round_ > 0)  # round 0 warms up
    results = [row.result() for row in rows]
    base = float(results[0]["samples_per_cpu_s"])
    for r in results:
        r["speed_vs_htsat_cpu"] = round(float(r["samples_per_cpu_s"]) / base, 2)

    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"batch": args.batch, "threads": args.threads, "rounds": args.rounds,
               "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "torch": torch.__version__, "rows": results}
    (RESULTS / "preset_training_throughput.json").write_text(json.dumps(payload, indent=2) + "\n")

    header = ["audio", "text", "text frozen", "audio M params", "trainable M", "samples/s", "samples/CPU-s",
              "vs htsat-cpu", "300 steps (min)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in results:
        print(f"| {r['audio_encoder']} | {r['text_encoder']} | {r['freeze_text']} | {r['audio_params_m']} | "
              f"{r['trainable_params_m']} | {r['samples_per_s']} | {r['samples_per_cpu_s']} | "
              f"{r['speed_vs_htsat_cpu']} | {r['min_300_steps']} |")


if __name__ == "__main__":
    main()
