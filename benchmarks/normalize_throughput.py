"""Normalisation throughput, side by side: 1 worker vs 2 workers on the same generated clips.

Generates a set of clips in mixed formats, rates and channel counts (WAV 44.1 kHz stereo, FLAC 48 kHz
mono, OGG 22.05 kHz mono, MP3 44.1 kHz stereo, float WAV 16 kHz mono), then runs the normalize
stage's library path (decode, downmix, resample, FLAC write) over all of them with each worker
count. Reports files/s and times real-time (seconds of audio per wall second), and the CPU seconds
the clips took inside the workers, which hold even when other load on the machine keeps the second
worker from a core of its own (the 1-minute load average is recorded with the numbers). The pool start-up is part of the timed run, as it
is in the stage; the runs alternate between worker counts and the fastest of ``--repeats`` counts.

    python -m benchmarks.normalize_throughput [--clips 60] [--min-seconds 3] [--max-seconds 12] [--repeats 2]

Writes benchmarks/results/normalize.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from clap.data.manifest import ManifestRow
from clap.data.normalize import NormalizeConfig, normalize_rows

RESULTS = Path(__file__).parent / "results"
log = logging.getLogger("benchmarks.normalize_throughput")

#: (extension, soundfile format, subtype, sample rate, channels), used in turn
FORMATS = [
    ("wav", "WAV", "PCM_16", 44100, 2),
    ("flac", "FLAC", "PCM_16", 48000, 1),
    ("ogg", "OGG", "VORBIS", 22050, 1),
    ("mp3", "MP3", "MPEG_LAYER_III", 44100, 2),
    ("wav", "WAV", "FLOAT", 16000, 1),
]


def make_clips(folder: Path, count: int, min_s: float, max_s: float, seed: int = 0) -> tuple[list[ManifestRow], float]:
    """Write ``count`` clips (tones plus noise) cycling through FORMATS; returns rows and total seconds."""
    rng = np.random.default_rng(seed)
    rows, total = [], 0.0
    for i in range(count):
        ext, fmt, subtype, sr, channels = FORMATS[i % len(FORMATS)]
        seconds = float(rng.uniform(min_s, max_s))
        t = np.arange(int(seconds * sr)) / sr
        mix = sum(rng.uniform(0.05, 0.2) * np.sin(2 * np.pi * rng.uniform(80, sr / 4) * t) for _ in range(3))
        mix = mix + 0.02 * rng.standard_normal(t.size)
        data = np.stack([mix, 0.5 * mix], axis=1) if channels == 2 else mix
        path = folder / f"clip_{i:03d}.{ext}"
        sf.write(str(path), np.clip(data, -1, 1).astype(np.float32), sr, format=fmt, subtype=subtype)
        rows.append(ManifestRow(id=f"bench/clip_{i:03d}", source="bench", split="train", path=str(path)))
        total += t.size / sr
    return rows, total


def time_run(rows: list[ManifestRow], out: Path, workers: int) -> tuple[float, float]:
    """Wall seconds of one normalisation of ``rows`` and the CPU seconds its clips took in the workers."""
    shutil.rmtree(out, ignore_errors=True)
    cfg = NormalizeConfig(workers=workers, max_duration=600.0)
    start = time.perf_counter()
    results = normalize_rows(rows, out, cfg, progress=False)
    elapsed = time.perf_counter() - start
    cpu = sum(r.cpu_seconds for r in results)
    bad = [r for r in results if not r.ok]
    if bad:
        raise RuntimeError(f"benchmark clips were quarantined: {[(r.id, r.reason) for r in bad]}")
    return elapsed, cpu


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=60)
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--max-seconds", type=float, default=12.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=RESULTS / "normalize.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    with tempfile.TemporaryDirectory(prefix="clap-bench-normalize-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "raw").mkdir()
        rows, audio_seconds = make_clips(tmp_path / "raw", args.clips, args.min_seconds, args.max_seconds)
        log.info("generated %d clips, %.1f s of audio; warming up", len(rows), audio_seconds)
        time_run(rows[: len(FORMATS)], tmp_path / "warmup", max(args.workers))  # page cache, forkserver
        timings: dict[int, list[tuple[float, float]]] = {w: [] for w in args.workers}
        for _ in range(args.repeats):
            for workers in args.workers:  # interleaved, so drift on a shared machine hits both alike
                timings[workers].append(time_run(rows, tmp_path / f"out{workers}", workers))

    base = min(timings[args.workers[0]])[0]
    table = []
    for workers in args.workers:
        best, cpu = min(timings[workers])
        table.append({
            "workers": workers,
            "seconds": round(best, 3),
            "files_per_s": round(len(rows) / best, 2),
            "x_realtime": round(audio_seconds / best, 1),
            "speedup": round(base / best, 2),
            # CPU seconds the clips took (summed over workers) and the speed per busy core: figures
            # that hold whatever else runs on the machine, unlike the wall-clock ones
            "clip_cpu_seconds": round(cpu, 3),
            "x_realtime_per_cpu_second": round(audio_seconds / cpu, 1),
            "runs": [round(t, 3) for t, _ in timings[workers]],
        })
    result = {
        "clips": len(rows),
        "audio_seconds": round(audio_seconds, 1),
        "formats": [f"{fmt}/{subtype} {sr} Hz {ch} ch" for _, fmt, subtype, sr, ch in FORMATS],
        "cpu_count": os.cpu_count(),
        # other work on the machine skews the 2-worker row most; keep the context with the numbers
        "load_average_1min": round(os.getloadavg()[0], 2),
        "machine": platform.machine(),
        "results": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\nnormalize: {len(rows)} clips, {audio_seconds:.0f} s of audio, {os.cpu_count()} CPUs, "
          f"load average {result['load_average_1min']}\n")
    print("| workers | wall s | files/s | x real-time | speed-up | clip CPU s | x real-time per CPU s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in table:
        print(f"| {row['workers']} | {row['seconds']:.2f} | {row['files_per_s']:.1f} | "
              f"{row['x_realtime']:.0f} | {row['speedup']:.2f} | {row['clip_cpu_seconds']:.2f} | "
              f"{row['x_realtime_per_cpu_second']:.0f} |")
    print(f"\nwritten to {args.out}")
    return result


if __name__ == "__main__":
    main()
