"""Retrieval metrics at scale, side by side: chunked (the eval stage's) vs the full similarity matrix.

For growing sets of random unit vectors (dim 512, 5 captions per audio) it measures the wall time and
the peak extra memory of three ways to the same numbers:

* ``chunked``: ``clap.eval.metrics.retrieval_metrics``, what the eval stage runs (similarities
  ``chunk_size`` rows at a time; audio->text ranks one audio at a time);
* ``batched``: the same chunks, audio->text ranked for a whole chunk of audios per tensor operation
  (a candidate for metrics.py, to see whether the per-audio loop costs time);
* ``naive``: one full captions x audios matrix, where that fits in memory.

All must give the same metrics; the script checks that they do.

    python -m benchmarks.retrieval_memory [--quick] [--sizes 1000 10000] [--methods chunked naive]
                                          [--chunk-size 1024] [--threads N]

Sizes (audios x captions): 1k x 5k, 10k x 50k, 50k x 250k (left out with --quick). Each case runs in
its own process; peak memory is the process's resident high-water mark (VmHWM, reset after the
embeddings are built) minus its resident size at that point, so it counts what the metrics allocate,
not the embeddings. The naive method is skipped where its matrix (and temporaries) would not fit in
60 % of the available memory. Times of small tensor operations depend on the machine's load (idle
OpenMP threads wait for busy cores), so compare methods within one run; the JSON records the load.

Writes benchmarks/results/retrieval.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"
DIM = 512
CAPTIONS_PER_AUDIO = 5
#: caption = audio + noise of this norm: the own audio scores ~0.16, so ranks spread out (R@1 well below 1)
NOISE = 6.0
SIZES = (1_000, 10_000, 50_000)  # audios; captions = 5 x audios


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux: writing 5 to clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def make_embeddings(n_audio: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Random unit audio vectors and captions that are noisy copies of them (so ranks are not trivial)."""
    g = torch.Generator().manual_seed(seed)
    audio = torch.nn.functional.normalize(torch.randn(n_audio, DIM, generator=g), dim=1)
    owner = np.repeat(np.arange(n_audio), CAPTIONS_PER_AUDIO)
    text = torch.empty(n_audio * CAPTIONS_PER_AUDIO, DIM)
    for start in range(0, text.shape[0], 65_536):  # build in blocks: no second full-size temporary
        rows = torch.as_tensor(owner[start:start + 65_536])
        block = audio[rows] + NOISE * torch.randn(len(rows), DIM, generator=g) / DIM**0.5
        text[start:start + len(rows)] = torch.nn.functional.normalize(block, dim=1)
    return audio, text, owner


def metrics_from_ranks(t2a: np.ndarray, a2t: np.ndarray) -> dict[str, float]:
    """The paper's metrics from 0-based ranks: t2a [captions], a2t [audios, captions per audio] sorted."""
    out: dict[str, float] = {}
    for name, best in (("t2a", t2a), ("a2t", a2t[:, 0])):
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = float(np.mean(best < k))
        out[f"{name}_mean_rank"] = float(np.mean(best) + 1)
        out[f"{name}_median_rank"] = float(np.floor(np.median(best)) + 1)
    out["t2a_map10"] = float(np.mean(np.where(t2a < 10, 1.0 / (t2a + 1.0), 0.0)))
    # a2t ranks are sorted, so the j-th caption found in the top 10 has precision j / (rank + 1)
    hits = np.where(a2t < 10, np.arange(1, a2t.shape[1] + 1)[None, :] / (a2t + 1.0), 0.0)
    out["a2t_map10"] = float(np.mean(hits.sum(1) / a2t.shape[1]))
    return out


