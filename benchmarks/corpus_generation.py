"""Built-in corpus generation: how long the default corpus takes, how big it is, where time goes.

Two measurements in one run:
  1. the whole corpus (params.yaml ``corpus``, optionally scaled down) generated with 1 worker and
     with N workers, side by side: wall seconds, CPU seconds (parent and workers), audio seconds
     written per wall second, and the speed-up of N workers over 1;
  2. a sample of clips rendered and encoded in this process: CPU seconds per audio second for
     synthesis and for each file format's encoder.

    python -m benchmarks.corpus_generation [--params params.yaml] [--scale 1.0] [--workers 2]

Wall time depends on what else runs on the machine; CPU time and the ratios are the stable figures.
Writes benchmarks/results/corpus_generation.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

from clap.corpus import CorpusConfig, encode_audio, generate_corpus, plan_corpus, render_clip
from clap.params import load_params

RESULTS = Path(__file__).parent / "results"
logger = logging.getLogger("benchmarks.corpus_generation")


def scaled(config: CorpusConfig, scale: float) -> CorpusConfig:
    """The same corpus with every clip count multiplied by ``scale`` (at least one clip per split)."""
    if scale == 1.0:
        return config

    def shrink(counts: dict[str, int]) -> dict[str, int]:
        return {split: max(1, round(n * scale)) for split, n in counts.items()}

    return replace(config, captioned=shrink(config.captioned), labelled=shrink(config.labelled),
                   tagging=shrink(config.tagging), clips_per_class=max(1, round(config.clips_per_class * scale)))


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def whole_corpus(config: CorpusConfig, workers: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="corpus-bench-") as tmp:
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        summary = generate_corpus(Path(tmp) / "builtin", replace(config, workers=workers), progress=False)
        wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    return {
        "workers": workers, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "clips": summary.clips,
        "audio_s": round(summary.seconds, 1), "megabytes": round(summary.bytes / 1e6, 1),
        "audio_s_per_wall_s": round(summary.seconds / wall, 1), "formats": summary.formats,
        "long_clips": summary.long_clips,
    }


def per_stage(config: CorpusConfig, every: int) -> dict[str, dict[str, float]]:
    """CPU seconds per audio second: synthesis (all clips) and encoding (per format)."""
    plans, _ = plan_corpus(config)
    render_cpu, audio = 0.0, 0.0
    encode_cpu: dict[str, float] = defaultdict(float)
    encode_audio_s: dict[str, float] = defaultdict(float)
    encode_bytes: dict[str, int] = defaultdict(int)
    for plan in plans[::every]:
        t0 = time.process_time()
        samples = render_clip(plan, config.seed)
        t1 = time.process_time()
        data = encode_audio(samples, plan.sample_rate, plan.fmt, serial=1)
        t2 = time.process_time()
        render_cpu += t1 - t0
        audio += plan.duration
        encode_cpu[plan.fmt] += t2 - t1
        encode_audio_s[plan.fmt] += plan.duration
        encode_bytes[plan.fmt] += len(data)
    rows = {"synthesis": {"cpu_s_per_audio_s": round(render_cpu / audio, 4), "audio_s": round(audio, 1)}}
    for fmt in sorted(encode_cpu):
        rows[f"encode {fmt}"] = {
            "cpu_s_per_audio_s": round(encode_cpu[fmt] / encode_audio_s[fmt], 4),
            "audio_s": round(encode_audio_s[fmt], 1),
            "kilobytes_per_audio_s": round(encode_bytes[fmt] / 1e3 / encode_audio_s[fmt], 1),
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every clip count (default 1: the default corpus)")
    parser.add_argument("--workers", type=int, default=2, help="the N of the 1-vs-N comparison")
    parser.add_argument("--sample-every", type=int, default=8, help="per-stage timing on every k-th clip")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = scaled(CorpusConfig.from_params(load_params(args.params)), args.scale)

    runs = [whole_corpus(config, 1), whole_corpus(config, args.workers)]
    speedup = runs[0]["wall_s"] / runs[1]["wall_s"]
    stages = per_stage(config, args.sample_every)
    result = {"scale": args.scale, "runs": runs, "speedup": round(speedup, 2), "per_stage": stages}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "corpus_generation.json").write_text(json.dumps(result, indent=2) + "\n")

    first = runs[0]
    print(f"\nCorpus generation (scale {args.scale}): {first['clips']} clips, {first['audio_s'] / 60:.1f} min "
          f"of audio, {first['megabytes']} MB, {first['long_clips']} clips > 10 s\n")
    print("| workers | wall s | CPU s | audio s / wall s |")
    print("|---|---|---|---|")
    for run in runs:
        print(f"| {run['workers']} | {run['wall_s']} | {run['cpu_s']} | {run['audio_s_per_wall_s']} |")
    print(f"\nspeed-up of {args.workers} workers over 1: {speedup:.2f}x\n")
    print("| stage | CPU s per audio s | kB per audio s |")
    print("|---|---|---|")
    for name, row in stages.items():
        print(f"| {name} | {row['cpu_s_per_audio_s']} | {row.get('kilobytes_per_audio_s', '')} |")


if __name__ == "__main__":
    main()
