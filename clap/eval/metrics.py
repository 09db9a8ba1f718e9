"""Retrieval and classification metrics, computed the way the CLAP paper reports them.

Ranks are 0-based positions in a descending sort of similarity. Ties are broken by index (a stable
sort: among equal scores the lower index comes first), so results never depend on sort internals.

Text->audio: every caption ranks all audios; R@k is the share of captions whose audio is in the top
k; mAP@10 is the mean of 1/(rank+1) when rank < 10, else 0 (one relevant audio per caption).
Audio->text: every audio ranks all captions; R@k uses the best-ranked of its captions; mAP@10
averages the precision at each of its captions found in the top 10, divided by its caption count.
Mean and median rank are 1-based.

``a2t_map10_laion`` is the reference implementation's audio->text mAP@10 (LAION-AI/CLAP,
``evaluate_clotho_audiocaps``): it takes an audio's caption ranks in caption order, not sorted, so
the j-th caption found in the top 10 counts j / (rank + 1) whatever its position. That is not the
textbook average precision (a clip whose later captions rank first can score above 1), but the
paper's published audio->text mAP@10 figures were computed that way; compare ours with them under
this name, and use ``a2t_map10`` for everything else.

Similarities are computed chunk by chunk, so memory stays at ``chunk_size x n_items`` floats:
100,000 audios x 500,000 captions fit in a few GB.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

RECALL_KS = (1, 5, 10)


@dataclass
class RetrievalMetrics:
    r1: float
    r5: float
    r10: float
    map10: float
    mean_rank: float
    median_rank: float

    def to_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": float(v) for k, v in asdict(self).items()}


def _ranks_of_targets(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Rank of ``targets[i]`` in row ``i`` of ``scores`` under a stable descending sort."""
    target_scores = scores.gather(1, targets[:, None])
    higher = (scores > target_scores).sum(dim=1)
    index = torch.arange(scores.shape[1], device=scores.device)[None, :]
    tied_before = ((scores == target_scores) & (index < targets[:, None])).sum(dim=1)
    return higher + tied_before


def _summary(best_ranks: np.ndarray, map10: float) -> RetrievalMetrics:
    recalls = [float(np.mean(best_ranks < k)) for k in RECALL_KS]
    return RetrievalMetrics(
        r1=recalls[0], r5=recalls[1], r10=recalls[2], map10=float(map10),
        mean_rank=float(np.mean(best_ranks) + 1.0),
        median_rank=float(np.floor(np.median(best_ranks)) + 1.0),
    )


def text_to_audio_ranks(
    audio_embeds: torch.Tensor, text_embeds: torch.Tensor, text_to_audio: Sequence[int], chunk_size: int = 1024
) -> np.ndarray:
    """0-based rank of each caption's audio among all audios."""
    targets = torch.as_tensor(np.asarray(text_to_audio), dtype=torch.long)
    ranks = []
    for start in range(0, text_embeds.shape[0], chunk_size):
        scores = text_embeds[start:start + chunk_size] @ audio_embeds.T
        ranks.append(_ranks_of_targets(scores, targets[start:start + chunk_size].to(scores.device)).cpu())
    return torch.cat(ranks).numpy() if ranks else np.zeros(0, dtype=np.int64)


