"""DVC stage `eval_zeroshot`: zero-shot classification accuracy of a model on labelled sets.

    python -m clap.stages.eval_zeroshot [--params params.yaml] [--model data/models/clap]

Sets come from params ``eval_zeroshot.sets`` (ingested: ``{name, shards: <source>/<split>}``;
native folders: ``{name, path, kind}``) or from ``--set`` (repeatable), which replaces them:

    --set esc50=/data/ESC-50-master            native folder, layout detected (esc50, urbansound8k,
    --set us8k:urbansound8k=/data/UrbanSound8K  vggsound, folder) or named after the colon
    --set builtin_esc=shards:builtin_esc/test   an ingested set of the shard index

A released LAION-CLAP checkpoint on ESC-50 fold 1 (its published figure):

    python -m clap.stages.eval_zeroshot --model 630k-audioset-best.pt --tokenizer /models/roberta-base \\
        --set esc50=/data/ESC-50-master --folds 1 --manifest none --out reports/eval/laion-630k

Writes, under ``--out`` (reports/eval): ``zeroshot.json`` (flat metrics ``<set>.top1``, ``<set>.top5``,
``<set>.n``, ``<set>.excluded``, chance levels, ``<set>.complete`` with ``clips_expected/scored`` and
``classes_expected/scored``, ``<set>.dur_le10s.top1`` ...), and per set ``zeroshot/<set>/per_class.csv``,
``zeroshot/<set>/dropped.csv`` (every clip of the set's metadata not scored: stage and reason),
``zeroshot_plots/<set>/predictions.csv`` (for `dvc plots`' confusion template) and
``zeroshot_plots/<set>/confusion.png``. Clips dropped before the shards are found by comparing the
set with the ingest manifest (``--ingest-manifest``) and named with normalize's reasons (``--quarantine``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from clap.eval.accounting import UpstreamRecords, add_upstream_arguments, upstream_from_args
from clap.eval.datasets import EvalSetError
from clap.eval.embeddings import add_model_arguments, engine_from_args
from clap.eval.overlap import TrainingOverlap
from clap.eval.zeroshot import (
    ZeroShotConfig,
    ZeroShotSetSpec,
    check_zero_shot_sets,
    evaluate_zero_shot,
    parse_folds,
    write_zero_shot_reports,
)
from clap.model.weights import CheckpointError
from clap.params import load_params
from clap.stages.common import run_stage, stage_parser

log = logging.getLogger("clap.stages.eval_zeroshot")

DEFAULT_MANIFEST = "data/manifest/captions.jsonl"


def config_from_args(args: argparse.Namespace) -> ZeroShotConfig:
    """params.yaml ``eval_zeroshot`` with the command line's overrides applied."""
    config = ZeroShotConfig.from_params(load_params(args.params).get("eval_zeroshot"))
    changes: dict = {}
    if args.sets:
        changes["sets"] = tuple(ZeroShotSetSpec.from_cli(text) for text in args.sets)
    if args.folds is not None:
        changes["folds"] = parse_folds(args.folds)
    if args.template is not None:
        changes.update(template=args.template, templates=None)
    if args.exclude_ids is not None:
        changes["exclude_ids"] = args.exclude_ids
    if args.batch_size:
        changes["batch_size"] = args.batch_size
    return dataclasses.replace(config, **changes) if changes else config


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("eval_zeroshot", __doc__, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--shards", default="data/shards", help="shard root with index.json (local or s3://)")
    parser.add_argument("--manifest", default=DEFAULT_MANIFEST,
                        help="manifest whose training rows' hashes are excluded ('none': check exclude_ids only)")
    parser.add_argument("--out", type=Path, default=Path("reports/eval"), help="report folder")
    parser.add_argument("--set", dest="sets", action="append", default=None, metavar="NAME=PATH",
                        help="evaluate this set instead of params eval_zeroshot.sets (repeatable; see below)")
    parser.add_argument("--folds", default=None, help="folds to keep, e.g. 1 or 1,2; 'all' for every fold")
    parser.add_argument("--template", default=None, help="prompt template with {label} (replaces params')")
    parser.add_argument("--exclude-ids", default=None, help="text file of clip ids/file names/sha256 to leave out")
    add_upstream_arguments(parser)
    add_model_arguments(parser, "clips per forward pass (default: params eval_zeroshot.batch_size)")
    args = parser.parse_args(argv)

    def work() -> None:
        config = config_from_args(args)
        manifest = None if str(args.manifest).lower() == "none" else Path(args.manifest)
        if manifest is not None and not manifest.is_file():
            raise FileNotFoundError(f"{manifest}: manifest not found (run `dvc repro captions`, or pass --manifest none "
                                    "to check overlap against --exclude-ids only)")
        check_zero_shot_sets(config, args.shards)
        overlap = TrainingOverlap.build(manifest, config.exclude_ids)
        upstream: UpstreamRecords = upstream_from_args(args, any(s.shards for s in config.sets))
        engine = engine_from_args(args, config.batch_size)
        results = evaluate_zero_shot(engine, config, overlap, args.shards, upstream)
        paths = write_zero_shot_reports(results, args.out)
        log.info("wrote %s, %s/<set>/ and %s/<set>/ for %d set(s)", paths.metrics, paths.tables, paths.plots, len(results))

    return run_stage("eval_zeroshot", work, (EvalSetError, CheckpointError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
