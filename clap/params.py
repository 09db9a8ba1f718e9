"""Reading params.yaml: the one place stages get their settings from.

Every section becomes a dataclass through :func:`load_section` (a nested mapping through
:func:`config_from_mapping`): keys are checked against the dataclass's fields (an unknown key is one
line naming the section, the key, a close match and the known keys), values are converted to the
fields' types (``1`` -> ``1.0`` for a float, ``[0.9, 0.999]`` -> a tuple, ``"1e-4"`` -> ``0.0001``)
or refused with the key and the expected type, and the dataclass's own ``__post_init__`` checks the
values' ranges.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

import yaml

DEFAULT_PARAMS = Path("params.yaml")

#: Top-level params that experiments flip with -S (the `train` section takes them as its own).
TOP_LEVEL_SWITCHES = ("audio_encoder", "text_encoder", "fusion", "caption_augmentation", "train_sets", "seed")
#: The stage sections of params.yaml.
SECTIONS = ("corpus", "sources", "ingest", "normalize", "captions", "shards", "train", "eval_retrieval",
            "eval_zeroshot", "finetune")

T = TypeVar("T")
#: A converter for one key: the raw YAML value in, the field's value out (raises naming the problem).
Parser = Callable[[Any], Any]


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
    check_keys(params, (*TOP_LEVEL_SWITCHES, *SECTIONS), str(path))  # a typo like `fusoin:` is an error
    return params


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    """One stage's group of params (e.g. ``normalize``); missing groups are an error naming the key."""
    value = params.get(name)
    if not isinstance(value, dict):
        raise ParamsError(f"params.yaml: section '{name}' is missing or not a mapping")
    return value


def check_keys(
    values: Mapping[str, Any], known: Iterable[str], where: str, error: type[Exception] = ParamsError
) -> None:
    """Raise ``error`` when ``values`` holds keys outside ``known``: one line naming ``where`` (e.g.
    ``params.yaml train``), the unknown keys, the closest known key of each and every known key."""
    known = sorted(known)
    unknown = sorted(set(values) - set(known), key=str)
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), known, n=1)
        if close:
            hints.append(f"'{close[0]}' for '{key}'")
    hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
    raise error(f"{where}: unknown keys {unknown}{hint}; known: {known}")


def load_section(
    params: Mapping[str, Any],
    name: str,
    cls: type[T],
    *,
    required: bool = False,
    fixed: Mapping[str, Any] | None = None,
    fixed_at: str = "another part of params.yaml",
    defaults: Mapping[str, Any] | None = None,
    ignore: Iterable[str] = (),
    parsers: Mapping[str, Parser] | None = None,
    error: type[Exception] = ParamsError,
) -> T:
    """The dataclass ``cls`` from params.yaml's section ``name`` (see :func:`config_from_mapping`).

    ``required``: a missing section is an error (otherwise it means all defaults). ``fixed``: field
    values taken from outside the section (the top-level switches; ``fixed_at`` says where); such a
    key inside the section is refused, so a value is never silently overridden. ``defaults``: values
    for keys the section leaves out. ``ignore``: keys another loader reads from the same section.
    """
    raw = params.get(name)
    if raw is None and not required:
        raw = {}
    if not isinstance(raw, Mapping):
        state = "missing" if raw is None else f"not a mapping (got {type(raw).__name__})"
        raise error(f"params.yaml: section '{name}' is {state}")
    where = f"params.yaml {name}"
    fixed = dict(fixed or {})
    clash = sorted(set(raw) & set(fixed))
    if clash:
        raise error(f"{where}: {clash} belong to {fixed_at}; remove {'them' if len(clash) > 1 else 'it'} from '{name}'")
    ignore = set(ignore)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    check_keys(raw, (fields - set(fixed)) | ignore, where, error)
    values = {**(defaults or {}), **{k: v for k, v in raw.items() if k not in ignore}}
    return config_from_mapping(cls, values, where, parsers=parsers, error=error, fixed=fixed, fixed_at=fixed_at)


