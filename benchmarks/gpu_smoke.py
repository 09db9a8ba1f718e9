"""GPU smoke run: the real train stage on one GPU, in at most about 5 minutes including set-up.

    python -m benchmarks.gpu_smoke                 # needs CUDA; prints samples/s, GPU utilisation, peak GPU memory
    python -m benchmarks.gpu_smoke --cpu-dry-run   # a handful of steps on CPU: checks the plumbing anywhere

What it does, all offline: writes a shard set of 10 s clips (train + val) in a temporary folder,
trains a byte-level BPE tokenizer on its captions (``tokenizers``, RoBERTa's special tokens), saves a
random-weight CLAP model folder with HTS-AT-tiny audio and a RoBERTa-base-shaped text tower (12
layers, 768 wide) using that tokenizer, and runs ``python -m clap.stages.train`` on it through a
params file: Ray Train, 1 worker with 1 GPU, bf16 autocast, the parallel loader (one loader process
per CPU given to the worker), validation split across ranks, checkpoints. While it trains,
``nvidia-smi`` is polled for GPU utilisation and memory. The summary goes to stdout and to
``benchmarks/results/gpu_smoke.json`` (``--out`` to change).

The dry run uses a shrunk audio tower and text tower, a few short clips and 4 steps on CPU, so
that a test can run the same path end to end on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import yaml

RESULTS = Path(__file__).parent / "results"
CLASSES = ["dog barking", "rain falling", "car engine", "church bell", "bird song", "siren wailing", "door knock",
           "water dripping"]
ROBERTA_BASE_SHAPE = {"vocab_size": 50265, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                      "intermediate_size": 3072, "max_position_embeddings": 514}
#: The dry run's audio tower: htsat-cpu cut to two small stages (as the tests' tiny models).
DRY_AUDIO = {"patch_embeds_hidden_size": 8, "depths": [1, 2], "num_attention_heads": [1, 2]}


def write_clips_and_shards(root: Path, train: int, val: int, seconds: float, per_shard: int) -> Path:
    """Clips of tones and noise with captions (``smoke`` set, train and val splits) -> shards."""
    from clap.data.manifest import ManifestRow
    from clap.data.shards import ShardConfig, write_shards

    rng = np.random.default_rng(0)
    rows = []
    t = np.arange(int(seconds * 48_000)) / 48_000
    for split, count in (("train", train), ("val", val)):
        for i in range(count):
            label = CLASSES[i % len(CLASSES)]
            tone = np.sin(2 * np.pi * (150 + 300 * (i % len(CLASSES))) * rng.uniform(0.95, 1.05) * t)
            clip = (0.3 * tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
            path = root / "audio" / f"{split}_{i:05d}.flac"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(path), clip, 48_000, subtype="PCM_16")
            rows.append(ManifestRow(
                id=f"smoke/{split}_{i:05d}", source="smoke", split=split, path=str(path),
                captions=[f"a {label}", f"the sound of a {label} nearby"], labels=[label], duration=seconds,
                sample_rate=48_000, channels=1, task="retrieval",
            ))
    write_shards(rows, root / "shards", ShardConfig(samples_per_shard=per_shard), progress=False)
    return root / "shards"


def train_tokenizer(out: Path, vocab_size: int = 2000) -> Path:
    """A byte-level BPE tokenizer with RoBERTa's special tokens (<s>=0, <pad>=1, </s>=2), trained here."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    texts = [f"{prefix} {label} {suffix}" for label in CLASSES
             for prefix in ("a", "the sound of a", "someone records a")
             for suffix in ("", "nearby", "in the distance", "outside")]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    raw = out / "bpe"
    raw.mkdir(parents=True, exist_ok=True)
    bpe.save_model(str(raw))
    tokenizer = RobertaTokenizerFast(vocab_file=str(raw / "vocab.json"), merges_file=str(raw / "merges.txt"))
    tokenizer.save_pretrained(str(out / "tokenizer"))
    return out / "tokenizer"


def build_model_folder(out: Path, tokenizer: Path, dry_run: bool) -> Path:
    """A random-weight model folder: HTS-AT-tiny + RoBERTa-base-shaped text (shrunk in the dry run)."""
    import torch

    from clap.model.model import ClapConfig, ClapModel
    from clap.model.native import save_model

    torch.manual_seed(0)
    config = ClapConfig(
        audio_encoder="htsat-cpu" if dry_run else "htsat-tiny", text_encoder="tiny-roberta",
        audio_overrides=DRY_AUDIO if dry_run else {},
        text_overrides={} if dry_run else {"config": ROBERTA_BASE_SHAPE}, tokenizer=str(tokenizer),
    )
    return save_model(ClapModel(config), out)


