"""Run every benchmark in turn (`make bench`); each writes benchmarks/results/<name>.json."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = [
    "benchmarks.corpus_generation",
    "benchmarks.normalize_throughput",
    "benchmarks.ingest_throughput",
    "benchmarks.frontend",
    "benchmarks.model_throughput",
    "benchmarks.preset_training_throughput",
    "benchmarks.train_scaling",
    "benchmarks.train_step_caches",
    "benchmarks.train_layout",
    "benchmarks.learning_curve",
    "benchmarks.retrieval_memory",
    "benchmarks.s3_shards",
    "benchmarks.loader_throughput",
    "benchmarks.flow_overhead",
]


def main() -> int:
    failed = []
    for module in BENCHMARKS:
        print(f"\n## {module}\n", flush=True)
        if subprocess.run([sys.executable, "-m", module]).returncode != 0:
            failed.append(module)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
