"""Table 3 of the paper as a generated comparison: mean and std over seeds of each row's runs.

    python -m clap.report.table3 [--table experiments/table3.yaml] [--exp-json FILE] [--out reports/experiments]

Reads the runs from ``dvc exp show --json`` (or a saved copy of its output): every experiment named
``table3-<row>-s<seed>`` (as ``python -m clap.experiments queue ... --seeds`` names them) is one seed
of a row of experiments/table3.yaml. Writes ``table3.md`` (the table, the figures split by clip
duration, fusion's effect per duration bucket, how each figure was selected, the seeds) and
``table3.png`` (the same means with std error bars).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from clap.report.report import iter_experiments
from clap.report.writer import markdown_table

log = logging.getLogger(__name__)

TRAIN_METRICS = "reports/train/metrics.json"
RETRIEVAL_METRICS = "reports/eval/retrieval.json"
ZEROSHOT_METRICS = "reports/eval/zeroshot.json"
_SEEDED = re.compile(r"^table(?P<table>\w+)-(?P<row>.+)-s(?P<seed>\d+)$")


@dataclass(frozen=True)
class Column:
    """One figure of the table: a metric of a metrics file, ``{retrieval}``/``{zeroshot}`` being the
    run's first evaluation set."""

    label: str
    file: str
    key: str
    bucket: str = ""  # "", "dur_le10s" or "dur_gt10s"


COLUMNS = (
    Column("val t2a mAP@10 (selection)", TRAIN_METRICS, "val_t2a_map10"),
    Column("t2a R@1", RETRIEVAL_METRICS, "{retrieval}.t2a_r1"),
    Column("t2a R@10", RETRIEVAL_METRICS, "{retrieval}.t2a_r10"),
    Column("t2a mAP@10", RETRIEVAL_METRICS, "{retrieval}.t2a_map10"),
    Column("a2t mAP@10", RETRIEVAL_METRICS, "{retrieval}.a2t_map10"),
    Column("zero-shot top-1", ZEROSHOT_METRICS, "{zeroshot}.top1"),
)
BUCKET_COLUMNS = tuple(
    Column(f"{what} {label}", file, key.replace(".", f".{bucket}.", 1), bucket)
    for bucket, label in (("dur_le10s", "<= 10 s"), ("dur_gt10s", "> 10 s"))
    for what, file, key in (("t2a R@10", RETRIEVAL_METRICS, "{retrieval}.t2a_r10"),
                            ("t2a mAP@10", RETRIEVAL_METRICS, "{retrieval}.t2a_map10"),
                            ("zero-shot top-1", ZEROSHOT_METRICS, "{zeroshot}.top1"))
)


@dataclass
class Run:
    row: str
    seed: int
    params: dict[str, Any]
    metrics: dict[str, dict[str, Any]]

    def value(self, column: Column) -> float | None:
        key = column.key.format(retrieval=self.retrieval_set, zeroshot=self.zeroshot_set)
        value = (self.metrics.get(column.file) or {}).get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    @property
    def retrieval_set(self) -> str:
        sets = (self.params.get("eval_retrieval") or {}).get("sets") or ["builtin_captions/test"]
        return str(sets[0]).replace("/", "_")

    @property
    def zeroshot_set(self) -> str:
        sets = (self.params.get("eval_zeroshot") or {}).get("sets") or [{"name": "builtin_esc"}]
        first = sets[0]
        return str(first.get("name") if isinstance(first, dict) else str(first).split("/", 1)[0])

    def partial_sets(self) -> list[str]:
        out = []
        for file, name in ((RETRIEVAL_METRICS, self.retrieval_set), (ZEROSHOT_METRICS, self.zeroshot_set)):
            if (self.metrics.get(file) or {}).get(f"{name}.complete") is False:
                out.append(name)
        return out


@dataclass
class RowSummary:
    name: str
    overrides: dict[str, Any] | None
    runs: list[Run] = field(default_factory=list)

    def stats(self, column: Column) -> tuple[float, float, int] | None:
        """(mean, sample std (0 for one seed), seeds with a value) of a column over this row's seeds."""
        values = [v for v in (run.value(column) for run in self.runs) if v is not None]
        if not values:
            return None
        return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, len(values)


def collect_runs(exp_show: Any, table: str) -> list[Run]:
    """The seeded runs of ``table`` in ``dvc exp show --json`` output (one per row and seed; later
    duplicates of a name are ignored)."""
    runs: dict[tuple[str, int], Run] = {}
    for name, params, metrics in iter_experiments(exp_show):
        match = _SEEDED.match(str(name))
        if not match or match["table"] != table:
            continue
        runs.setdefault((match["row"], int(match["seed"])), Run(match["row"], int(match["seed"]), params, metrics))
    return list(runs.values())


