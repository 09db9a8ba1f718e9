"""DVC stage `ingest`: params.yaml sources -> data/manifest/ingest.jsonl.

    python -m clap.stages.ingest [--params params.yaml]

Also writes reports/data/ingest.json (counts per source and split, train/eval overlap dropped,
unreadable files) and the GX result and data docs under reports/data/gx/ingest/. Exits 1 with the
failed expectations listed when the manifest fails validation, and with a message naming the
source and the fix when a source cannot be read.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from clap.data.ingest import IngestConfig, IngestOutputs, run_ingest
from clap.data.s3 import S3AccessError
from clap.data.sources import SourceError
from clap.data.validation import DataValidationError
from clap.params import ParamsError, load_params

log = logging.getLogger("clap.stages.ingest")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = IngestOutputs()
    parser = argparse.ArgumentParser(prog="python -m clap.stages.ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--output", type=Path, default=defaults.manifest)
    parser.add_argument("--report", type=Path, default=defaults.report)
    parser.add_argument("--gx-dir", type=Path, default=defaults.gx_dir)
    parser.add_argument("--workers", type=int, default=None, help="override ingest.workers")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        config = IngestConfig.from_params(load_params(args.params))
        if args.workers is not None:
            config = dataclasses.replace(config, workers=args.workers)
        if args.no_progress:
            config = dataclasses.replace(config, progress=False)
        outputs = IngestOutputs(manifest=args.output, report=args.report, gx_dir=args.gx_dir)
        run_ingest(config, outputs)
    except DataValidationError as exc:
        log.error("the ingested manifest failed validation (report: %s): %s", args.report, exc)
        return 1
    except (SourceError, S3AccessError, ParamsError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
