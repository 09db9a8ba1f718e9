"""The markdown report: our figures beside the paper's, and one row per experiment.

Built from the pipeline's own metrics files (reports/*/*.json) and, when run inside a DVC repository
with experiments, from ``dvc exp show --json``. Never edited by hand.
"""

from __future__ import annotations

import json
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from clap.report.writer import markdown_table

logger = logging.getLogger(__name__)

METRICS_FILES = {
    "train": "reports/train/metrics.json",
    "retrieval": "reports/eval/retrieval.json",
    "zeroshot": "reports/eval/zeroshot.json",
    "finetune": "reports/finetune/metrics.json",
}


@dataclass(frozen=True)
class PaperFigure:
    """A published figure and the metric key pattern of ours it compares with."""

    table: str
    what: str
    set_hint: str     # a substring of our set/task name (e.g. "clotho")
    metric: str       # our metric suffix (e.g. "t2a_r1")
    value: float      # the paper's, as a fraction


#: Headline numbers of the paper and the reference README (see shared/REFERENCE.md).
PAPER_FIGURES = (
    PaperFigure("retrieval", "AudioCaps text->audio R@1", "audiocaps", "t2a_r1", 0.367),
    PaperFigure("retrieval", "Clotho text->audio R@1", "clotho", "t2a_r1", 0.182),
    PaperFigure("zeroshot", "ESC-50 zero-shot top-1", "esc50", "top1", 0.910),
    PaperFigure("zeroshot", "UrbanSound8K zero-shot top-1", "urbansound8k", "top1", 0.770),
    PaperFigure("zeroshot", "UrbanSound8K zero-shot top-1", "us8k", "top1", 0.770),
    PaperFigure("zeroshot", "VGGSound zero-shot top-1", "vggsound", "top1", 0.462),
    PaperFigure("zeroshot", "GTZAN zero-shot top-1", "gtzan", "top1", 0.730),
    PaperFigure("finetune", "VGGSound supervised top-1", "vggsound", "top1", 0.753),
    PaperFigure("finetune", "FSD50K supervised mAP", "fsd50k", "map", 0.597),
)


def load_metrics(root: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for name, rel in METRICS_FILES.items():
        path = root / rel
        if path.is_file():
            out[name] = json.loads(path.read_text())
    return out


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}" if isinstance(value, (int, float)) else "—"


