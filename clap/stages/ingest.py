"""DVC stage `ingest`: params.yaml sources -> data/manifest/ingest.jsonl.

    python -m clap.stages.ingest [--params params.yaml]

Also writes reports/data/ingest.json (counts per source and split, train/eval overlap dropped,
unreadable files) and the GX result and data docs under reports/data/gx/ingest/. Exits 1 with the
failed expectations listed when the manifest fails validation, and with a message naming the
source and the fix when a source cannot be read.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from clap.data.ingest import IngestConfig, IngestOutputs, run_ingest
from clap.data.s3 import S3AccessError
from clap.data.sources import SourceError
from clap.data.validation import DataValidationError
from clap.params import load_params
from clap.stages.common import StageFailed, run_stage, stage_parser


def main(argv: list[str] | None = None) -> int:
    defaults = IngestOutputs()
    parser = stage_parser("ingest", __doc__, progress=True)
    parser.add_argument("--output", type=Path, default=defaults.manifest)
    parser.add_argument("--report", type=Path, default=defaults.report)
    parser.add_argument("--gx-dir", type=Path, default=defaults.gx_dir)
    parser.add_argument("--workers", type=int, default=None, help="override ingest.workers")
    args = parser.parse_args(argv)

    def work() -> None:
        config = IngestConfig.from_params(load_params(args.params))
        if args.workers is not None:
            config = dataclasses.replace(config, workers=args.workers)
        if args.no_progress:
            config = dataclasses.replace(config, progress=False)
        try:
            run_ingest(config, IngestOutputs(manifest=args.output, report=args.report, gx_dir=args.gx_dir))
        except DataValidationError as exc:
            raise StageFailed(f"the ingested manifest failed validation (report: {args.report}): {exc}") from exc

    return run_stage("ingest", work, (SourceError, S3AccessError))


if __name__ == "__main__":
    sys.exit(main())