def audio_to_text_ranks(
    audio_embeds: torch.Tensor, text_embeds: torch.Tensor, text_to_audio: Sequence[int], chunk_size: int = 256,
    max_elements: int = 1 << 24, caption_order: bool = False,
) -> list[np.ndarray]:
    """For each audio, the 0-based ranks of all of its captions among all captions: sorted, or in
    caption (index) order with ``caption_order``.

    Audios are ranked a block at a time; a block's rows x captions-per-audio x all captions stays under
    ``max_elements`` comparisons, so memory is bounded whatever the set size.
    """
    owner = np.asarray(text_to_audio, dtype=np.int64)
    n_audio, n_text = audio_embeds.shape[0], text_embeds.shape[0]
    order = np.argsort(owner, kind="stable")  # captions grouped by audio, in index order
    bounds = np.searchsorted(owner[order], np.arange(n_audio + 1))
    captions_of = [order[bounds[i]:bounds[i + 1]] for i in range(n_audio)]
    per_audio = max((len(c) for c in captions_of), default=0)
    if per_audio == 0:
        return [np.zeros(0, dtype=np.int64) for _ in range(n_audio)]
    block = max(1, min(chunk_size, max_elements // max(1, per_audio * n_text)))
    index = torch.arange(n_text, device=text_embeds.device)[None, None, :]
    result: list[np.ndarray] = []
    for start in range(0, n_audio, block):
        own = captions_of[start:start + block]
        targets = torch.zeros(len(own), per_audio, dtype=torch.long, device=text_embeds.device)
        for row, caps in enumerate(own):
            targets[row, :len(caps)] = torch.as_tensor(caps)
        scores = audio_embeds[start:start + block] @ text_embeds.T                 # [b, n_text]
        target_scores = scores.gather(1, targets)[:, :, None]                      # [b, k, 1]
        ranks = (scores[:, None, :] > target_scores).sum(-1)
        ranks += ((scores[:, None, :] == target_scores) & (index < targets[:, :, None])).sum(-1)
        ranks = ranks.cpu().numpy()
        for row, caps in enumerate(own):
            mine = ranks[row, :len(caps)]
            result.append(mine.copy() if caption_order else np.sort(mine))
    return result


@dataclass
class RetrievalRanks:
    """Every query's ranks, computed once; metrics of the whole set or of a subset of its audios
    (e.g. a duration bucket: the queries of those audios, still ranked against the whole set)."""

    t2a: np.ndarray              # [n_text] 0-based rank of each caption's audio among all audios
    a2t: list[np.ndarray]        # per audio: its captions' 0-based ranks among all captions, in caption order
    text_to_audio: np.ndarray    # [n_text] the audio each caption belongs to

    def metrics(self, audios: np.ndarray | None = None) -> dict[str, float]:
        """``t2a_r1`` ... ``a2t_median_rank`` and ``a2t_map10_laion``; ``audios`` (a boolean mask or
        indices) restricts the queries to those audios' captions (t2a) and those audios (a2t)."""
        keep = np.ones(len(self.a2t), dtype=bool)
        if audios is not None:
            keep = np.zeros(len(self.a2t), dtype=bool)
            keep[np.asarray(audios)] = True
        t2a = self.t2a[keep[self.text_to_audio]] if len(self.t2a) else self.t2a
        t2a_map10 = float(np.mean(np.where(t2a < 10, 1.0 / (t2a + 1.0), 0.0))) if len(t2a) else 0.0
        chosen = [ranks for ranks, k in zip(self.a2t, keep) if k and len(ranks)]
        best = np.array([ranks.min() for ranks in chosen], dtype=np.int64)
        out = _summary(t2a, t2a_map10).to_dict("t2a_")
        out.update(_summary(best, _mean(average_precision_at_10(np.sort(r)) for r in chosen)).to_dict("a2t_"))
        out["a2t_map10_laion"] = _mean(average_precision_at_10(r) for r in chosen)
        return out


def average_precision_at_10(ranks: np.ndarray) -> float:
    """One audio's AP@10 from its captions' 0-based ranks, taken in the order given: the j-th rank
    below 10 contributes j / (rank + 1), the sum is divided by the caption count. Sorted ranks give the
    textbook AP; ranks in caption order give the reference implementation's variant."""
    ranks = np.asarray(ranks)
    if len(ranks) == 0:
        return 0.0
    hits = ranks[ranks < 10]
    return float(np.sum(np.arange(1, len(hits) + 1) / (hits + 1.0)) / len(ranks))


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return float(np.mean(values)) if values else 0.0


def retrieval_ranks(
    audio_embeds: torch.Tensor, text_embeds: torch.Tensor, text_to_audio: Sequence[int], chunk_size: int = 1024,
) -> RetrievalRanks:
    """Both directions' ranks (similarities in chunks of ``chunk_size`` query rows)."""
    owner = np.asarray(text_to_audio, dtype=np.int64)
    return RetrievalRanks(
        t2a=text_to_audio_ranks(audio_embeds, text_embeds, owner, chunk_size),
        a2t=audio_to_text_ranks(audio_embeds, text_embeds, owner, max(1, chunk_size // 4), caption_order=True),
        text_to_audio=owner,
    )


def retrieval_metrics(
    audio_embeds: torch.Tensor, text_embeds: torch.Tensor, text_to_audio: Sequence[int],
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Both directions; keys ``t2a_r1`` ... ``a2t_median_rank`` and ``a2t_map10_laion``. Embeddings
    should be L2-normalised."""
    return retrieval_ranks(audio_embeds, text_embeds, text_to_audio, chunk_size).metrics()


def topk_accuracy(logits: torch.Tensor | np.ndarray, targets: Sequence[int], ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy for single-label classification (ties broken by class index)."""
    scores = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    ranks = _ranks_of_targets(scores, torch.as_tensor(np.asarray(targets), dtype=torch.long)).numpy()
    return {f"top{k}": float(np.mean(ranks < k)) for k in ks if k <= scores.shape[1]}


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Multi-label mAP: the mean over classes (with at least one positive) of average precision."""
    from sklearn.metrics import average_precision_score

    labels = np.asarray(labels)
    keep = labels.sum(axis=0) > 0
    if not keep.any():
        raise ValueError("mean_average_precision: no class has a positive example")
    return float(average_precision_score(labels[:, keep], np.asarray(scores)[:, keep], average="macro"))
