"""Evaluation figures: recall@k curves against chance, and zero-shot confusion matrices (PNG).

Line charts of plain series go through :func:`clap.report.writer.plot_lines`; these two need more
(paired dashed chance lines, a heat map), so they live here. PNGs carry no timestamp, so the same
numbers give the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

#: Above this many classes the confusion matrix drops its tick labels (they would overlap).
MAX_LABELLED_CLASSES = 60


def _pyplot():  # noqa: ANN202 - matplotlib's module
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_recall_at_k(
    path: str | Path,
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    chance: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    *, title: str = "Recall@k",
) -> Path:
    """Recall against k, one solid line per named curve and, when given, its chance level as a
    dashed line of the same colour."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    for label, (ks, recalls) in curves.items():
        (line,) = ax.plot(list(ks), list(recalls), marker="o", markersize=3, label=label)
        if chance and label in chance:
            cks, cvalues = chance[label]
            ax.plot(list(cks), list(cvalues), linestyle="--", color=line.get_color(), alpha=0.6)
    ax.set(title=title, xlabel="k", ylabel="recall@k", ylim=(0.0, 1.02))
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path


def plot_confusion(
    path: str | Path, matrix: np.ndarray, labels: Sequence[str], *, title: str = "Confusion matrix",
) -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted class) as a heat map."""
    plt = _pyplot()
    counts = np.asarray(matrix, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] != len(labels):
        raise ValueError(f"plot_confusion: matrix of shape {counts.shape} does not fit {len(labels)} labels")
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    n = len(labels)
    side = min(16.0, max(4.5, 0.28 * n + 2.5))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(side, side * 0.9), dpi=100)
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if n <= MAX_LABELLED_CLASSES:
        ax.set_xticks(range(n), labels=list(labels), rotation=90, fontsize="small")
        ax.set_yticks(range(n), labels=list(labels), fontsize="small")
    ax.set(title=title, xlabel="predicted", ylabel="true")
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path
