"""PANN CNNs (Kong et al. 2020, "PANNs: Large-Scale Pretrained Audio Neural Networks") as audio towers.

No maintained library ships these networks in a form that takes our features, so they are written
here from the paper's description; module names follow the PANN checkpoints (``bn0``,
``conv_block{i}.conv1/conv2/bn1/bn2``, ``fc1``) so AudioSet-pretrained weights load by name.

Input: log-mel features ``[B, 1, frames, mel_bins]`` (the same Slaney log-mel HTS-AT takes).
Shape of the computation:

* ``bn0``: batch norm over the mel bins (each bin normalised on its own);
* ``input_pool`` (ours, default none): average pooling of the normalised mel (frames, bins) before
  the first block, for CPU-sized presets; the PANN checkpoints' networks have none;
* conv blocks: two (3x3 conv, no bias -> batch norm -> ReLU), then average pooling (2x2, or the
  block's ``pool`` size), dropout 0.2 in training;
* global pooling: mean over frequency, then max + mean over time;
* dropout 0.5 -> ``fc1`` -> ReLU -> dropout 0.5 = the clip embedding (``embed_dim`` wide).

Feature fusion (``fusion=True``, the reference's ``aff_2d`` for PANN): the input has 4 channels (the
global view, then 3 local 10 s crops). The global view goes through the first conv block; for clips
flagged ``is_longer``, each local view goes through ``mel_conv2d`` (a strided conv + batch norm +
ReLU whose stride brings 3 views side by side in time to the block's output grid), the 3 are
concatenated along time, zero-padded or cut to the global feature's length, and merged with it by
attentional feature fusion (``fusion_model``). The reference's kernel (5, 5), stride (6, 2), padding
(2, 2) is what the formula gives for CNN14 (no ``input_pool``, 2x2 pooling in the first block).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.models.clap.modeling_clap import ClapAudioAFFBlock


def _conv_channels_last(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)`` with the weight viewed channels-last, like ``x``: the same values (the parameter
    itself keeps its layout, so checkpoints and safetensors are unchanged), but oneDNN's CPU kernels
    run the pann-cpu tower's forward + backward about 20 % faster this way (16-128 channels)."""
    weight = conv.weight.contiguous(memory_format=torch.channels_last)
    return F.conv2d(x, weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class PannConvBlock(nn.Module):
    """Two 3x3 conv + batch norm + ReLU layers, then average pooling."""

    def __init__(self, in_channels: int, out_channels: int, pool: Sequence[int] = (2, 2)) -> None:
        super().__init__()
        self.pool = tuple(int(p) for p in pool)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        for conv in (self.conv1, self.conv2):
            nn.init.xavier_uniform_(conv.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        x = F.relu(self.bn1(_conv_channels_last(self.conv1, x)))
        x = F.relu(self.bn2(_conv_channels_last(self.conv2, x)))
        if self.pool != (1, 1):
            x = F.avg_pool2d(x, kernel_size=self.pool)
        return x


class PannCnn(nn.Module):
    """A PANN CNN (CNN14: 6 blocks 64..2048; CNN10: 4 blocks 64..512) that returns clip embeddings.

    ``forward(x [B, 1, frames, mel_bins]) -> [B, embed_dim]``; ``embed_dim`` is ``fc1``'s width.
    """

    def __init__(
        self,
        channels: Sequence[int],
        pool: Sequence[Sequence[int]],
        embed_dim: int,
        num_mel_bins: int = 64,
        block_dropout: float = 0.2,
        embed_dropout: float = 0.5,
        input_pool: Sequence[int] = (1, 1),
        fusion: bool = False,
        aff_block_r: int = 4,
    ) -> None:
        super().__init__()
        self.input_pool = tuple(int(p) for p in input_pool)
        if len(self.input_pool) != 2 or min(self.input_pool) < 1:
            raise ValueError(f"PANN config: input_pool must be two sizes >= 1 (frames, mel bins), got {input_pool}")
        if len(pool) != len(channels):
            raise ValueError(f"PANN config: {len(channels)} conv blocks but {len(pool)} pool sizes")
        self.block_dropout = float(block_dropout)
        self.embed_dropout = float(embed_dropout)
        self.embed_dim = int(embed_dim)
        self.bn0 = nn.BatchNorm2d(num_mel_bins)
        in_channels = 1
        for i, (out_channels, pool_size) in enumerate(zip(channels, pool), start=1):
            self.add_module(f"conv_block{i}", PannConvBlock(in_channels, int(out_channels), pool_size))
            in_channels = int(out_channels)
        self.num_blocks = len(channels)
        self.fc1 = nn.Linear(in_channels, self.embed_dim)
        nn.init.xavier_uniform_(self.fc1.weight)
        nn.init.zeros_(self.fc1.bias)
        self.fusion = bool(fusion)
        if self.fusion:
            first = int(channels[0])
            stride = (3 * self.input_pool[0] * self.conv_block1.pool[0], self.input_pool[1] * self.conv_block1.pool[1])
            kernel = (max(5, stride[0] - 1 if stride[0] % 2 == 0 else stride[0]),
                      max(5, stride[1] + 1 if stride[1] % 2 == 0 else stride[1]))  # odd, so each view gives ceil(L / stride)
            self.mel_conv2d = nn.Sequential(
                nn.Conv2d(1, first, kernel_size=kernel, stride=stride, padding=(kernel[0] // 2, kernel[1] // 2)),
                nn.BatchNorm2d(first),
                nn.ReLU(inplace=True),
            )
            self.fusion_model = ClapAudioAFFBlock(SimpleNamespace(patch_embeds_hidden_size=first, aff_block_r=aff_block_r))

    def normalize_mel(self, x: Tensor) -> Tensor:
        """``bn0``: batch norm over mel bins of ``x [B, C, frames, mel_bins]``."""
        return self.bn0(x.transpose(1, 3)).transpose(1, 3)

    def _fuse(self, x: Tensor, is_longer: Tensor | None) -> Tensor:
        """The first block's output of the global view ``x[:, :1]``, fused with the local views of the
        items flagged in ``is_longer``."""
        out = self.conv_block1(self._pool_input(x[:, :1]))
        longer = torch.nonzero(is_longer.reshape(-1)).reshape(-1) if is_longer is not None else None
        if longer is None or len(longer) == 0:
            return out
        local = x[longer, 1:]
        count, views, frames, bins = local.shape
        local = self.mel_conv2d(local.reshape(count * views, 1, frames, bins))
        local = local.reshape(count, views, *local.shape[1:]).permute(0, 2, 1, 3, 4).flatten(2, 3)
        length = out.shape[2]
        if local.shape[2] < length:
            local = F.pad(local, (0, 0, 0, length - local.shape[2]))
        local = local[:, :, :length, : out.shape[3]]
        out = out.clone()
        out[longer] = self.fusion_model(out[longer], local)
        return out

    def _pool_input(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, kernel_size=self.input_pool) if self.input_pool != (1, 1) else x

    def forward_normalized(self, x: Tensor, is_longer: Tensor | None = None) -> Tensor:
        """The network after ``bn0`` (SpecAugment goes in between in training); ``is_longer`` [B]
        (bool) picks the items whose local views are fused (fusion models only)."""
        first = 1
        if self.fusion:
            x = F.dropout(self._fuse(x, is_longer), p=self.block_dropout, training=self.training)
            first = 2
        else:
            x = self._pool_input(x)
        for i in range(first, self.num_blocks + 1):
            x = getattr(self, f"conv_block{i}")(x)
            x = F.dropout(x, p=self.block_dropout, training=self.training)
        x = x.mean(dim=3)  # over frequency -> [B, channels, time]
        x = x.amax(dim=2) + x.mean(dim=2)  # max + mean over time
        x = F.dropout(x, p=self.embed_dropout, training=self.training)
        x = F.relu(self.fc1(x))
        return F.dropout(x, p=self.embed_dropout, training=self.training)

    def forward(self, x: Tensor, is_longer: Tensor | None = None) -> Tensor:
        return self.forward_normalized(self.normalize_mel(x), is_longer)


def pann_from_config(config: dict, fusion: bool = False) -> PannCnn:
    """Build a :class:`PannCnn` from a ``family: pann`` preset dict (extra keys are ignored)."""
    try:
        return PannCnn(
            channels=config["channels"],
            pool=config["pool"],
            embed_dim=config["embed_dim"],
            num_mel_bins=config.get("num_mel_bins", 64),
            block_dropout=config.get("block_dropout", 0.2),
            embed_dropout=config.get("embed_dropout", 0.5),
            input_pool=config.get("input_pool", (1, 1)),
            fusion=fusion,
            aff_block_r=config.get("aff_block_r", 4),
        )
    except KeyError as exc:
        raise ValueError(f"PANN audio config: missing key {exc.args[0]!r} (have {sorted(config)})") from exc


__all__ = ["PannCnn", "PannConvBlock", "pann_from_config"]
