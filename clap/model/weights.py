"""Weights in and out of modules: torch ``.pt``/``.ckpt``/``.pth``/``.bin`` files read without running
pickled code, and strict loading into a module.

Every file is read with ``torch.load(weights_only=True)``: torch's restricted unpickler, which builds
tensors, containers and numbers and refuses any other Python global. The released LAION-CLAP files
also hold their trainer's state beside the weights: an ``optimizer`` state dict whose learning rates
are numpy float64 (its cosine schedule computes them with numpy), numpy integers such as the epoch,
and sometimes a ``scaler`` (AMP GradScaler) state. For those, exactly the numpy reconstructors such
values need are allowed (:data:`NUMPY_SCALAR_GLOBALS`: numpy scalars, dtypes, arrays), through
``torch.serialization.safe_globals`` for the duration of one load only; every other global is still
refused. Only the state dict is returned: optimizer and scaler state are dropped.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

#: Top-level entries of a training checkpoint that are trainer state, not weights (dropped).
TRAINER_STATE_KEYS = ("optimizer", "scaler", "lr_scheduler", "scheduler", "epoch", "name", "step", "args")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit; the message names the file and the fix."""


class UnsafeCheckpointError(CheckpointError):
    """A torch file holding Python objects a weights file never needs; it was not unpickled further."""


def _numpy_dtype_classes() -> list[type]:
    """numpy's per-dtype classes (``numpy.dtypes.Float64DType`` ...) of the bool and numeric types."""
    return sorted({type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"}, key=lambda cls: cls.__name__)


def _numpy_scalar_globals() -> list[Callable[..., Any] | type | tuple[Callable[..., Any] | type, str]]:
    """The numpy globals a pickled numpy scalar/array refers to, under numpy 2's module names and the
    ``numpy.core`` names files pickled with numpy 1.x carry."""
    from numpy._core import multiarray  # numpy >= 2 (the project pins numpy 2)

    allowed: list[Callable[..., Any] | type | tuple[Callable[..., Any] | type, str]] = [np.dtype, np.ndarray]
    for func in (multiarray.scalar, multiarray._reconstruct):
        for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
            allowed.append((func, f"{module}.{func.__name__}"))
    allowed.extend(_numpy_dtype_classes())
    return allowed


#: Globals allowed on top of torch's weights-only defaults while a checkpoint is read.
NUMPY_SCALAR_GLOBALS = _numpy_scalar_globals()

_GLOBAL_IN_ERROR = re.compile(r"GLOBAL ([\w.]+)")


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` (memory-mapped when the file allows) with numpy scalars,
    dtypes and arrays allowed; raises :class:`UnsafeCheckpointError` naming any other global."""
    path = Path(path)
    with torch.serialization.safe_globals(NUMPY_SCALAR_GLOBALS):
        try:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) file
        except Exception as exc:
            found = _GLOBAL_IN_ERROR.search(str(exc))
            if found or isinstance(exc, torch.serialization.pickle.UnpicklingError):
                what = f"the Python global '{found.group(1)}'" if found else "pickled Python objects"
                raise UnsafeCheckpointError(
                    f"{path}: refused: it holds {what}, which is neither a tensor, a number nor a numpy "
                    "value; weights files never need one and unpickling it could run code. Nothing was "
                    "executed. If you trust the file, save just its state dict again with torch.save"
                ) from exc
            raise CheckpointError(f"{path}: cannot be read as a torch checkpoint ({type(exc).__name__}: {exc})") from exc


def read_torch_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The state dict in a torch file (its ``state_dict`` or ``model`` entry, or the file itself),
    DDP's ``module.`` prefix removed; trainer state beside it (optimizer, scaler, epoch) is dropped."""
    path = Path(path)
    obj = safe_torch_load(path)
    if isinstance(obj, dict):
        dropped = sorted(k for k in obj if k in TRAINER_STATE_KEYS or str(k).endswith("_optimizer"))
        if dropped:
            logger.debug("%s: trainer state not loaded: %s", path, dropped)
        if isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        elif isinstance(obj.get("model"), dict):
            obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: no state dict found (expected a dict of tensors, or one under 'state_dict')")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def load_strict(module: nn.Module, state: dict[str, Tensor], source: str, renamed: dict[str, str] | None = None) -> None:
    """``load_state_dict`` that fails on any missing or unexpected key, listing them (by their names in
    ``source`` when ``renamed`` maps ours -> theirs)."""
    expected = set(module.state_dict())
    unexpected = sorted((renamed or {}).get(k, k) for k in set(state) - expected)
    missing = sorted(set(expected) - set(state))
    if unexpected or missing:
        raise CheckpointError(
            f"{source}: weights do not fit the model: {len(unexpected)} unexpected key(s) {unexpected[:20]}"
            f"{' ...' if len(unexpected) > 20 else ''} and {len(missing)} missing key(s) {missing[:20]}"
            f"{' ...' if len(missing) > 20 else ''}"
        )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"{source}: weights do not fit the model ({exc})") from exc
