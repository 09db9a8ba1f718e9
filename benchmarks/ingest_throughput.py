"""Ingest throughput, side by side in one run.

1. S3 mirror: the same prefix of generated clips mirrored from a local moto server (run as its own
   process, so it does not share our interpreter's lock) with 1 download worker vs N workers, and
   an up-to-date re-mirror (list + compare only) vs the first full mirror.
2. Header + hash: ``describe_audio`` over the same local files with 1 thread vs N threads.

A local endpoint has no network latency, so the parallel gain measured here is a lower bound of
what a remote bucket gives (where each request waits on the network).

    python -m benchmarks.ingest_throughput [--clips 200] [--seconds 2.0] [--workers 8] [--repeats 2]

Writes benchmarks/results/ingest.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import numpy as np
import soundfile as sf

from clap.data.ingest import describe_audio
from clap.data.manifest import ManifestRow
from clap.data.s3 import S3Settings, mirror_prefix

RESULTS = Path(__file__).parent / "results"
log = logging.getLogger("benchmarks.ingest_throughput")


def make_clips(folder: Path, count: int, seconds: float, seed: int = 0) -> int:
    """``count`` FLAC/WAV clips of noisy tones; returns the total bytes."""
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(count):
        sr = (16000, 22050, 44100, 48000)[i % 4]
        t = np.arange(int(seconds * sr)) / sr
        x = 0.2 * np.sin(2 * np.pi * rng.uniform(100, 4000) * t) + 0.02 * rng.standard_normal(t.size)
        path = folder / f"clip_{i:05d}.{'flac' if i % 2 else 'wav'}"
        sf.write(str(path), x.astype(np.float32), sr)
        total += path.stat().st_size
    return total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto(port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError(f"moto_server did not start on port {port}")


def timed_mirror(uri: str, cache: Path, settings: S3Settings, fresh: bool) -> tuple[float, int]:
    if fresh:
        shutil.rmtree(cache, ignore_errors=True)
    started = time.perf_counter()
    result = mirror_prefix(uri, cache, settings=settings, progress=False)
    return time.perf_counter() - started, result.downloaded


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    server = start_moto(port)
    work = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    try:
        clips = work / "clips"
        clips.mkdir()
        total_bytes = make_clips(clips, args.clips, args.seconds)
        client = boto3.client("s3")
        client.create_bucket(Bucket="bench")
        for path in sorted(clips.iterdir()):
            client.upload_file(str(path), "bench", f"set/{path.name}")
        uri = "s3://bench/set"

        rows_out = []
        mb = total_bytes / 1e6
        for workers in (1, args.workers):
            settings = S3Settings(workers=workers)
            best = min(timed_mirror(uri, work / "cache", settings, fresh=True)[0] for _ in range(args.repeats))
            rows_out.append({"case": f"S3 mirror, {workers} worker(s)", "seconds": best,
                             "files_per_s": args.clips / best, "mb_per_s": mb / best})
        resync = min(timed_mirror(uri, work / "cache", S3Settings(workers=args.workers), fresh=False)[0]
                     for _ in range(args.repeats))
        rows_out.append({"case": "S3 re-mirror, nothing changed", "seconds": resync,
                         "files_per_s": args.clips / resync, "mb_per_s": None})

        files = sorted(clips.iterdir())
        manifest = [ManifestRow(id=f"b/{p.stem}", source="b", split="train", path=str(p)) for p in files]
        for workers in (1, args.workers):
            best = float("inf")
            for _ in range(args.repeats):
                started = time.perf_counter()
                describe_audio(manifest, workers=workers, progress=False)
                best = min(best, time.perf_counter() - started)
            rows_out.append({"case": f"header + sha256, {workers} thread(s)", "seconds": best,
                             "files_per_s": args.clips / best, "mb_per_s": mb / best})
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)

    base_mirror, par_mirror, resync_row, base_desc, par_desc = rows_out
    ratios = {
        "mirror_parallel_speedup": base_mirror["seconds"] / par_mirror["seconds"],
        "remirror_vs_full_mirror": resync_row["seconds"] / par_mirror["seconds"],
        "describe_parallel_speedup": base_desc["seconds"] / par_desc["seconds"],
    }
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "clips": args.clips, "seconds_per_clip": args.seconds, "megabytes": round(mb, 2),
        "rows": rows_out, "ratios": ratios,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ingest.json").write_text(json.dumps(result, indent=2) + "\n")

    print(f"{args.clips} clips, {mb:.1f} MB, {os.cpu_count()} CPUs, local moto endpoint\n")
    print("| case | seconds | files/s | MB/s |\n| --- | ---: | ---: | ---: |")
    for row in rows_out:
        speed = f"{row['mb_per_s']:.1f}" if row["mb_per_s"] else "-"
        print(f"| {row['case']} | {row['seconds']:.2f} | {row['files_per_s']:.0f} | {speed} |")
    print()
    for name, value in ratios.items():
        print(f"- {name}: {value:.2f}")


if __name__ == "__main__":
    main()
