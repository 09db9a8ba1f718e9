"""The two-tower CLAP model: audio tower + text tower, each projected to a shared, L2-normalised space.

    features [B, C, 1001, 64] -> audio encoder -> [B, d_a] -> Linear(d_a, 512) -> ReLU -> Linear(512, 512) -> L2
    tokens   [B, 77]          -> text encoder  -> [B, d_t] -> Linear(d_t, 512) -> ReLU -> Linear(512, 512) -> L2

plus the learnable temperatures ``logit_scale_a`` (used by the loss) and ``logit_scale_t`` (kept for
checkpoint compatibility), both ln(1/0.07) at init and clamped to [0, ln 100] after each step.
Module names mirror transformers' ``ClapModel`` (``audio_projection.linear1`` ...), which keeps
checkpoint conversion a matter of prefixes.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clap.model.audio_encoders import build_audio_encoder
from clap.model.text_encoders import TextEncoder, build_text_encoder
from clap.params import config_from_mapping

logger = logging.getLogger(__name__)

#: ln(1 / 0.07): the CLIP/CLAP initial temperature.
LOGIT_SCALE_INIT = math.log(1 / 0.07)
#: ln(100): the largest logit scale allowed (scale = exp(logit_scale) <= 100).
LOGIT_SCALE_MAX = math.log(100.0)


@dataclass
class ClapConfig:
    """Everything needed to build a :class:`ClapModel` (JSON-safe via :meth:`to_dict`).

    ``audio_encoder`` / ``text_encoder`` are preset names (:mod:`clap.model.presets`);
    ``*_overrides`` are merged over the preset (a saved model stores the fully resolved presets
    there). ``audio_pretrained``: initial audio tower weights (a LAION .pt, an AudioSet HTS-AT/PANN
    checkpoint, a transformers CLAP folder or one of our model folders). ``text_pretrained``: a
    transformers folder or hub name replacing the preset's source; ``text_random_init`` skips
    pretrained text weights. ``tokenizer`` replaces the preset's tokenizer. Frozen towers get no
    gradients and stay in eval mode (fixed batch-norm statistics, no dropout) while training.
    """

    audio_encoder: str = "htsat-cpu"
    text_encoder: str = "minilm"
    fusion: bool = False
    embed_dim: int = 512
    audio_overrides: dict[str, Any] = field(default_factory=dict)
    text_overrides: dict[str, Any] = field(default_factory=dict)
    audio_pretrained: str | None = None
    text_pretrained: str | None = None
    text_random_init: bool = False
    tokenizer: str | None = None
    freeze_audio: bool = False
    freeze_text: bool = False
    allow_download: bool = False
    max_text_length: int = 77
    logit_scale_init: float = LOGIT_SCALE_INIT
    logit_scale_max: float = LOGIT_SCALE_MAX

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (``from_dict`` inverts it)."""
        return copy.deepcopy(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClapConfig:
        """Build from a dict; unknown keys are an error naming them."""
        return config_from_mapping(cls, copy.deepcopy(data), "ClapConfig")


@dataclass
class ClapOutput:
    """``audio_embeds`` / ``text_embeds``: [B, embed_dim], unit length; ``logit_scale`` = exp(logit_scale_a)."""

    audio_embeds: Tensor
    text_embeds: Tensor
    logit_scale: Tensor
    logit_scale_t: Tensor


class ProjectionHead(nn.Module):
    """Linear(d, 512) -> ReLU -> Linear(512, 512) (the reference's audio/text projection)."""

    def __init__(self, in_dim: int, embed_dim: int = 512) -> None:
        super().__init__()
        self.linear1 = nn.Linear(in_dim, embed_dim)
        self.activation = nn.ReLU()
        self.linear2 = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.activation(self.linear1(x)))


def build_text_tower(config: ClapConfig, *, pretrained: bool) -> TextEncoder:
    """The text tower ``config`` names: random weights, or (``pretrained``) the preset's transformers
    weights / ``text_pretrained`` unless ``text_random_init`` (a transformers tower is built by loading)."""
    return build_text_encoder(
        config.text_encoder,
        config.text_overrides,
        load_weights=pretrained and not config.text_random_init,
        weights=config.text_pretrained,
        tokenizer=config.tokenizer,
        allow_download=config.allow_download,
        max_length=config.max_text_length,
    )


