"""PANN CNNs (Kong et al. 2020, "PANNs: Large-Scale Pretrained Audio Neural Networks") as audio towers.

No maintained library ships these networks in a form that takes our features, so they are written
here from the paper's description; module names follow the PANN checkpoints (``bn0``,
``conv_block{i}.conv1/conv2/bn1/bn2``, ``fc1``) so AudioSet-pretrained weights load by name.

Input: log-mel features ``[B, 1, frames, mel_bins]`` (the same Slaney log-mel HTS-AT takes).
Shape of the computation:

* ``bn0``: batch norm over the mel bins (each bin normalised on its own);
* conv blocks: two (3x3 conv, no bias -> batch norm -> ReLU), then average pooling (2x2, or the
  block's ``pool`` size), dropout 0.2 in training;
* global pooling: mean over frequency, then max + mean over time;
* dropout 0.5 -> ``fc1`` -> ReLU -> dropout 0.5 = the clip embedding (``embed_dim`` wide).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


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
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
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
    ) -> None:
        super().__init__()
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

    def normalize_mel(self, x: Tensor) -> Tensor:
        """``bn0``: batch norm over mel bins of ``x [B, C, frames, mel_bins]``."""
        return self.bn0(x.transpose(1, 3)).transpose(1, 3)

    def forward_normalized(self, x: Tensor) -> Tensor:
        """The network after ``bn0`` (SpecAugment goes in between in training)."""
        for i in range(1, self.num_blocks + 1):
            x = getattr(self, f"conv_block{i}")(x)
            x = F.dropout(x, p=self.block_dropout, training=self.training)
        x = x.mean(dim=3)  # over frequency -> [B, channels, time]
        x = x.amax(dim=2) + x.mean(dim=2)  # max + mean over time
        x = F.dropout(x, p=self.embed_dropout, training=self.training)
        x = F.relu(self.fc1(x))
        return F.dropout(x, p=self.embed_dropout, training=self.training)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_normalized(self.normalize_mel(x))


def pann_from_config(config: dict) -> PannCnn:
    """Build a :class:`PannCnn` from a ``family: pann`` preset dict (extra keys are ignored)."""
    try:
        return PannCnn(
            channels=config["channels"],
            pool=config["pool"],
            embed_dim=config["embed_dim"],
            num_mel_bins=config.get("num_mel_bins", 64),
            block_dropout=config.get("block_dropout", 0.2),
            embed_dropout=config.get("embed_dropout", 0.5),
        )
    except KeyError as exc:
        raise ValueError(f"PANN audio config: missing key {exc.args[0]!r} (have {sorted(config)})") from exc


__all__ = ["PannCnn", "PannConvBlock", "pann_from_config"]
