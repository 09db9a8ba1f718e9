"""DVC stage `eval_retrieval`: text->audio and audio->text retrieval of a model on held-out sets.

    python -m clap.stages.eval_retrieval [--params params.yaml] [--model data/models/clap]

Sets are ``"<source>/<split>"`` names of the shard index (params ``eval_retrieval.sets``; ingested
Clotho and AudioCaps sources appear as ``clotho/test`` and ``audiocaps/test``). Writes, under
``--out`` (reports/eval): ``retrieval.json`` (flat metrics ``<source>_<split>.t2a_r1`` ... with
chance levels, ``<set>.complete`` with ``clips_expected``/``clips_scored``, ``<set>.dur_gt10s.t2a_r1``
...), and per set ``retrieval/<set>/dropped.csv`` (every captioned clip of the set's metadata not
scored: stage and reason), ``retrieval_plots/<set>/recall.csv`` (recall@k, k = 1..10, per direction)
and ``retrieval_plots/<set>/recall_at_k.png``.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

from clap.eval.accounting import add_upstream_arguments, upstream_from_args
from clap.eval.datasets import EvalSetError
from clap.eval.embeddings import add_model_arguments, engine_from_args
from clap.eval.retrieval import RetrievalConfig, check_retrieval_sets, evaluate_retrieval, write_retrieval_reports
from clap.model.weights import CheckpointError
from clap.params import load_params
from clap.stages.common import run_stage, stage_parser

log = logging.getLogger("clap.stages.eval_retrieval")


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("eval_retrieval", __doc__)
    parser.add_argument("--shards", default="data/shards", help="shard root with index.json (local or s3://)")
    parser.add_argument("--out", type=Path, default=Path("reports/eval"), help="report folder")
    parser.add_argument("--set", dest="sets", action="append", default=None, metavar="SOURCE/SPLIT",
                        help="evaluate this set instead of params eval_retrieval.sets (repeatable)")
    add_model_arguments(parser, "clips per forward pass (default: params eval_retrieval.batch_size)")
    add_upstream_arguments(parser)
    args = parser.parse_args(argv)

    def work() -> None:
        config = RetrievalConfig.from_params(load_params(args.params).get("eval_retrieval"))
        if args.sets:
            config = dataclasses.replace(config, sets=tuple(args.sets))
        if args.batch_size:
            config = dataclasses.replace(config, batch_size=args.batch_size)
        check_retrieval_sets(args.shards, config.sets)
        upstream = upstream_from_args(args)
        results = evaluate_retrieval(engine_from_args(args, config.batch_size), args.shards, config, upstream)
        paths = write_retrieval_reports(results, args.out)
        log.info("wrote %s, %s/<set>/ and %s/<set>/ for %d set(s)", paths.metrics, paths.tables, paths.plots, len(results))

    return run_stage("eval_retrieval", work, (EvalSetError, CheckpointError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