class ClapModel(nn.Module):
    """Contrastive language-audio model (see the module docstring).

    The constructor only builds: every part it makes has random weights. Pretrained sources named in
    the config (``audio_pretrained``, the text preset's weights) and saved models are loaded by
    :func:`clap.model.factory.create_model`, which builds the towers, loads them and passes them in
    (``audio_encoder`` / ``text_encoder``).
    """

    def __init__(
        self, config: ClapConfig | None = None, *, audio_encoder: nn.Module | None = None,
        text_encoder: TextEncoder | None = None,
    ) -> None:
        super().__init__()
        config = config or ClapConfig()
        self.config = config
        if audio_encoder is None:
            audio_encoder = build_audio_encoder(config.audio_encoder, config.audio_overrides, fusion=config.fusion)
        self.audio_encoder = audio_encoder
        self.text_encoder = text_encoder if text_encoder is not None else build_text_tower(config, pretrained=False)
        self.audio_projection = ProjectionHead(self.audio_encoder.output_dim, config.embed_dim)
        self.text_projection = ProjectionHead(self.text_encoder.output_dim, config.embed_dim)
        self.logit_scale_a = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        self.logit_scale_t = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        for tower, frozen in ((self.audio_encoder, config.freeze_audio), (self.text_encoder, config.freeze_text)):
            tower.requires_grad_(not frozen)
        self.train(self.training)

    # -- embeddings -------------------------------------------------------------------------------
    def encode_audio(self, input_features: Tensor, is_longer: Tensor | None = None) -> Tensor:
        """Unit-length audio embeddings [B, embed_dim] of features [B, C, 1001, 64] (C = 4 with fusion)."""
        if is_longer is None:
            is_longer = torch.zeros(input_features.shape[0], dtype=torch.bool, device=input_features.device)
        return F.normalize(self.audio_projection(self.audio_encoder(input_features, is_longer)), dim=-1)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Unit-length text embeddings [B, embed_dim] of token ids [B, L] (see :meth:`tokenize`)."""
        return F.normalize(self.text_projection(self.text_encoder(input_ids, attention_mask)), dim=-1)

    def tokenize(self, texts: list[str], padding: str = "max_length") -> dict[str, Tensor]:
        """The text tower's tokenizer, truncated to ``max_text_length`` (77) tokens and padded to it
        (or, ``padding="longest"``, to the longest text) (CPU tensors)."""
        return self.text_encoder.tokenize(texts, padding=padding)

    def forward(
        self, input_features: Tensor, is_longer: Tensor | None, input_ids: Tensor, attention_mask: Tensor | None = None
    ) -> ClapOutput:
        return ClapOutput(
            audio_embeds=self.encode_audio(input_features, is_longer),
            text_embeds=self.encode_text(input_ids, attention_mask),
            logit_scale=self.logit_scale_a.exp(),
            logit_scale_t=self.logit_scale_t.exp(),
        )

    # -- training helpers -------------------------------------------------------------------------
    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Keep both temperatures in [0, ln 100] (call after each optimiser step)."""
        self.logit_scale_a.clamp_(0.0, self.config.logit_scale_max)
        self.logit_scale_t.clamp_(0.0, self.config.logit_scale_max)

    def train(self, mode: bool = True) -> ClapModel:
        super().train(mode)
        if self.config.freeze_audio:
            self.audio_encoder.eval()
        if self.config.freeze_text:
            self.text_encoder.eval()
        return self

    @property
    def fusion(self) -> bool:
        return bool(self.config.fusion)

    @property
    def device(self) -> torch.device:
        return self.logit_scale_a.device

    def resolved_config(self) -> ClapConfig:
        """The config with both presets fully resolved, as a saved model stores it: it rebuilds this
        architecture without the presets' sources (pretrained paths are dropped; the weights are saved)."""
        return dataclasses.replace(
            self.config,
            audio_overrides=copy.deepcopy(self.audio_encoder.config),
            text_overrides=copy.deepcopy(self.text_encoder.spec),
            audio_pretrained=None,
            text_pretrained=None,
        )