def summarise(table_spec: dict[str, Any], runs: Iterable[Run]) -> list[RowSummary]:
    rows = [RowSummary(str(row["name"]), row.get("cpu")) for row in table_spec["rows"]]
    by_name = {row.name: row for row in rows}
    for run in runs:
        if run.row in by_name:
            by_name[run.row].runs.append(run)
        else:
            log.warning("experiment of row %r: no such row in the table file; left out", run.row)
    for row in rows:
        row.runs.sort(key=lambda r: r.seed)
    return rows


def _cell(stats: tuple[float, float, int] | None) -> str:
    return "—" if stats is None else f"{100 * stats[0]:.1f} ± {100 * stats[1]:.1f}"


def fusion_pairs(rows: Sequence[RowSummary]) -> list[tuple[RowSummary, RowSummary]]:
    """(fusion off, fusion on) pairs of rows whose CPU settings differ only in ``fusion``."""
    def rest(row: RowSummary) -> dict[str, Any]:
        return {k: v for k, v in (row.overrides or {}).items() if k != "fusion"}

    ran = [r for r in rows if r.runs and r.overrides is not None]
    return [(off, on) for off in ran for on in ran
            if not off.overrides.get("fusion") and on.overrides.get("fusion") and rest(off) == rest(on)]


def selection_lines(rows: Sequence[RowSummary]) -> list[str]:
    """How the figures were selected, from the runs' own params."""
    runs = [run for row in rows for run in row.runs]
    val_sets = sorted({str((run.params.get("train") or {}).get("val_set", "?")) for run in runs})
    lines = [
        f"- Model selection: each run keeps the training checkpoint with the best validation text->audio mAP@10 on "
        f"{', '.join(f'`{v}`' for v in val_sets)} (`train.val_set`, a validation split); that column is the "
        "selection figure itself.",
        f"- Test figures: retrieval on `{runs[0].retrieval_set if runs else '?'}`, zero-shot on "
        f"`{runs[0].zeroshot_set if runs else '?'}`; these splits are never used to select a checkpoint or a setting.",
    ]
    if any("test" in v for v in val_sets):
        lines.append("- WARNING: a validation set above is a test split; its figures are selected on test data.")
    seeds = sorted({run.seed for run in runs})
    counts = sorted({len(row.runs) for row in rows if row.runs})
    lines.append(f"- Seeds: {', '.join(map(str, seeds)) or 'none'} (`-S seed=<n>`); {'/'.join(map(str, counts)) or 0} "
                 "per row; mean ± sample standard deviation over seeds, in percent.")
    budgets = sorted({_training_budget(run.params) for run in runs})
    lines.append(f"- Training budget per run: {' / '.join(budgets) or '?'} (from each run's params).")
    k2c = sorted({str((run.params.get("captions") or {}).get("k2c_model") or "the offline stand-in T5 (k2c_model stage)")
                  for run in runs if run.params.get("caption_augmentation") == "k2c"})
    if k2c:
        lines.append(f"- Keyword-to-caption captions came from: {', '.join(k2c)}; the stand-in is not the paper's "
                     "k2t model, so k2c rows measure this pipeline's stand-in, not the paper's augmentation.")
    partial = sorted({s for run in runs for s in run.partial_sets()})
    if partial:
        lines.append(f"- Partial evaluation sets (not every clip of their metadata was scored): {', '.join(partial)}.")
    return lines


def _noise_mark(off: tuple[float, float, int], on: tuple[float, float, int]) -> str:
    """``*`` when on - off exceeds two standard errors of the difference of the two seed means."""
    (mean_off, std_off, n_off), (mean_on, std_on, n_on) = off, on
    if min(n_off, n_on) < 2:
        return ""
    stderr = (std_off**2 / n_off + std_on**2 / n_on) ** 0.5
    return "*" if abs(mean_on - mean_off) > 2 * stderr else ""


def _training_budget(params: dict[str, Any]) -> str:
    """``E epochs x S steps x global batch B = N samples`` from a run's params."""
    train = params.get("train") or {}
    try:
        epochs, steps = int(train["epochs"]), int(train["steps_per_epoch"])
        batch = int(train["batch_size"]) * int(train.get("num_workers") or 1)
    except (KeyError, TypeError, ValueError):
        return "?"
    return f"{epochs} epochs x {steps} steps x global batch {batch} = {epochs * steps * batch:,} samples"


