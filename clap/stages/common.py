"""What every stage's entry point shares: its command line (``--params``, ``--no-progress``), the
log format, and expected errors as one log line and exit status 1 instead of a traceback."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Callable

from clap.params import ParamsError

#: Log line formats: data stages print ``LEVEL logger: message``; long-running ones add the time.
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
TIMED_LOG_FORMAT = "%(asctime)s " + LOG_FORMAT


class StageFailed(RuntimeError):
    """A stage's own verdict (e.g. its data failed validation), reported as one line."""


def stage_parser(
    name: str, doc: str | None, *, params: bool = True, progress: bool = False, **kwargs: Any
) -> argparse.ArgumentParser:
    """The parser of ``python -m clap.stages.<name>``: the module doc's first line, ``--params`` (unless
    the stage reads none), and ``--no-progress`` when it shows progress bars; ``kwargs`` go to ArgumentParser."""
    parser = argparse.ArgumentParser(prog=f"python -m clap.stages.{name}", description=(doc or name).splitlines()[0],
                                     **kwargs)
    if params:
        parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: params.yaml)")
    if progress:
        parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    return parser


def run_stage(
    name: str, work: Callable[[], int | None], errors: tuple[type[BaseException], ...] = (), *, timed: bool = False
) -> int:
    """Run ``work`` with logging set up (``timed``: lines start with the time); ParamsError,
    FileNotFoundError, StageFailed and ``errors`` end it with one line on the log
    (``ERROR clap.stages.<name>: ...``) and exit status 1."""
    logging.basicConfig(level=logging.INFO, format=TIMED_LOG_FORMAT if timed else LOG_FORMAT)
    try:
        status = work()
    except (ParamsError, FileNotFoundError, StageFailed, *errors) as exc:
        logging.getLogger(f"clap.stages.{name}").error("%s", exc)
        return 1
    return int(status or 0)
