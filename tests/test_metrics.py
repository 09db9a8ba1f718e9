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
    a2t_best, aps, laion_aps = [], [], []
    for a in range(n_audio):
        own = [t for t in range(n_text) if text_to_audio[t] == a]
        if not own:
            continue
        order = sorted(range(n_text), key=lambda t: (-sim[t, a], t))
        in_caption_order = [order.index(t) for t in own]
        positions = sorted(in_caption_order)
        a2t_best.append(positions[0])
        aps.append(slow_ap10(positions))
        laion_aps.append(slow_ap10(in_caption_order))
    for name, ranks, map10 in (
        ("t2a", t2a, np.mean([1 / (r + 1) if r < 10 else 0 for r in t2a])),
        ("a2t", np.array(a2t_best), np.mean(aps)),
    ):
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = float(np.mean(ranks < k))
        out[f"{name}_map10"] = float(map10)
        out[f"{name}_mean_rank"] = float(np.mean(ranks) + 1)
        out[f"{name}_median_rank"] = float(np.floor(np.median(ranks)) + 1)
    out["a2t_map10_laion"] = float(np.mean(laion_aps))
    return out


def slow_ap10(positions: list[int]) -> float:
    """Precision at each position below 10, in the order given, over the caption count."""
    hits = 0
    precision_sum = 0.0
    for pos in positions:
        if pos < 10:
            hits += 1
            precision_sum += hits / (pos + 1)
    return precision_sum / len(positions)


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


def test_audio_to_text_map10_and_the_reference_variant_on_a_hand_checked_case() -> None:
    """The textbook AP sorts an audio's caption ranks; the reference's code (LAION-AI/CLAP
    ``evaluate_clotho_audiocaps``) takes them in caption order. 2 audios, 14 captions:

    audio 0 owns captions t0, t1, t2. Its scores put t2 first (rank 0), then t3, t4, then t0 (rank 3),
    then t5..t11 (ranks 4..10), then t1 (rank 11, outside the top 10), then t12, t13.
      caption-order ranks [3, 11, 0]; sorted [0, 3, 11]
      textbook:  hits 0, 3      -> (1/1 + 2/4) / 3 = 1.5 / 3  = 0.5
      reference: hits 3, 0      -> (1/4 + 2/1) / 3 = 2.25 / 3 = 0.75
    audio 1 owns t3..t13 (11 captions), ranked 0..10 in caption order (already sorted, so both agree):
      hits at ranks 0..9 -> (1/1 + 2/2 + ... + 10/10) / 11 = 10 / 11
    mAP@10 = (0.5 + 10/11) / 2 = 0.70454...; reference variant = (0.75 + 10/11) / 2 = 0.82954...
    R@1: both audios have a caption at rank 0 -> 1.0; a2t mean rank of the best = 1.
    """
    n_text = 14
    sim = np.zeros((n_text, 2))  # sim[t, a]: caption t's similarity with audio a
    column = {2: 1.0, 3: 0.9, 4: 0.8, 0: 0.7, **{t: 0.6 for t in range(5, 12)}, 1: 0.5, 12: 0.0, 13: 0.0}
    for t, value in column.items():
        sim[t, 0] = value
    for t in range(3, 14):
        sim[t, 1] = 1.0 - 0.01 * (t - 3)
    owner = [0, 0, 0] + [1] * 11
    m = retrieval_metrics(torch.eye(2, dtype=torch.float64), torch.tensor(sim), owner)
    assert m["a2t_map10"] == pytest.approx((0.5 + 10 / 11) / 2)
    assert m["a2t_map10_laion"] == pytest.approx((0.75 + 10 / 11) / 2)
    assert m["a2t_r1"] == 1.0 and m["a2t_mean_rank"] == 1.0
    # The reference's variant exceeds 1 for one audio whose captions rank in reverse order.
    reverse = torch.tensor([[0.1], [0.2], [0.3]], dtype=torch.float64)  # t2 first, t0 last
    one = retrieval_metrics(torch.ones(1, 1, dtype=torch.float64), reverse, [0, 0, 0])
    assert one["a2t_map10"] == pytest.approx(1.0)                        # (1/1 + 2/2 + 3/3) / 3
    assert one["a2t_map10_laion"] == pytest.approx((1 / 3 + 2 / 2 + 3 / 1) / 3)


def test_metrics_of_a_subset_of_audios_rank_against_the_whole_set() -> None:
    from clap.eval.metrics import retrieval_ranks

    # 3 audios, one caption each; caption 0 finds audio 0 second (behind audio 2), the others first.
    sim = torch.tensor([[0.5, 0.0, 0.9], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    ranks = retrieval_ranks(torch.eye(3, dtype=torch.float64), sim, [0, 1, 2])
    first = ranks.metrics(np.array([True, False, False]))
    assert first["t2a_r1"] == 0.0 and first["t2a_mean_rank"] == 2.0  # still ranked among all 3 audios
    rest = ranks.metrics(np.array([1, 2]))
    assert rest["t2a_r1"] == 1.0
    assert ranks.metrics()["t2a_r1"] == pytest.approx(2 / 3)


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
