"""The one way to make a model: build it from its config, then load weights into it.

    from clap.model.factory import create_model
    model = create_model(ClapConfig(audio_encoder="htsat-tiny", text_encoder="roberta-base"))  # presets
    model = create_model(pretrained="630k-audioset-best.pt", tokenizer="/models/roberta-base")  # a saved model

Saved models come in three formats, each with its own module: ours (:mod:`clap.model.native`), a
LAION-CLAP ``.pt`` (:mod:`clap.model.laion`) and a transformers CLAP folder (:mod:`clap.model.hf_interop`).
Each reads the architecture from the saved files, builds a random :class:`ClapModel` of it and loads
every tensor strictly. A config built from presets gets its towers' pretrained weights here too: the
text preset's transformers weights and ``audio_pretrained`` (:mod:`clap.model.audio_init`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from clap.model.audio_encoders import build_audio_encoder
from clap.model.audio_init import load_audio_encoder_weights
from clap.model.hf_interop import import_transformers_clap
from clap.model.laion import import_laion_checkpoint
from clap.model.model import ClapConfig, ClapModel, build_text_tower
from clap.model.native import CONFIG_FILE, FORMAT, load_native_folder, read_folder_config
from clap.model.weights import CheckpointError

logger = logging.getLogger(__name__)


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    allow_download: bool = False,
    *,
    tokenizer: str | None = None,
    text_overrides: dict[str, Any] | None = None,
) -> ClapModel:
    """A saved model (in eval mode): our model folder, a LAION-CLAP ``.pt`` or a transformers CLAP folder.

    ``allow_download``: let the tokenizer (e.g. roberta-base for LAION imports) come from the hub.
    ``tokenizer``: a tokenizer folder or name replacing the stored/default one. ``text_overrides``:
    LAION imports only (see :func:`clap.model.laion.import_laion_checkpoint`).
    """
    path = Path(path)
    if path.is_dir():
        meta = read_folder_config(path)
        if not meta:
            raise CheckpointError(f"{path}: no {CONFIG_FILE}; expected one of our model folders or a transformers CLAP folder")
        if meta.get("format") == FORMAT:
            model = load_native_folder(path, meta, allow_download, tokenizer)
        elif meta.get("model_type") == "clap":
            model = import_transformers_clap(path, tokenizer=tokenizer, allow_download=allow_download)
        else:
            raise CheckpointError(
                f"{path}/{CONFIG_FILE}: neither our format (format: {FORMAT}) nor a transformers CLAP config "
                f"(model_type: clap); got model_type {meta.get('model_type')!r}"
            )
    elif path.is_file():
        model = import_laion_checkpoint(path, tokenizer=tokenizer, text_overrides=text_overrides,
                                        allow_download=allow_download)
    else:
        raise CheckpointError(
            f"{path}: no such file or folder (expected a model folder, a LAION-CLAP .pt or a transformers CLAP folder)"
        )
    model.text_encoder.tokenizer_owner = path.name  # the missing-tokenizer error names the file
    return model.to(device).eval()


def create_model(
    config: ClapConfig | Mapping[str, Any] | None = None,
    pretrained: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    tokenizer: str | None = None,
    allow_download: bool = False,
    text_overrides: dict[str, Any] | None = None,
) -> ClapModel:
    """Build, then load.

    * ``create_model(config)``: the architecture the presets name (a :class:`ClapConfig` or its
      dict; default: ``ClapConfig()``), its towers started from the pretrained sources the config
      names (the text preset's weights unless ``text_random_init``; ``audio_pretrained``), in
      training mode.
    * ``create_model(pretrained=path)``: a saved model's architecture and weights, in eval mode
      (:func:`load_model`).
    * both: a training run started from a saved model: ``pretrained``'s architecture and weights,
      which must agree with ``config.fusion``; the config's ``freeze_audio`` / ``freeze_text`` apply.
    """
    if isinstance(config, Mapping):
        config = ClapConfig.from_dict(dict(config))
    if pretrained is not None:
        model = load_model(pretrained, device, allow_download or bool(config and config.allow_download),
                           tokenizer=tokenizer, text_overrides=text_overrides)
        if config is not None:
            _adopt_training_settings(model, config, pretrained)
        return model
    config = config or ClapConfig()
    if tokenizer is not None or allow_download:
        config = dataclasses.replace(config, tokenizer=tokenizer or config.tokenizer,
                                     allow_download=allow_download or config.allow_download)
    # Build order (audio, text, then ClapModel's projections) keeps the random init of every part
    # what it is for ClapModel(config) with the same seed.
    audio = build_audio_encoder(config.audio_encoder, config.audio_overrides, fusion=config.fusion)
    if config.audio_pretrained:
        load_audio_encoder_weights(audio, config.audio_pretrained)
    text = build_text_tower(config, pretrained=True)
    return ClapModel(config, audio_encoder=audio, text_encoder=text).to(device)


def _adopt_training_settings(model: ClapModel, config: ClapConfig, source: str | Path) -> None:
    if bool(model.config.fusion) != bool(config.fusion):
        raise ValueError(
            f"{source}: the checkpoint has fusion={model.config.fusion} but params say fusion={config.fusion}; "
            "set fusion to match the checkpoint"
        )
    model.config.freeze_audio, model.config.freeze_text = config.freeze_audio, config.freeze_text
    model.audio_encoder.requires_grad_(not config.freeze_audio)
    model.text_encoder.requires_grad_(not config.freeze_text)


#: The training settings (params.yaml's model keys) that make a :class:`ClapConfig`.
TRAINING_MODEL_KEYS = ("audio_encoder", "text_encoder", "fusion", "freeze_audio", "freeze_text", "audio_pretrained",
                       "text_pretrained", "allow_download")


def create_training_model(settings: Mapping[str, Any]) -> ClapModel:
    """The model a training run starts from: built from the presets in ``settings`` (the trainer's
    config: :data:`TRAINING_MODEL_KEYS`), or from ``settings["init_checkpoint"]`` when set."""
    config = ClapConfig(**{key: settings[key] for key in TRAINING_MODEL_KEYS})
    return create_model(config, pretrained=settings.get("init_checkpoint") or None)