class GpuMonitor:
    """Polls ``nvidia-smi`` for utilisation (%) and memory used (MiB) of GPU 0 every ``period`` s."""

    def __init__(self, period: float = 0.5) -> None:
        self.period = period
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        query = ["nvidia-smi", "--id=0", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
        while not self._stop.is_set():
            try:
                out = subprocess.run(query, capture_output=True, text=True, timeout=5, check=True).stdout
                util, memory = (float(x) for x in out.strip().splitlines()[0].split(","))
                self.samples.append((util, memory))
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                pass
            self._stop.wait(self.period)

    def __enter__(self) -> "GpuMonitor":
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def summary(self) -> dict[str, float | None]:
        busy = [u for u, _ in self.samples]
        return {
            "gpu_util_mean_pct": statistics.fmean(busy) if busy else None,
            "gpu_util_median_pct": statistics.median(busy) if busy else None,
            "gpu_memory_peak_mib": max((m for _, m in self.samples), default=None),
            "gpu_polls": len(self.samples),
        }


def smoke_params(args: argparse.Namespace, shards: Path, model: Path, storage: Path) -> dict[str, Any]:
    from clap.train.config import TrainConfig

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    dry = args.cpu_dry_run
    steps_per_epoch = max(1, args.steps // 2)
    return {
        "audio_encoder": "htsat-cpu" if dry else "htsat-tiny", "text_encoder": "tiny-roberta", "fusion": False,
        "caption_augmentation": "none", "train_sets": ["smoke"], "seed": 0,
        "train": {
            "val_set": "smoke/val", "shard_root": str(shards), "init_checkpoint": str(model),
            "storage_path": str(storage), "batch_size": args.batch_size, "epochs": 2,
            "steps_per_epoch": steps_per_epoch, "warmup_steps": min(10, steps_per_epoch), "lr": 1e-4,
            "shuffle_buffer": 64, "num_workers": 1, "use_gpu": not dry,
            "cpus_per_worker": 1 if dry else max(1, cpus - 1),
            "loader_workers": args.loader_workers if args.loader_workers is not None else (1 if dry else None),
            "ray_num_cpus": max(2, cpus), "keep_checkpoints": 1, "log_every": 25, "freeze_text": False,
            **({"data_mode": "stream"} if "data_mode" in TrainConfig.__dataclass_fields__ else {}),
        },
    }


def steady_samples_per_s(steps_csv: Path, skip: int) -> tuple[float, int]:
    """Median samples/s of the steps after the first ``skip`` (warm-up, cuDNN autotune, loader start)."""
    with steps_csv.open() as fh:
        rates = [float(row["samples_per_s"]) for row in csv.DictReader(fh)]
    tail = rates[skip:] or rates
    return statistics.median(tail), len(rates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="a handful of steps on CPU (no GPU needed)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 300; dry run 4)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 64; dry run 2")
    parser.add_argument("--loader-workers", type=int, default=None, help="default: one per CPU of the worker")
    parser.add_argument("--train-clips", type=int, default=None, help="default 256 clips of 10 s; dry run 8 of 1 s")
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_smoke.json")
    args = parser.parse_args(argv)
    dry = args.cpu_dry_run
    args.steps = args.steps or (4 if dry else 300)
    args.batch_size = args.batch_size or (2 if dry else 64)
    train_clips = args.train_clips or (8 if dry else 256)

    import torch

    if not dry and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device visible to torch (torch.cuda.is_available() is False; torch "
              f"{torch.__version__}, CUDA build {torch.version.cuda}); run it on a machine with an NVIDIA GPU "
              "and a CUDA build of torch, or pass --cpu-dry-run to check the pipeline on CPU", file=sys.stderr)
        return 2
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as tmp:
        work = Path(tmp)
        shards = write_clips_and_shards(work / "data", train=train_clips, val=4 if dry else 32,
                                        seconds=1.0 if dry else 10.0, per_shard=2 if dry else 8)
        tokenizer = train_tokenizer(work / "tok")
        model = build_model_folder(work / "init-model", tokenizer, dry)
        params = smoke_params(args, shards, model, work / "ray")
        (work / "params.yaml").write_text(yaml.safe_dump(params))
        setup_s = time.perf_counter() - started
        print(f"set-up {setup_s:.1f} s: {train_clips} training clips, model {model}", flush=True)

        stage = [sys.executable, "-m", "clap.stages.train", "--params", str(work / "params.yaml"),
                 "--model-out", str(work / "model"), "--reports", str(work / "reports")]
        train_started = time.perf_counter()
        with GpuMonitor() as monitor:
            code = subprocess.run(stage, cwd=Path(__file__).resolve().parents[1]).returncode
        train_s = time.perf_counter() - train_started
        if code != 0:
            print(f"gpu_smoke: the train stage failed (exit {code}); see its log above", file=sys.stderr)
            return code
        metrics = json.loads((work / "reports" / "metrics.json").read_text())
        steady, steps = steady_samples_per_s(work / "reports" / "steps.csv", skip=min(20, args.steps // 4))

    gpu = monitor.summary()
    result = {
        "mode": "cpu-dry-run" if dry else "gpu",
        "device": "cpu" if dry else torch.cuda.get_device_name(0),
        "steps": steps, "batch_size": args.batch_size, "train_clips": train_clips,
        "samples_per_s_steady": steady, "setup_s": setup_s, "train_stage_s": train_s,
        "total_s": time.perf_counter() - started,
        "val_t2a_map10": metrics.get("val_t2a_map10"), **gpu,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    util = "n/a (CPU dry run)" if dry else (f"{gpu['gpu_util_mean_pct']:.0f} % mean, {gpu['gpu_util_median_pct']:.0f} % median"
                                            if gpu["gpu_polls"] else "n/a (nvidia-smi not found)")
    memory = "n/a" if gpu["gpu_memory_peak_mib"] is None else f"{gpu['gpu_memory_peak_mib'] / 1024:.1f} GiB"
    print(f"samples/s (steady, median over steps): {steady:.1f}")
    print(f"GPU utilisation: {util}")
    print(f"peak GPU memory: {memory}")
    print(f"steps: {steps}; set-up {setup_s:.0f} s, train stage {train_s:.0f} s, total {result['total_s']:.0f} s; "
          f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
