"""DVC stage `normalize`: data/manifest/ingest.jsonl -> 48 kHz mono FLACs + data/manifest/normalized.jsonl.

    python -m clap.stages.normalize [--params params.yaml]

Also writes reports/data/quarantine.csv, reports/data/normalize.json and the GX result under
reports/data/gx/normalize/. Exits 1 with a message naming the cause when too many inputs are bad
or the written set fails validation.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from clap.data.normalize import NormalizeConfig, NormalizeError, NormalizeOutputs, normalize_manifest
from clap.data.validation import DataValidationError
from clap.params import load_params, section
from clap.stages.common import StageFailed, run_stage, stage_parser


def main(argv: list[str] | None = None) -> int:
    defaults = NormalizeOutputs()
    parser = stage_parser("normalize", __doc__, progress=True)
    parser.add_argument("--input", type=Path, default=Path("data/manifest/ingest.jsonl"))
    parser.add_argument("--output", type=Path, default=defaults.manifest)
    parser.add_argument("--audio-root", type=Path, default=defaults.audio_root)
    parser.add_argument("--quarantine", type=Path, default=defaults.quarantine)
    parser.add_argument("--report", type=Path, default=defaults.report)
    parser.add_argument("--gx-dir", type=Path, default=defaults.gx_dir)
    parser.add_argument("--workers", type=int, default=None, help="override normalize.workers")
    args = parser.parse_args(argv)

    def work() -> None:
        cfg = NormalizeConfig.from_params(section(load_params(args.params), "normalize"))
        if args.workers is not None:
            cfg = dataclasses.replace(cfg, workers=args.workers)
        outputs = NormalizeOutputs(manifest=args.output, audio_root=args.audio_root, quarantine=args.quarantine,
                                   report=args.report, gx_dir=args.gx_dir)
        try:
            normalize_manifest(args.input, outputs, cfg, progress=not args.no_progress)
        except DataValidationError as exc:
            raise StageFailed(f"the normalised set failed validation: {exc}") from exc

    return run_stage("normalize", work, (NormalizeError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