def build_markdown(table_spec: dict[str, Any], rows: Sequence[RowSummary]) -> str:
    lines = [f"# Table {table_spec.get('table', 3)}: {table_spec.get('title', '')}".rstrip(": "), "",
             "Generated by `python -m clap.report.table3` from `dvc exp show` (run by `make experiments`); "
             "CPU twins of the paper's rows on the embedded corpus.", ""]
    header = ["row", "settings", "seeds"] + [c.label for c in COLUMNS]
    body = []
    for row in rows:
        settings = ", ".join(f"{k}={v}" for k, v in (row.overrides or {}).items()) or "not runnable on CPU here"
        body.append([row.name, settings, str(len(row.runs))] + [_cell(row.stats(c)) for c in COLUMNS])
    lines += markdown_table(header, body) + ["", "## By clip duration (10 s or less vs longer)", "",
                                              "A bucket's queries are ranked against the whole test set.", ""]
    lines += markdown_table(["row"] + [c.label for c in BUCKET_COLUMNS],
                             [[row.name] + [_cell(row.stats(c)) for c in BUCKET_COLUMNS] for row in rows if row.runs])
    lines += ["", "## Fusion's effect (fusion on minus off, points, mean over seeds)", "",
              "`*`: the difference exceeds twice its standard error over seeds; unmarked ones are within seed noise.",
              ""]
    pairs = fusion_pairs(rows)
    for off, on in pairs:
        parts = []
        for column in BUCKET_COLUMNS:
            a, b = off.stats(column), on.stats(column)
            if a and b:
                parts.append(f"{column.label}: {100 * (b[0] - a[0]):+.1f}{_noise_mark(a, b)}")
        lines.append(f"- {on.name} vs {off.name}: " + ("; ".join(parts) or "no duration-bucket figures"))
    if not pairs:
        lines.append("- no pair of rows that differ only in fusion has runs")
    lines += ["", "## How the figures were selected", ""] + selection_lines(rows)
    missing = [row.name for row in rows if not row.runs]
    if missing:
        lines += ["", f"Rows without runs: {', '.join(missing)} (see `python -m clap.experiments list` for why a row is not runnable)."]
    return "\n".join(lines) + "\n"


def plot_table(path: Path, rows: Sequence[RowSummary]) -> Path:
    """Grouped bars: one panel per figure (whole set, then per duration bucket), one bar per row with
    its std over seeds as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ran = [row for row in rows if row.runs]
    panels = [c for c in COLUMNS if c.label in ("t2a R@10", "t2a mAP@10", "zero-shot top-1")] + list(BUCKET_COLUMNS)
    # rows: all clips, 10 s or less, longer; columns: t2a R@10, t2a mAP@10, zero-shot top-1
    fig, axes = plt.subplots(3, 3, figsize=(9.0, 9.0), dpi=100, sharey=True)
    for ax, column in zip(axes.flat, panels):
        stats = [row.stats(column) or (np.nan, 0.0, 0) for row in ran]
        ax.bar(range(len(ran)), [100 * s[0] for s in stats], yerr=[100 * s[1] for s in stats], capsize=3,
               color=[f"C{i}" for i in range(len(ran))])
        ax.set_title(column.label, fontsize="small")
        ax.set_xticks(range(len(ran)), labels=[row.name for row in ran], rotation=60, ha="right", fontsize="x-small")
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("percent (mean ± std over seeds)", fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path


def exp_show_json(repo: Path) -> Any:
    proc = subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc exp show --json failed in {repo}: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout)


def write_table3(table_path: Path, exp_show: Any, out_dir: Path) -> tuple[Path, Path]:
    """``table3.md`` and ``table3.png`` under ``out_dir`` from the table file and exp-show JSON."""
    spec = yaml.safe_load(table_path.read_text())
    rows = summarise(spec, collect_runs(exp_show, str(spec.get("table", 3))))
    if not any(row.runs for row in rows):
        raise ValueError(f"no experiment named table{spec.get('table', 3)}-<row>-s<seed> in dvc exp show; run "
                         "`make experiments` (or python -m clap.experiments queue ... --seeds ... --run) first")
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = out_dir / f"table{spec.get('table', 3)}.md"
    markdown.write_text(build_markdown(spec, rows))
    return markdown, plot_table(out_dir / f"table{spec.get('table', 3)}.png", rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clap.report.table3", description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, default=Path("experiments/table3.yaml"))
    parser.add_argument("--exp-json", type=Path, default=None, help="saved `dvc exp show --json` output (default: run it)")
    parser.add_argument("--repo", type=Path, default=Path("."))
    parser.add_argument("--out", type=Path, default=Path("reports/experiments"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        data = json.loads(args.exp_json.read_text()) if args.exp_json else exp_show_json(args.repo)
        markdown, figure = write_table3(args.table, data, args.out)
    except (OSError, RuntimeError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    log.info("wrote %s and %s", markdown, figure)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
