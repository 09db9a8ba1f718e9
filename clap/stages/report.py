"""DVC stage `report`: reports/report.md from the stages' metrics and the experiments table."""

from __future__ import annotations

import logging
from pathlib import Path

from clap.report.report import build_report
from clap.stages.common import run_stage, stage_parser


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("report", __doc__, params=False)
    parser.add_argument("--root", default=".", help="repository root")
    parser.add_argument("--out", default="reports/report.md")
    parser.add_argument("--no-experiments", action="store_true", help="skip `dvc exp show`")
    args = parser.parse_args(argv)

    def work() -> None:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(build_report(Path(args.root), with_experiments=not args.no_experiments))
        logging.getLogger(__name__).info("wrote %s", out)

    return run_stage("report", work, timed=True)


if __name__ == "__main__":
    raise SystemExit(main())