def group_by_set(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"clotho_test.t2a_r1": x}`` -> ``{"clotho_test": {"t2a_r1": x}}``."""
    groups: dict[str, dict[str, Any]] = {}
    for key, value in metrics.items():
        name, _, metric = key.rpartition(".")
        groups.setdefault(name or "all", {})[metric] = value
    return groups


def completeness_note(values: dict[str, Any]) -> str:
    """``yes`` for a set scored on every clip (and class) its metadata lists, ``partial: ...`` otherwise,
    empty when the metrics say nothing about it (a bucket or fold row, an older metrics file)."""
    if "complete" not in values:
        return ""
    if values["complete"]:
        return "yes"
    text = f"partial: {values.get('clips_scored', '?')}/{values.get('clips_expected', '?')} clips"
    if "classes_expected" in values:
        text += f", {values.get('classes_scored', '?')}/{values['classes_expected']} classes"
    return text


def _matching_figures(table: str, set_name: str, values: dict[str, Any]) -> list[PaperFigure]:
    # a sub-row ("esc50.fold1", "esc50.dur_gt10s") is never the set the paper reports
    if "." in set_name:
        return []
    return [f for f in PAPER_FIGURES if f.table == table and f.set_hint in set_name.lower() and f.metric in values]


def paper_rows(table: str, metrics: dict[str, Any]) -> list[list[str]]:
    """One row per (our complete set, paper figure) pair whose names match: ours, the paper's, difference.
    A partial set (``complete: false``) is never among them: see :func:`partial_notes`."""
    rows = []
    for set_name, values in sorted(group_by_set(metrics).items()):
        if values.get("complete") is False:
            continue
        for fig in _matching_figures(table, set_name, values):
            ours = values[fig.metric]
            rows.append([f"{set_name} ({fig.what})", _pct(ours), _pct(fig.value), f"{100 * (ours - fig.value):+.1f}"])
    return rows


def partial_notes(table: str, metrics: dict[str, Any]) -> list[str]:
    """A line for each partial set that has a published figure, saying why it is not compared."""
    notes = []
    for set_name, values in sorted(group_by_set(metrics).items()):
        if values.get("complete") is False:
            for fig in _matching_figures(table, set_name, values):
                notes.append(f"- {set_name} is {completeness_note(values)} scored: not comparable with the paper's "
                             f"{fig.what} ({_pct(fig.value)}); see its dropped.csv for what is missing and why.")
    return notes


def section_lines(title: str, table: str, metrics: dict[str, Any], columns: list[str]) -> list[str]:
    lines = [f"## {title}", ""]
    groups = group_by_set(metrics)
    with_state = any("complete" in vals for vals in groups.values())
    header = ["set"] + columns + (["complete"] if with_state else [])
    lines += markdown_table(header, ([name] + [_pct(vals.get(c)) for c in columns] + ([completeness_note(vals)] if with_state else [])
                             for name, vals in sorted(groups.items())))
    if with_state:
        lines += ["", "_complete: scored on every clip (and class) the set's metadata lists; `dur_le10s` / `dur_gt10s` "
                  "rows are clips of 10 s or less / longer._"]
    compared, notes = paper_rows(table, metrics), partial_notes(table, metrics)
    if compared:
        lines += ["", "Beside the paper's figure (percent):", ""]
        lines += markdown_table(["set", "ours", "paper", "difference"], compared)
    if notes:
        lines += ["", "Partial sets, not placed beside the paper's figure:", ""] + notes
    if not compared and not notes:
        lines += ["", "_No set here has a published figure (the paper's are for AudioCaps, Clotho, ESC-50, "
                  "UrbanSound8K, VGGSound, FSD50K); ingest one to compare._"]
    return lines + [""]


def experiments_table(root: Path, columns: list[str]) -> list[str]:
    """One row per DVC experiment (and the workspace/baseline) from ``dvc exp show --json``."""
    try:
        proc = subprocess.run(["dvc", "exp", "show", "--json"], cwd=root, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.warning("dvc exp show failed (%s); report has no experiments table", exc)
        return []
    if proc.returncode != 0 or not proc.stdout.strip():
        logger.warning("dvc exp show failed: %s", proc.stderr.strip()[-500:])
        return []
    rows = []
    for name, params, metrics in iter_experiments(json.loads(proc.stdout)):
        flat = {f"{file_key}:{k}": v for file_key, values in metrics.items() for k, v in values.items()}
        changed = ", ".join(f"{k}={params[k]}" for k in ("fusion", "audio_encoder", "text_encoder",
                                                           "caption_augmentation", "train_sets") if k in params)
        rows.append([name, changed] + [_pct(_find(flat, c)) for c in columns])
    if not rows:
        return []
    return ["## Experiments (`dvc exp show`)", ""] + markdown_table(["experiment", "switches"] + columns, rows) + [""]


def _find(flat: dict[str, Any], metric: str) -> Any:
    """The value of ``metric`` (``file:metric`` or ``file:<set>.metric``), whole-set figures before
    fold or duration-bucket ones (``<set>.dur_gt10s.top1``) and never a longer name (``balanced_top1``)."""
    hits = sorted((key.count("."), key) for key in flat
                  if key.rpartition(":")[2] == metric or key.endswith("." + metric))
    return flat[hits[0][1]] if hits else None


#: Executor states of experiments whose metrics are not their own yet (a queued or running
#: experiment shows its baseline's committed metrics) or never will be.
UNFINISHED_STATES = frozenset({"queued", "running", "failed"})


def iter_experiments(data: Any, finished_only: bool = True) -> Iterable[tuple[str, dict[str, Any], dict[str, dict[str, Any]]]]:
    """(name, params.yaml values, {metrics file: values}) for every commit/experiment in DVC's JSON;
    with ``finished_only``, experiments still queued or running, or failed, are left out."""
    def visit(node: Any, state: str | None) -> Iterable[tuple[str, dict[str, Any], dict[str, dict[str, Any]]]]:
        if isinstance(node, list):
            for item in node:
                yield from visit(item, state)
        elif isinstance(node, dict):
            state = ((node.get("executor") or {}).get("state") or state) if "executor" in node else state
            data_node = node.get("data")
            if isinstance(data_node, dict) and ("metrics" in data_node or "params" in data_node) \
                    and not (finished_only and state in UNFINISHED_STATES):
                name = node.get("name") or data_node.get("name") or str(node.get("rev", "?"))[:7]
                params = ((data_node.get("params") or {}).get("params.yaml") or {}).get("data") or {}
                metrics = {file: (entry or {}).get("data") or {} for file, entry in (data_node.get("metrics") or {}).items()}
                yield name, params, metrics
            for key in ("experiments", "revs"):
                if key in node:
                    yield from visit(node[key], state)
    yield from visit(data, None)


def build_report(root: Path, with_experiments: bool = True) -> str:
    metrics = load_metrics(root)
    lines = ["# CLAP pipeline report", "",
             "Written by the `report` stage from reports/ and `dvc exp show`; figures in percent.", ""]
    if "train" in metrics:
        train = metrics["train"]
        lines += ["## Training", ""] + markdown_table(
            ["steps", "final loss", "val t2a mAP@10", "val t2a R@1", "val a2t mAP@10", "samples/s"],
            [[str(train.get("steps")), f"{train.get('final_loss', float('nan')):.3f}", _pct(train.get("val_t2a_map10")),
              _pct(train.get("val_t2a_r1")), _pct(train.get("val_a2t_map10")),
              f"{train.get('mean_samples_per_s', float('nan')):.1f}"]]) + [""]
    if "retrieval" in metrics:
        lines += section_lines("Retrieval", "retrieval", metrics["retrieval"],
                               ["t2a_r1", "t2a_r5", "t2a_r10", "t2a_map10", "a2t_r1", "a2t_r5", "a2t_r10", "a2t_map10",
                                "a2t_map10_laion"])
        lines += ["_a2t_map10_laion: audio->text mAP@10 computed as the reference code does (caption ranks unsorted), "
                  "the variant the paper's published a2t mAP@10 figures use; a2t_map10 is the textbook one._", ""]
    if "zeroshot" in metrics:
        lines += section_lines("Zero-shot classification", "zeroshot", metrics["zeroshot"], ["top1", "top5"])
    if "finetune" in metrics:
        lines += section_lines("Supervised fine-tune", "finetune", metrics["finetune"], ["top1", "top5", "map"])
    if with_experiments:
        lines += experiments_table(root, ["val_t2a_map10", "t2a_r1", "top1"])
    return "\n".join(lines).rstrip() + "\n"
