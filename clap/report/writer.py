"""The one place metrics and plot data are written, so every stage's reports look alike.

Metrics JSON is flat (``{"t2a_r1": 0.12, ...}``) so that `dvc metrics diff` reads clearly; plot data
is CSV (one row per point) for `dvc plots`; figures are PNG.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else round(value, 6)
    return value


def write_metrics(path: str | Path, metrics: Mapping[str, Any]) -> Path:
    """Flat metrics JSON, keys sorted, floats rounded to 6 digits (stable diffs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {key: _clean(value) for key, value in sorted(metrics.items())}
    path.write_text(json.dumps(flat, indent=2) + "\n")
    return path


def write_rows(path: str | Path, rows: Iterable[Mapping[str, Any]], columns: Sequence[str] | None = None) -> Path:
    """Plot data (or any table) as CSV with a header row."""
    rows = list(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(columns or (rows[0].keys() if rows else []))
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _clean(row.get(k)) for k in columns})
    return path


def plot_lines(path: str | Path, series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
               title: str, xlabel: str, ylabel: str, logy: bool = False) -> Path:
    """A line chart of named (x, y) series as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for label, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), label=label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path


def markdown_table(
    header: Sequence[str], rows: Iterable[Sequence[Any]], fmt: Callable[[Any], str] = str
) -> list[str]:
    """A markdown table's lines: header, separator, one line per row. Each cell is ``fmt(value)``
    (default ``str``), with ``|`` escaped and line breaks folded into spaces."""

    def cell(value: Any) -> str:
        return fmt(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
