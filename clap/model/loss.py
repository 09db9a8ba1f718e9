"""The contrastive loss over the whole global batch.

Every rank gathers the audio and text embeddings of all ranks (with gradient), builds the full
[N, N] similarity matrix scaled by the temperature, and takes the symmetric cross-entropy

    loss = (CE(logits_audio->text, diag) + CE(logits_text->audio, diag)) / 2,

so all ranks hold the same loss value, equal to the single-process loss on the concatenated batch.
The gather's backward sums the gradients every rank's (identical) loss sends to each shard, so
after DDP averages parameter gradients across ranks, the parameters receive exactly the gradient
of the single-process loss on the global batch. Without ``torch.distributed`` initialised (or with
one rank) nothing is gathered.

Ranks may hold different numbers of items (a last, short batch): shards are padded for the
collective and trimmed after it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 (shards of any length); backward: sum over ranks, keep our own slice."""

    @staticmethod
    def forward(ctx: Any, local: Tensor) -> Tensor:  # type: ignore[override]
        world = dist.get_world_size()
        size = torch.tensor([local.shape[0]], device=local.device, dtype=torch.long)
        sizes = [torch.zeros_like(size) for _ in range(world)]
        dist.all_gather(sizes, size)
        counts = [int(s.item()) for s in sizes]
        longest = max(counts)
        padded = local.new_zeros((longest, *local.shape[1:]))
        padded[: local.shape[0]] = local
        shards = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(shards, padded.contiguous())
        rank = dist.get_rank()
        ctx.start, ctx.stop = sum(counts[:rank]), sum(counts[: rank + 1])
        return torch.cat([shard[:n] for shard, n in zip(shards, counts)], dim=0)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.stop]


def gather_with_grad(local: Tensor) -> Tensor:
    """``local`` [n_r, ...] of every rank concatenated in rank order, differentiable; ``local`` itself
    when not running distributed."""
    return _GatherWithGrad.apply(local) if _distributed() else local


def contrastive_loss(audio_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Symmetric cross-entropy of audio<->text over the global batch (see the module docstring).

    ``audio_embeds`` / ``text_embeds``: this rank's [n, D] (unit length); pair i of the global batch
    is (audio i, text i). ``logit_scale``: the temperature factor exp(logit_scale_a).
    """
    if audio_embeds.shape != text_embeds.shape:
        raise ValueError(
            f"contrastive_loss: audio {tuple(audio_embeds.shape)} and text {tuple(text_embeds.shape)} "
            "embeddings must pair up (same shape)"
        )
    all_audio = gather_with_grad(audio_embeds)
    all_text = gather_with_grad(text_embeds)
    logits_per_audio = logit_scale * all_audio @ all_text.t()
    labels = torch.arange(all_audio.shape[0], device=all_audio.device)
    return (F.cross_entropy(logits_per_audio, labels) + F.cross_entropy(logits_per_audio.t(), labels)) / 2


class ClipLoss(nn.Module):
    """Module form of :func:`contrastive_loss`."""

    def forward(self, audio_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor | float) -> Tensor:
        return contrastive_loss(audio_embeds, text_embeds, logit_scale)
