"""Audio towers: log-mel features [B, C, 1001, 64] -> one embedding per clip [B, width].

* HTS-AT comes from transformers (``ClapAudioModel``: the Swin layers, the mel-to-image folding and
  the ``aff_2d`` feature fusion of the reference); the clip embedding is its pooled output (average
  of the last stage's tokens).
* PANN CNN14/CNN10 is :class:`clap.model.pann.PannCnn` (with the reference's ``aff_2d`` fusion after
  its first conv block).

Both apply the reference's training-time SpecAugment (two stripes of up to 64 frames and two of up
to 8 mel bins set to zero, after the input batch norm) when their preset says ``spec_augment``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torchaudio
from torch import Tensor, nn
from transformers import ClapAudioConfig, ClapAudioModel

from clap.model.pann import pann_from_config
from clap.model.presets import audio_preset

logger = logging.getLogger(__name__)

#: Keys of an audio preset that are ours, not the encoder family's.
_OWN_KEYS = ("family", "spec_augment")


class SpecAugment(nn.Module):
    """Drop stripes of time frames and mel bins of ``x [B, C, frames, mel_bins]`` in training.

    Each item gets its own stripes (widths uniform in [0, width]), shared by all of its channels
    (the fusion views), as in the reference; identity in eval mode.
    """

    def __init__(self, time_width: int = 64, time_stripes: int = 2, freq_width: int = 8, freq_stripes: int = 2) -> None:
        super().__init__()
        self.time_width, self.time_stripes = time_width, time_stripes
        self.freq_width, self.freq_stripes = freq_width, freq_stripes

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        batch, _, frames, bins = x.shape
        keep = torch.ones(batch, 1, frames, bins, device=x.device, dtype=x.dtype)
        for _ in range(self.time_stripes):
            keep = torchaudio.functional.mask_along_axis_iid(keep, self.time_width, 0.0, axis=2)
        for _ in range(self.freq_stripes):
            keep = torchaudio.functional.mask_along_axis_iid(keep, self.freq_width, 0.0, axis=3)
        return x * keep


def _check_features(name: str, input_features: Tensor, channels: int, mel_bins: int) -> None:
    if input_features.dim() != 4 or input_features.shape[1] != channels or input_features.shape[3] != mel_bins:
        kind = "fusion (4 channels: global + 3 local views)" if channels == 4 else "non-fusion (1 channel)"
        raise ValueError(
            f"audio encoder '{name}': expected {kind} features shaped [batch, {channels}, frames, {mel_bins}], "
            f"got {tuple(input_features.shape)}; build them with "
            f"clap.model.frontend.prepare_audio_features(..., fusion={channels == 4})"
        )


def fusion_flags(name: str, is_longer: Tensor | None, training: bool, device: torch.device) -> Tensor:
    """The ``is_longer`` flags [B] (bool) a fusion tower uses. As the reference does, the fusion branch
    trains on every batch: in training, with fewer than two long clips in the batch, short items (whose
    4 channels hold the same mel) go through it too. At least two, because the fusion block's batch
    norm cannot train on a single item (the reference's large batches nearly always hold several long
    clips). In eval mode the flags are used as given."""
    if is_longer is None:
        raise ValueError(f"audio encoder '{name}': a fusion model needs is_longer [batch] (bool)")
    is_longer = is_longer.reshape(-1).to(device=device, dtype=torch.bool)
    if training and len(is_longer) > 1 and int(is_longer.sum()) < 2:
        is_longer = is_longer.clone()
        short = torch.nonzero(~is_longer).reshape(-1)
        need = 2 - int(is_longer.sum())
        is_longer[short[torch.randperm(len(short))[:need]]] = True
    return is_longer


class HtsatAudioEncoder(nn.Module):
    """HTS-AT through ``transformers.ClapAudioModel``; ``output_dim`` = embed width x 2^(stages-1)."""

    def __init__(self, name: str, config: dict[str, Any], fusion: bool) -> None:
        super().__init__()
        self.name, self.config, self.fusion = name, config, fusion
        depths = list(config["depths"])
        self.output_dim = int(config["patch_embeds_hidden_size"]) * 2 ** (len(depths) - 1)
        hf_kwargs = {k: v for k, v in config.items() if k not in _OWN_KEYS}
        hf_kwargs.update(
            enable_fusion=fusion, fusion_type="aff_2d" if fusion else None, hidden_size=self.output_dim,
            num_hidden_layers=len(depths),
        )
        try:
            self.audio_config = ClapAudioConfig(**hf_kwargs)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"audio encoder '{name}': invalid HTS-AT settings {hf_kwargs} ({exc})") from exc
        self.htsat = ClapAudioModel(self.audio_config)
        self.spec_augment = SpecAugment() if config.get("spec_augment", False) else None
        if self.spec_augment is not None:
            # The reference masks right after its input batch norm (bn0), inside the encoder.
            self.htsat.audio_encoder.batch_norm.register_forward_hook(self._augment_after_batch_norm)

    def _augment_after_batch_norm(self, module: nn.Module, inputs: Any, output: Tensor) -> Tensor | None:
        if not self.training or self.spec_augment is None:
            return None
        # ClapAudioEncoder normalises [B, mel_bins, frames, C]; the stripes are drawn in [B, C, frames, mel_bins].
        return self.spec_augment(output.transpose(1, 3)).transpose(1, 3)

    def forward(self, input_features: Tensor, is_longer: Tensor | None = None) -> Tensor:
        _check_features(self.name, input_features, 4 if self.fusion else 1, int(self.config["num_mel_bins"]))
        if self.fusion:
            is_longer = fusion_flags(self.name, is_longer, self.training, input_features.device)
        out = self.htsat(input_features=input_features, is_longer=is_longer if self.fusion else None)
        return out.pooler_output


class PannAudioEncoder(nn.Module):
    """PANN CNN tower; ``output_dim`` = ``embed_dim`` of its ``fc1``."""

    def __init__(self, name: str, config: dict[str, Any], fusion: bool) -> None:
        super().__init__()
        self.name, self.config, self.fusion = name, config, fusion
        self.cnn = pann_from_config(config, fusion=fusion)
        self.output_dim = self.cnn.embed_dim
        self.spec_augment = SpecAugment() if config.get("spec_augment", False) else None

    def forward(self, input_features: Tensor, is_longer: Tensor | None = None) -> Tensor:
        _check_features(self.name, input_features, 4 if self.fusion else 1, int(self.config.get("num_mel_bins", 64)))
        if self.fusion:
            is_longer = fusion_flags(self.name, is_longer, self.training, input_features.device)
        x = self.cnn.normalize_mel(input_features)
        if self.spec_augment is not None:
            x = self.spec_augment(x)
        return self.cnn.forward_normalized(x, is_longer if self.fusion else None)


AUDIO_FAMILIES: dict[str, type[nn.Module]] = {"htsat": HtsatAudioEncoder, "pann": PannAudioEncoder}


def build_audio_encoder(name: str, overrides: dict[str, Any] | None = None, *, fusion: bool = False) -> nn.Module:
    """The audio tower of preset ``name`` (see :mod:`clap.model.presets`), randomly initialised.

    The returned module has ``output_dim`` (its embedding width), ``config`` (the resolved preset
    dict, JSON-safe) and ``forward(input_features, is_longer) -> [B, output_dim]``.
    """
    config = audio_preset(name, overrides)
    family = config.get("family")
    if family not in AUDIO_FAMILIES:
        raise ValueError(f"audio encoder '{name}': unknown family {family!r}; known: {sorted(AUDIO_FAMILIES)}")
    return AUDIO_FAMILIES[family](name, config, fusion)