def _stable_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Rank of column ``targets[i]`` in row i (ties broken by index, as clap.eval.metrics does)."""
    target = scores.gather(1, targets[:, None])
    index = torch.arange(scores.shape[1])[None, :]
    return (scores > target).sum(1) + ((scores == target) & (index < targets[:, None])).sum(1)


def naive_retrieval_metrics(audio: torch.Tensor, text: torch.Tensor, owner: np.ndarray) -> dict[str, float]:
    """The same metrics from one full [captions, audios] similarity matrix."""
    sims = text @ audio.T
    t2a = _stable_ranks(sims, torch.as_tensor(owner)).numpy()
    by_audio = sims.T.contiguous()  # [audios, captions]
    own = torch.as_tensor(owner).argsort(stable=True).reshape(-1, CAPTIONS_PER_AUDIO)
    a2t = np.stack([_stable_ranks(by_audio, own[:, j]).numpy() for j in range(CAPTIONS_PER_AUDIO)], axis=1)
    return metrics_from_ranks(t2a, np.sort(a2t, axis=1))


def batched_retrieval_metrics(audio: torch.Tensor, text: torch.Tensor, owner: np.ndarray,
                              chunk_size: int = 1024) -> dict[str, float]:
    """A candidate for clap.eval.metrics: the same chunks, but audio->text ranks a whole chunk of audios
    per tensor operation (one pass per caption slot) instead of one audio at a time in Python."""
    from clap.eval.metrics import text_to_audio_ranks

    t2a = text_to_audio_ranks(audio, text, owner, chunk_size)
    own = torch.as_tensor(owner).argsort(stable=True).reshape(-1, CAPTIONS_PER_AUDIO)
    a2t = np.empty(own.shape, dtype=np.int64)
    step = max(1, chunk_size // 4)
    for start in range(0, audio.shape[0], step):
        scores = audio[start:start + step] @ text.T
        for j in range(CAPTIONS_PER_AUDIO):
            a2t[start:start + step, j] = _stable_ranks(scores, own[start:start + step, j]).numpy()
    return metrics_from_ranks(t2a, np.sort(a2t, axis=1))


def run_case(method: str, n_audio: int, chunk_size: int, threads: int) -> dict[str, Any]:
    """One measurement in this (fresh) process."""
    from clap.eval.metrics import retrieval_metrics

    torch.set_num_threads(threads)
    audio, text, owner = make_embeddings(n_audio)
    baseline_kb = _status_kb("VmRSS")
    _reset_peak()
    start = time.perf_counter()
    if method == "chunked":
        metrics = retrieval_metrics(audio, text, owner, chunk_size=chunk_size)
    elif method == "batched":
        metrics = batched_retrieval_metrics(audio, text, owner, chunk_size=chunk_size)
    else:
        metrics = naive_retrieval_metrics(audio, text, owner)
    seconds = time.perf_counter() - start
    return {"metrics": metrics, "seconds": seconds, "peak_extra_mb": (_status_kb("VmHWM") - baseline_kb) / 1024,
            "embeddings_mb": (audio.numel() + text.numel()) * 4 / 2**20}


def _measure(method: str, n_audio: int, chunk_size: int, threads: int) -> dict[str, Any]:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(run_case, (method, n_audio, chunk_size, threads))


def available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


METHODS = ("chunked", "batched", "naive")


def _write(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    result = {"chunk_size": args.chunk_size, "threads": args.threads, "dim": DIM,
              "captions_per_audio": CAPTIONS_PER_AUDIO, "methods": args.methods,
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "load_average_1m": round(os.getloadavg()[0], 2), "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "retrieval.json").write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="leave out the largest set (50k x 250k)")
    parser.add_argument("--sizes", type=int, nargs="*", default=None, help="audio counts (default: 1k 10k 50k)")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()

    sizes = args.sizes or (SIZES[:-1] if args.quick else SIZES)
    rows = []
    for n_audio in sizes:
        n_text = n_audio * CAPTIONS_PER_AUDIO
        full_matrix_mb = n_audio * n_text * 4 / 2**20
        reference: dict[str, float] | None = None
        for method in args.methods:
            base = {"audios": n_audio, "captions": n_text, "method": method, "full_matrix_mb": round(full_matrix_mb, 1)}
            # the naive method holds the float matrix, its transposed copy and boolean temporaries
            if method == "naive" and full_matrix_mb * 2.5 > 0.6 * available_mb():
                rows.append({**base, "skipped": f"needs ~{full_matrix_mb * 2.5 / 1024:.0f} GB"})
                continue
            print(f"{n_audio} x {n_text}: {method} ...", flush=True)
            run = _measure(method, n_audio, args.chunk_size, args.threads)
            reference = reference or run["metrics"]
            # block shapes change the float rounding of the matmul, which can swap near-tied items:
            # allow a couple of items of difference in a share, no more
            # the alternatives compute the paper's metrics only (not the reference's a2t_map10_laion variant)
            shared = [k for k in reference if k in run["metrics"] and "rank" not in k]
            diff = max(abs(run["metrics"][k] - reference[k]) for k in shared)
            if diff > 2.0 / n_audio:
                raise SystemExit(f"{method} metrics differ from {args.methods[0]}'s at {n_audio}: {run['metrics']} vs {reference}")
            rows.append({**base, "seconds": round(run["seconds"], 2), "peak_extra_mb": round(run["peak_extra_mb"], 1),
                         "embeddings_mb": round(run["embeddings_mb"], 1), "max_metric_diff": diff,
                         "t2a_r1": round(run["metrics"]["t2a_r1"], 4), "a2t_r1": round(run["metrics"]["a2t_r1"], 4)})
            print(f"  {rows[-1]['seconds']} s, peak {rows[-1]['peak_extra_mb']} MB", flush=True)
            _write(args, rows)  # after every case: a long run stopped early keeps what it measured
        first = next((r for r in rows if r["audios"] == n_audio and "seconds" in r), None)
        for r in rows:
            if r["audios"] == n_audio and "seconds" in r and first:
                r["time_vs_first"] = round(r["seconds"] / first["seconds"], 2)
                r["memory_vs_first"] = round(r["peak_extra_mb"] / max(first["peak_extra_mb"], 1e-6), 2)

    _write(args, rows)

    print(f"\nRetrieval metrics: chunked = clap.eval.metrics.retrieval_metrics (chunk {args.chunk_size}); batched = "
          "the same chunks, audio->text ranked per chunk; naive = one full matrix. "
          f"{args.threads} threads; peak = extra resident memory; ratios against {args.methods[0]}\n")
    print("| audios x captions | method | seconds | peak MB | full matrix MB | time ratio | memory ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['audios']:,} x {r['captions']:,} | {r['method']} | skipped ({r['skipped']}) | | "
                  f"{r['full_matrix_mb']:,} | | |")
        else:
            print(f"| {r['audios']:,} x {r['captions']:,} | {r['method']} | {r['seconds']} | {r['peak_extra_mb']:,} | "
                  f"{r['full_matrix_mb']:,} | {r.get('time_vs_first', '')} | {r.get('memory_vs_first', '')} |")


if __name__ == "__main__":
    main()
