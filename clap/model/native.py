"""Our model format: a folder with ``config.json`` (``format: clap-pipeline`` + the :class:`ClapConfig`
with fully resolved presets), ``model.safetensors`` and ``tokenizer/``. :func:`save_model` writes it,
:func:`load_native_folder` reads it back (strictly: every tensor of the model, nothing else).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from clap.model.model import ClapConfig, ClapModel
from clap.model.text_encoders import ModelNotFoundLocally
from clap.model.weights import CheckpointError, load_strict

logger = logging.getLogger(__name__)

FORMAT = "clap-pipeline"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"


def read_folder_config(path: Path) -> dict[str, Any]:
    """A model folder's ``config.json`` (ours or transformers'), or {} when it has none."""
    config_file = path / CONFIG_FILE
    return json.loads(config_file.read_text()) if config_file.is_file() else {}


def save_model(model: ClapModel, out_dir: str | Path) -> Path:
    """Write ``model`` as ``out_dir/{config.json, model.safetensors, tokenizer/}``; returns ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, **model.resolved_config().to_dict()}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    try:
        model.text_encoder.tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
    except ModelNotFoundLocally as exc:
        logger.warning("%s: saved without a tokenizer (%s)", out, exc)
    logger.info("saved model to %s", out)
    return out


def load_native_folder(path: Path, meta: dict[str, Any], allow_download: bool, tokenizer: str | None) -> ClapModel:
    version = meta.pop("format_version", None)
    meta.pop("format", None)
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: model format version {version!r}; this code reads version {FORMAT_VERSION}")
    config = ClapConfig.from_dict(meta)
    config.allow_download = allow_download or config.allow_download
    if tokenizer is not None:
        config.tokenizer = str(tokenizer)
    elif (path / TOKENIZER_DIR).is_dir():
        config.tokenizer = str(path / TOKENIZER_DIR)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{path}: {WEIGHTS_FILE} is missing; re-save the model with clap.model.native.save_model")
    model = ClapModel(config)
    load_strict(model, load_file(str(weights)), str(weights))
    return model
