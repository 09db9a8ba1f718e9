"""Metric functions against slow, obvious implementations and hand-checked cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clap.eval.metrics import mean_average_precision, retrieval_metrics, topk_accuracy


def slow_retrieval(sim: np.ndarray, text_to_audio: list[int]) -> dict[str, float]:
    """Loop-by-loop version of the protocol in REFERENCE.md, with a stable descending sort."""
    n_text, n_audio = sim.shape
    out = {}
    t2a = []
    for t in range(n_text):
        order = sorted(range(n_audio), key=lambda a: (-sim[t, a], a))
        t2a.append(order.index(text_to_audio[t]))
    t2a = np.array(t2a)
    a2t_best, aps = [], []
    for a in range(n_audio):
        own = [t for t in range(n_text) if text_to_audio[t] == a]
        if not own:
            continue
        order = sorted(range(n_text), key=lambda t: (-sim[t, a], t))
        positions = sorted(order.index(t) for t in own)
        a2t_best.append(positions[0])
        hits = 0
        precision_sum = 0.0
        for pos in positions:
            if pos < 10:
                hits += 1
                precision_sum += hits / (pos + 1)
        aps.append(precision_sum / len(own))
    for name, ranks, map10 in (
        ("t2a", t2a, np.mean([1 / (r + 1) if r < 10 else 0 for r in t2a])),
        ("a2t", np.array(a2t_best), np.mean(aps)),
    ):
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = float(np.mean(ranks < k))
        out[f"{name}_map10"] = float(map10)
        out[f"{name}_mean_rank"] = float(np.mean(ranks) + 1)
        out[f"{name}_median_rank"] = float(np.floor(np.median(ranks)) + 1)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("quantise", [False, True])
def test_retrieval_matches_slow_reference(seed: int, quantise: bool) -> None:
    rng = np.random.default_rng(seed)
    n_audio, per_audio = 23, 5
    audio = rng.normal(size=(n_audio, 8))
    text_to_audio = [a for a in range(n_audio) for _ in range(per_audio)]
    text = audio[text_to_audio] + rng.normal(scale=1.5, size=(len(text_to_audio), 8))
    if quantise:  # coarse values make many exact ties
        audio, text = np.round(audio), np.round(text)
    sim = text @ audio.T
    fast = retrieval_metrics(torch.tensor(audio), torch.tensor(text), text_to_audio, chunk_size=7)
    slow = slow_retrieval(sim, text_to_audio)
    assert fast.keys() == slow.keys()
    for key in slow:
        assert fast[key] == pytest.approx(slow[key], abs=1e-12), key


def test_hand_checked_case_with_ties_and_a_miss() -> None:
    # 12 audios, one caption each; caption 0 ties with audio 0 and audio 1 (index order: audio 0 first),
    # caption 1 finds its audio 1 second (behind audio 0), caption 2's audio is ranked last (rank 11).
    n = 12
    sim = np.full((3, n), 0.0)
    sim[0, 0] = sim[0, 1] = 1.0
    sim[1, 0], sim[1, 1] = 0.9, 0.5
    sim[2, :] = 0.5
    sim[2, 2] = -1.0
    audio = torch.eye(n, dtype=torch.float64)
    text = torch.tensor(sim)
    m = retrieval_metrics(audio[:, :], text, [0, 1, 2], chunk_size=2)
    assert m["t2a_r1"] == pytest.approx(1 / 3)
    assert m["t2a_r5"] == pytest.approx(2 / 3)
    assert m["t2a_map10"] == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert m["t2a_mean_rank"] == pytest.approx((1 + 2 + 12) / 3)
    assert m["t2a_median_rank"] == 2


def test_audio_to_text_with_several_captions() -> None:
    # one audio with two captions, ranked 1st and 2nd among 3 captions
    audio = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.8, 0.0]])
    m = retrieval_metrics(audio, text, [0, 1, 0])
    # audio 0 scores: t0 1.0, t1 0.5, t2 0.8 -> order t0, t2, t1: its captions at ranks 0 and 1
    # audio 1 scores: t0 0.0, t1 0.5, t2 0.0 -> its caption t1 at rank 0
    assert m["a2t_r1"] == 1.0
    assert m["a2t_map10"] == pytest.approx(((1 / 1 + 2 / 2) / 2 + 1.0) / 2)


def test_topk_accuracy_and_map() -> None:
    logits = np.array([[0.1, 0.9, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    acc = topk_accuracy(logits, [1, 1, 0], ks=(1, 2))
    assert acc["top1"] == pytest.approx(1 / 3)  # row 1 ties: class 0 comes first
    assert acc["top2"] == pytest.approx(2 / 3)
    labels = np.array([[1, 0], [0, 1], [1, 1]])
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.6]])
    assert mean_average_precision(scores, labels) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no class"):
        mean_average_precision(scores, np.zeros_like(labels))