def config_from_mapping(
    cls: type[T],
    values: Any,
    where: str,
    *,
    parsers: Mapping[str, Parser] | None = None,
    error: type[Exception] = ParamsError,
    fixed: Mapping[str, Any] | None = None,
    fixed_at: str = "outside the section",
    prefix: str = "",
) -> T:
    """``cls(**values)`` with unknown keys refused and every value converted to its field's type.

    ``where`` names the mapping in messages (``params.yaml eval_zeroshot.sets 'esc'``). ``parsers``
    convert chosen keys themselves (shorthands such as ``folds: "1,2"``); ``fixed`` values are passed
    (converted, ``fixed_at`` says where they come from) and are not keys of the mapping. ``prefix``:
    the mapping's keys are the fields' names with this prefix (``s3_`` + ``max_attempts``).
    """
    if not isinstance(values, Mapping):
        raise error(f"{where}: expected a mapping of keys to values, got {values!r}")
    fixed = dict(fixed or {})
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    check_keys(values, {prefix + name for name in names if name not in fixed}, where, error)
    hints = typing.get_type_hints(cls)
    parsers = parsers or {}
    try:
        fixed = {key: convert(value, hints[key], f"{key} (from {fixed_at})") for key, value in fixed.items()}
    except ValueError as exc:
        raise error(str(exc)) from exc
    converted: dict[str, Any] = {}
    for key, value in values.items():
        label = f"{where}.{key}"
        try:
            name = key[len(prefix):]
            converted[name] = parsers[name](value) if name in parsers else convert(value, hints[name], label)
        except (ValueError, TypeError) as exc:
            if isinstance(exc, error):
                raise
            message = str(exc) if label in str(exc) else f"{label}: {exc}"
            raise error(message) from exc
    return cls(**converted, **fixed)


# ------------------------------------------------------------------------------- type conversion


class _Mismatch(ValueError):
    """A value that does not fit a type (the message says what was expected)."""


def convert(value: Any, hint: Any, label: str) -> Any:
    """``value`` as the type ``hint`` (int, float, bool, str, Path, tuple/list/dict of those, unions,
    nested dataclasses); a value that does not fit raises ValueError naming ``label`` and the type."""
    try:
        return _convert(value, hint, label, strict=True)
    except _Mismatch:
        pass
    try:
        return _convert(value, hint, label, strict=False)
    except _Mismatch as exc:
        raise ValueError(f"{label}: expected {_describe(hint)}, got {value!r}{exc.args[0] if exc.args else ''}") from None


def _convert(value: Any, hint: Any, label: str, strict: bool) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        for pass_strict in ((True,) if strict else (True, False)):
            for arm in arms:
                try:
                    return _convert(value, arm, label, pass_strict)
                except _Mismatch:
                    continue
        raise _Mismatch()
    if hint is type(None):
        if value is None:
            return None
        raise _Mismatch()
    if origin in (tuple, list):
        items = value if isinstance(value, (list, tuple)) else None
        if items is None:
            if strict or isinstance(value, (Mapping, bytes)) or value is None:
                raise _Mismatch()
            items = [value]  # a single value for a list: a list of one
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(items) != len(args):
                raise _Mismatch(f" ({len(items)} items, need {len(args)})")
            return tuple(_convert(v, a, f"{label}[{i}]", strict) for i, (v, a) in enumerate(zip(items, args)))
        item_hint = args[0] if args else Any
        out = [_convert(v, item_hint, f"{label}[{i}]", strict) for i, v in enumerate(items)]
        return tuple(out) if origin is tuple else out
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise _Mismatch()
        key_hint, value_hint = args if args else (Any, Any)
        return {
            _convert(k, key_hint, label, strict): _convert(v, value_hint, f"{label}.{k}", strict)
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise _Mismatch()
        return config_from_mapping(hint, value, label)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if not strict and isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise _Mismatch()
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if not strict and isinstance(value, float) and value.is_integer():
            return int(value)
        if not strict and isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise _Mismatch() from None
        raise _Mismatch()
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if not strict and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value.strip())
            except ValueError:
                raise _Mismatch() from None
        raise _Mismatch()
    if hint is str:
        if isinstance(value, str):
            return value
        if not strict and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _Mismatch()
    if hint is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise _Mismatch()
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise _Mismatch()


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        arms = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(arms) + (" or null" if type(None) in args else "")
    if origin in (tuple, list):
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
        return f"a list (each {_describe(args[0])})" if args else "a list"
    if origin is dict or hint is dict:
        return f"a mapping (each value {_describe(args[1])})" if args else "a mapping"
    if dataclasses.is_dataclass(hint):
        return f"a mapping ({hint.__name__})"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))
