"""DVC stage `normalize`: data/manifest/ingest.jsonl -> 48 kHz mono FLACs + data/manifest/normalized.jsonl.

    python -m clap.stages.normalize [--params params.yaml]

Also writes reports/data/quarantine.csv, reports/data/normalize.json and the GX result under
reports/data/gx/normalize/. Exits 1 with a message naming the cause when too many inputs are bad
or the written set fails validation.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from clap.data.normalize import NormalizeConfig, NormalizeError, NormalizeOutputs, normalize_manifest
from clap.data.validation import DataValidationError
from clap.params import ParamsError, load_params, section

log = logging.getLogger("clap.stages.normalize")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = NormalizeOutputs()
    parser = argparse.ArgumentParser(prog="python -m clap.stages.normalize", description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--input", type=Path, default=Path("data/manifest/ingest.jsonl"))
    parser.add_argument("--output", type=Path, default=defaults.manifest)
    parser.add_argument("--audio-root", type=Path, default=defaults.audio_root)
    parser.add_argument("--quarantine", type=Path, default=defaults.quarantine)
    parser.add_argument("--report", type=Path, default=defaults.report)
    parser.add_argument("--gx-dir", type=Path, default=defaults.gx_dir)
    parser.add_argument("--workers", type=int, default=None, help="override normalize.workers")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        cfg = NormalizeConfig.from_params(section(load_params(args.params), "normalize"))
        if args.workers is not None:
            cfg = dataclasses.replace(cfg, workers=args.workers)
        outputs = NormalizeOutputs(
            manifest=args.output,
            audio_root=args.audio_root,
            quarantine=args.quarantine,
            report=args.report,
            gx_dir=args.gx_dir,
        )
        normalize_manifest(args.input, outputs, cfg, progress=not args.no_progress)
    except DataValidationError as exc:
        log.error("the normalised set failed validation: %s", exc)
        return 1
    except (NormalizeError, ParamsError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
