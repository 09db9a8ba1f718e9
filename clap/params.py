"""Reading params.yaml: the one place stages get their settings from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DEFAULT_PARAMS = Path("params.yaml")


class ParamsError(ValueError):
    """A params.yaml value is missing or malformed."""


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Load params.yaml as a plain dict; a missing file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found (run from the repository root or pass --params)")
    with path.open() as fh:
        params = yaml.safe_load(fh) or {}
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level, got {type(params).__name__}")
    return params


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    """One stage's group of params (e.g. ``normalize``); missing groups are an error naming the key."""
    value = params.get(name)
    if not isinstance(value, dict):
        raise ParamsError(f"params.yaml: section '{name}' is missing or not a mapping")
    return value
