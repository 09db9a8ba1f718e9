"""Params overrides for DVC: nested mappings as dotted names, and the ``-S key=value`` arguments.

``dvc exp run -S`` parses each value with Hydra's override grammar, so a value must read back as
what it was: names and paths stay bare (``minilm``, ``/models/k2t-base``); any other string
(``true``, ``1e-4``, text with spaces, commas, braces, quotes, ``${...}``) is single-quoted with
Hydra's escapes; numbers, booleans and null are written as JSON; lists as ``[a, 'b c', 1]``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

#: Strings that Hydra reads back unchanged without quotes: names, dotted names, paths.
_BARE_STRING = re.compile(r"[A-Za-z_/][\w./-]*", re.ASCII)
#: Words Hydra reads as booleans, null or floats, in any case.
_HYDRA_WORDS = {"true", "false", "null", "nan", "inf"}


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"epochs": 2}, "fusion": True}`` -> ``{"train.epochs": 2, "fusion": True}``.

    Already dotted keys stay as they are; an empty mapping is a value of its own.
    """
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def dotted_keys(values: Mapping[str, Any]) -> set[str]:
    """Every key ``-S`` can address in ``values``: the leaves and each section above them."""
    keys: set[str] = set()
    for name in flatten(values):
        parts = name.split(".")
        keys.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return keys


def _quoted(text: str) -> str:
    """A Hydra single-quoted string: quotes, interpolations and the backslashes before them escaped."""
    escaped = re.sub(r"(\\*)('|\$\{|$)", lambda m: m[1] * 2 + ("\\" + m[2] if m[2] else ""), text)
    return f"'{escaped}'"


def format_value(value: Any) -> str:
    """One value as Hydra reads it back unchanged (see the module's docstring)."""
    if isinstance(value, str):
        if _BARE_STRING.fullmatch(value) and value.lower() not in _HYDRA_WORDS:
            return value
        return _quoted(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{key}: {format_value(item)}" for key, item in value.items()) + "}"
    return json.dumps(value)  # numbers, booleans, null


def set_values(overrides: Mapping[str, Any]) -> list[str]:
    """``{"fusion": True, "train": {"epochs": 2}}`` -> ``["fusion=true", "train.epochs=2"]`` (what ``-S`` takes)."""
    values: list[str] = []
    for key, value in flatten(overrides).items():
        if not key or "=" in key or key.startswith(".") or key.endswith("."):
            raise ValueError(f"overrides: {key!r} is not a params key (use dotted names like 'train.epochs')")
        values.append(f"{key}={format_value(value)}")
    return values


def set_args(overrides: Mapping[str, Any]) -> list[str]:
    """``{"fusion": True, "train": {"epochs": 2}}`` -> ``["-S", "fusion=true", "-S", "train.epochs=2"]``."""
    return [arg for value in set_values(overrides) for arg in ("-S", value)]
