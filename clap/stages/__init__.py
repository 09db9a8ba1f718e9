"""One module per DVC stage: ``python -m clap.stages.<stage>`` (see dvc.yaml).

dvc.yaml runs ``python``, whichever comes first on PATH. Started by an interpreter without the
project's dependencies (the system python, another venv), a stage would fail deep inside an import;
this package stops it first, with one line that names the fix. Only ``importlib.util.find_spec``
runs here (nothing is imported), so the check costs a few milliseconds.
"""

from __future__ import annotations

import importlib.util
import sys

#: Third-party packages every stage imports (directly or through clap/); the first missing one is named.
REQUIRED_MODULES = ("yaml", "numpy", "soundfile", "torch")

#: Exit status of a stage started by the wrong interpreter (argparse's status for a usage error).
WRONG_INTERPRETER_EXIT = 2


def missing_dependency(modules: tuple[str, ...] = REQUIRED_MODULES) -> str | None:
    """The first of ``modules`` this interpreter cannot import, or None."""
    for name in modules:
        if importlib.util.find_spec(name) is None:
            return name
    return None


def require_project_interpreter() -> None:
    """Exit with one line naming the fix when this interpreter lacks the project's dependencies."""
    missing = missing_dependency()
    if missing is not None:
        print(
            f"clap: {sys.executable} lacks the project's dependencies (no module '{missing}'); "
            "run 'make setup' then 'source .venv/bin/activate' and re-run",
            file=sys.stderr,
        )
        raise SystemExit(WRONG_INTERPRETER_EXIT)


require_project_interpreter()
