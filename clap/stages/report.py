"""DVC stage `report`: reports/report.md from the stages' metrics and the experiments table."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from clap.report.report import build_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default=".", help="repository root")
    parser.add_argument("--out", default="reports/report.md")
    parser.add_argument("--no-experiments", action="store_true", help="skip `dvc exp show`")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build_report(Path(args.root), with_experiments=not args.no_experiments))
    logging.getLogger(__name__).info("wrote %s", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
