"""DVC stage ``corpus``: write the built-in corpus (no download) described by params.yaml ``corpus``.

    python -m clap.stages.corpus [--params params.yaml] [--out data/raw/builtin]

The generator is the package clap.corpus; ``write_corpus`` writes next to the output folder first and
moves the corpus into place when complete, so an interrupted run never leaves a half-written corpus
behind; a stale corpus at ``--out`` is replaced.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from clap.corpus import CorpusConfig, CorpusSummary, write_corpus
from clap.params import load_params
from clap.stages.common import run_stage, stage_parser

log = logging.getLogger("clap.stages.corpus")

DEFAULT_OUT = Path("data/raw/builtin")


def default_out(params: dict[str, Any]) -> Path:
    """The path of the first ``sources`` entry of kind ``builtin``, else data/raw/builtin."""
    for source in params.get("sources") or []:
        if isinstance(source, dict) and source.get("kind") == "builtin" and source.get("path"):
            return Path(source["path"])
    return DEFAULT_OUT


def log_summary(summary: CorpusSummary) -> None:
    log.info(
        "corpus: %d clips, %.1f min of audio, %.1f MB in %s (%.1f s)",
        summary.clips, summary.seconds / 60.0, summary.bytes / 1e6, summary.out_dir, summary.elapsed,
    )
    for source, splits in sorted(summary.counts.items()):
        log.info("  %-18s %s", source, ", ".join(f"{split} {n}" for split, n in sorted(splits.items())))
    log.info("  formats %s; sample rates %s; channels %s; %d clips longer than 10 s",
             summary.formats, summary.sample_rates, summary.channels, summary.long_clips)
    log.info("  %d planted duplicates: %s", len(summary.duplicates),
             ", ".join(f"{copy} = {original}" for copy, original in summary.duplicates))


def main(argv: Sequence[str] | None = None) -> int:
    parser = stage_parser("corpus", __doc__, progress=True)
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: the builtin source's path in params, else data/raw/builtin)")
    args = parser.parse_args(argv)

    def work() -> None:
        params = load_params(args.params)
        config = CorpusConfig.from_params(params)
        out_dir = args.out if args.out is not None else default_out(params)
        log_summary(write_corpus(out_dir, config, progress=not args.no_progress))

    return run_stage("corpus", work, timed=True)


if __name__ == "__main__":
    sys.exit(main())
