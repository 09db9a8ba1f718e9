"""Shards on S3, side by side in one run.

1. Publish: the same shard tree uploaded to a local moto server (its own process) with 1 upload
   worker vs N, and an up-to-date re-publish (hash + list + compare only) vs the first upload.
2. Streaming: every sample of the tree read with webdataset from local disk vs through the
   ``s3://`` scheme (one streaming GET per shard), raw members and decoded audio alike.

A local endpoint has no network latency or bandwidth limit, so these ratios show the overhead of
our code and of the S3 protocol, not what a remote bucket costs.

    python -m benchmarks.s3_shards [--clips 160] [--seconds 4.0] [--per-shard 32] [--workers 8]

Writes benchmarks/results/s3_shards.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import boto3
import numpy as np
import soundfile as sf
import webdataset as wds

from benchmarks.ingest_throughput import free_port, start_moto
from clap.data.manifest import ManifestRow
from clap.data.remote_shards import publish_shards
from clap.data.s3 import S3Settings
from clap.data.shards import ShardConfig, iter_shard_samples, list_shards, write_shards
from clap.data.wds_s3 import register_webdataset_s3

RESULTS = Path(__file__).parent / "results"
log = logging.getLogger("benchmarks.s3_shards")


def make_shards(root: Path, clips: int, seconds: float, per_shard: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(clips):
        t = np.arange(int(seconds * 48000)) / 48000
        x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 4000) * t) + 0.05 * rng.standard_normal(t.size)
        path = root / "audio" / f"clip_{i:05d}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), x.astype(np.float32), 48000, subtype="PCM_16")
        rows.append(ManifestRow(id=f"bench/clip_{i:05d}", source="bench", split="train", path=str(path),
                                captions=[f"clip {i}"], duration=seconds, sample_rate=48000, channels=1))
    write_shards(rows, root / "shards", ShardConfig(samples_per_shard=per_shard), progress=False)
    return root / "shards"


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def read_raw(urls: list[str]) -> int:
    dataset = wds.WebDataset(urls, shardshuffle=False, nodesplitter=lambda src, group=None: src, empty_check=False)
    return sum(len(s["flac"]) + len(s["json"]) for s in dataset)


def read_decoded(urls: list[str]) -> int:
    return sum(1 for _ in iter_shard_samples(urls))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=160)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--per-shard", type=int, default=32)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1")
    server = start_moto(port)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = make_shards(Path(tmp), args.clips, args.seconds, args.per_shard)
            megabytes = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 1e6
            boto3.client("s3").create_bucket(Bucket="bench")
            for workers in (1, args.workers):
                remote = f"s3://bench/w{workers}"
                seconds, result = timed(lambda: publish_shards(  # noqa: B023 - called at once
                    root, remote, settings=S3Settings(workers=workers), progress=False))
                rows.append({"case": f"publish, {workers} worker(s)", "seconds": seconds,
                             "mb_per_s": megabytes / seconds, "objects": len(result.uploaded)})
            seconds, result = timed(lambda: publish_shards(root, f"s3://bench/w{args.workers}", progress=False))
            rows.append({"case": "re-publish, nothing changed", "seconds": seconds, "mb_per_s": None,
                         "objects": len(result.uploaded)})

            register_webdataset_s3()
            local = [str(p) for p in list_shards(root)]
            remote_urls = [f"s3://bench/w{args.workers}/{Path(u).relative_to(root).as_posix()}" for u in local]
            for label, reader in (("raw members", read_raw), ("decoded audio", read_decoded)):
                for where, urls in (("local", local), ("s3://", remote_urls)):
                    seconds, _ = timed(lambda: reader(urls))  # noqa: B023
                    rows.append({"case": f"stream {label}, {where}", "seconds": seconds,
                                 "mb_per_s": megabytes / seconds, "objects": len(urls)})
    finally:
        server.terminate()
        server.wait(timeout=10)

    by_case = {r["case"]: r["seconds"] for r in rows}
    ratios = {
        "publish_parallel_speedup": by_case["publish, 1 worker(s)"] / by_case[f"publish, {args.workers} worker(s)"],
        "republish_vs_first": by_case["re-publish, nothing changed"] / by_case[f"publish, {args.workers} worker(s)"],
        "s3_vs_local_raw": by_case["stream raw members, s3://"] / by_case["stream raw members, local"],
        "s3_vs_local_decoded": by_case["stream decoded audio, s3://"] / by_case["stream decoded audio, local"],
    }
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "clips": args.clips, "seconds_per_clip": args.seconds, "samples_per_shard": args.per_shard,
        "megabytes": round(megabytes, 2), "rows": rows, "ratios": ratios,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "s3_shards.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{megabytes:.1f} MB in {len(local)} shards\n")
    print("| case | seconds | MB/s | objects |\n| --- | ---: | ---: | ---: |")
    for r in rows:
        mbps = f"{r['mb_per_s']:.1f}" if r["mb_per_s"] else "-"
        print(f"| {r['case']} | {r['seconds']:.2f} | {mbps} | {r['objects']} |")
    print()
    for name, value in ratios.items():
        print(f"- {name}: {value:.2f}")


if __name__ == "__main__":
    sys.exit(main())
