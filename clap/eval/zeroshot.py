"""Zero-shot classification: every class becomes a sentence, every clip takes the closest sentence.

Each class label is put into a prompt template ("This is a sound of {label}.", the paper's) and
embedded by the text tower; a clip's prediction is the class whose text embedding is most similar
to its audio embedding. With several templates (a prompt ensemble, as CLIP does) a class's text
embeddings are averaged and the mean is L2-normalised again.

The classes are the set's full class list from its metadata (the ingest manifest for an ingested
set, the native metadata file for a folder), never only the classes of the clips that survived.
Reported per set: top-1 and top-5 accuracy, class-balanced top-1, per-class accuracy and the
confusion matrix, the chance levels (1/classes, 5/classes), the same accuracies per clip-duration
bucket (10 s or less, longer), whether the set is complete (:mod:`clap.eval.accounting`), and every
clip of the set that was not scored, with its reason:

* **quarantined** / **missing upstream**: dropped by the data stages before the shards were written.
* **excluded**: the clip overlaps the training data (:mod:`clap.eval.overlap`: same content hash as a
  training row of ``data/manifest/captions.jsonl``, or listed in ``exclude_ids``). Ingest already drops
  training copies of evaluation files, so with the pipeline's own model this is a safety net.
* **unreadable**: the audio file is missing or cannot be decoded.
* **not single-label**: a clip with no label or several labels cannot be scored as one class.

Folds (ESC-50, UrbanSound8K, the built-in ``builtin_esc``): ``folds: [1]`` keeps the clips of fold 1
(the released checkpoints' published ESC-50 figure); ``null`` keeps all. Clips without a fold (e.g.
VGGSound) are never filtered by it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clap.data.manifest import ManifestRow
from clap.eval.accounting import (
    DROPPED_COLUMNS,
    ReportPaths,
    UpstreamRecords,
    bucket_masks,
    completeness,
    partial_message,
    stage_counts,
    upstream_drops,
)
from clap.eval.datasets import (
    NATIVE_KINDS,
    EvalClip,
    EvalSetError,
    detect_kind,
    iter_shard_clips,
    native_clips,
    read_native_rows,
    read_shard_index,
    resolve_shard_set,
)
from clap.eval.embeddings import DroppedClip, embed_clips, embed_texts
from clap.eval.metrics import topk_accuracy
from clap.eval.overlap import TrainingOverlap
from clap.model.inference import DEFAULT_TEMPLATE, ClapInference
from clap.params import config_from_mapping
from clap.report.writer import write_metrics, write_rows

log = logging.getLogger(__name__)

_SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
TOP_KS = (1, 5)


# ------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class ZeroShotSetSpec:
    """One zero-shot set: ingested (``shards: <source>/<split>``) or native (``path`` [+ ``kind``]).

    ``folds`` overrides the section-wide folds for this set; ``split`` picks rows of a native
    layout that has splits (VGGSound: ``test`` by default).
    """

    name: str
    shards: str | None = None
    path: str | None = None
    kind: str | None = None
    folds: tuple[int, ...] | None = None
    split: str | None = None

    def __post_init__(self) -> None:
        if not _SET_NAME.match(self.name or ""):
            raise ValueError(f"zero-shot set name {self.name!r}: use letters, digits, '_' and '-' (it names report keys)")
        if (self.shards is None) == (self.path is None):
            raise ValueError(f"zero-shot set '{self.name}': give exactly one of `shards: <source>/<split>` or `path`")
        if self.kind is not None and self.kind not in NATIVE_KINDS:
            raise ValueError(f"zero-shot set '{self.name}': unknown kind '{self.kind}' (known: {', '.join(NATIVE_KINDS)})")

    @classmethod
    def from_params(cls, entry: Any) -> "ZeroShotSetSpec":
        if isinstance(entry, str):  # shorthand: "builtin_esc/test"
            return cls(name=entry.split("/", 1)[0], shards=entry)
        if not isinstance(entry, dict):
            raise ValueError(f"params.yaml eval_zeroshot.sets: each entry is a mapping or '<source>/<split>', got {entry!r}")
        where = f"params.yaml eval_zeroshot.sets '{entry.get('name', '?')}'"
        return config_from_mapping(cls, entry, where, parsers={"folds": parse_folds})

    @classmethod
    def from_cli(cls, text: str) -> "ZeroShotSetSpec":
        """``NAME=PATH`` (native folder, layout detected), ``NAME:KIND=PATH`` or ``NAME=shards:SOURCE/SPLIT``."""
        head, sep, value = text.partition("=")
        if not sep or not head or not value:
            raise ValueError(f"--set {text!r}: expected NAME=PATH, NAME:KIND=PATH or NAME=shards:SOURCE/SPLIT")
        name, _, kind = head.partition(":")
        if value.startswith("shards:"):
            return cls(name=name, shards=value[len("shards:"):])
        return cls(name=name, path=value, kind=kind or None)


def parse_folds(value: Any) -> tuple[int, ...] | None:
    """``null``/``all`` -> None; ``1``, ``[1, 2]`` or ``"1,2"`` -> a tuple of fold numbers."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "all", "none", "null")):
        return None
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
    try:
        return tuple(int(item) for item in items)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"folds {value!r}: expected null or a list of fold numbers, e.g. [1]") from exc


@dataclass(frozen=True)
class ZeroShotConfig:
    """The ``eval_zeroshot`` section of params.yaml."""

    sets: tuple[ZeroShotSetSpec, ...] = (ZeroShotSetSpec(name="builtin_esc", shards="builtin_esc/test"),)
    template: str = DEFAULT_TEMPLATE
    templates: tuple[str, ...] | None = None  # a prompt ensemble; replaces `template` when given
    folds: tuple[int, ...] | None = None
    batch_size: int = 32
    exclude_ids: tuple[str, ...] | str | None = None  # ids/file names/hashes, or a text file of them

    def __post_init__(self) -> None:
        if not self.sets:
            raise ValueError("params.yaml eval_zeroshot.sets: list at least one set")
        names = [s.name for s in self.sets]
        if len(set(names)) != len(names):
            raise ValueError(f"params.yaml eval_zeroshot.sets: names must be unique, got {names}")
        for template in self.prompt_templates:
            if "{label}" not in template:
                raise ValueError(f"params.yaml eval_zeroshot: template {template!r} has no {{label}} placeholder")
        if self.batch_size < 1:
            raise ValueError(f"params.yaml eval_zeroshot.batch_size: must be at least 1, got {self.batch_size}")

    @property
    def prompt_templates(self) -> tuple[str, ...]:
        return tuple(self.templates) if self.templates else (self.template,)

    @classmethod
    def from_params(cls, section: dict[str, Any] | None) -> "ZeroShotConfig":
        return config_from_mapping(cls, section or {}, "params.yaml eval_zeroshot", parsers={
            "sets": lambda sets: tuple(ZeroShotSetSpec.from_params(entry) for entry in sets or ()),
            "folds": parse_folds,
        })


# -------------------------------------------------------------------------------------- evaluation


def class_text_embeddings(engine: ClapInference, labels: Sequence[str], templates: Sequence[str]) -> Tensor:
    """[L, D] unit vectors, one per label: the mean over templates of the prompt embeddings, renormalised."""
    if not templates:
        raise ValueError("class_text_embeddings: no templates given")
    total = None
    for template in templates:
        embeds = embed_texts(engine, [template.format(label=label) for label in labels], desc="prompts")
        total = embeds if total is None else total + embeds
    return torch.nn.functional.normalize(total / len(templates), dim=-1)


@dataclass
class ZeroShotSetResult:
    """One set's predictions and what was left out."""

    name: str
    labels: list[str]        # [L] the set's full class list, from its metadata
    ids: list[str]           # [N] the evaluated clips
    targets: np.ndarray      # [N] class index of each evaluated clip
    scores: np.ndarray       # [N, L] cosine similarities
    folds: list[int | None]
    dropped: list[DroppedClip] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # excluded / unreadable / not_single_label / quarantined ...
    durations: np.ndarray | None = None  # [N] seconds of each evaluated clip
    clips_expected: int = 0  # clips (of the chosen folds) the metadata lists
    classes_expected: int = 0  # classes among those clips

    @property
    def predictions(self) -> np.ndarray:
        return self.scores.argmax(axis=1)

    def confusion(self) -> np.ndarray:
        """[L, L] counts: row = true class, column = predicted class."""
        n = len(self.labels)
        return np.bincount(self.targets * n + self.predictions, minlength=n * n).reshape(n, n)

    def accuracy(self, mask: np.ndarray | None = None) -> dict[str, float]:
        scores, targets = (self.scores, self.targets) if mask is None else (self.scores[mask], self.targets[mask])
        ks = tuple(min(k, len(self.labels)) for k in TOP_KS)
        acc = topk_accuracy(scores, targets.tolist(), ks)
        return {f"top{k}": acc[f"top{min(k, len(self.labels))}"] for k in TOP_KS}

    def prediction_rows(self) -> list[dict[str, Any]]:
        """One row per clip (set, id, actual, predicted, similarity): `dvc plots` draws its confusion
        template from these."""
        best = self.predictions
        return [
            {"set": self.name, "id": clip, "actual": self.labels[t], "predicted": self.labels[p],
             "similarity": float(self.scores[i, p])}
            for i, (clip, t, p) in enumerate(zip(self.ids, self.targets, best))
        ]

    def per_class(self) -> list[dict[str, Any]]:
        matrix = self.confusion()
        top5 = _hits_at(self.scores, self.targets, 5)
        rows = []
        for i, label in enumerate(self.labels):
            n = int(matrix[i].sum())
            wrong = matrix[i].copy()
            wrong[i] = 0
            rows.append({
                "set": self.name, "label": label, "n": n, "correct": int(matrix[i, i]),
                "top1": matrix[i, i] / n if n else None,
                "top5": float(top5[self.targets == i].mean()) if n else None,
                "most_confused_with": self.labels[int(wrong.argmax())] if wrong.sum() else "",
            })
        return rows

    def completeness(self) -> dict[str, Any]:
        """``complete``, ``clips_expected``/``clips_scored``, ``classes_expected``/``classes_scored``."""
        scored_classes = len(set(self.targets.tolist()))
        return completeness(max(self.clips_expected, len(self.ids)), len(self.ids),
                            max(self.classes_expected, scored_classes), scored_classes)

    def flat_metrics(self) -> dict[str, Any]:
        """``<set>.top1``, ``<set>.top5``, ``<set>.balanced_top1``, ``<set>.n``, counts, chance levels,
        completeness and the same accuracies per duration bucket (``<set>.dur_le10s.top1`` ...)."""
        n_classes = len(self.labels)
        acc = self.accuracy()
        per_class = [r["top1"] for r in self.per_class() if r["top1"] is not None]
        out: dict[str, Any] = {
            f"{self.name}.top1": acc["top1"],
            f"{self.name}.top5": acc["top5"],
            f"{self.name}.balanced_top1": float(np.mean(per_class)),
            f"{self.name}.n": int(self.targets.shape[0]),
            f"{self.name}.n_classes": n_classes,
            f"{self.name}.chance_top1": 1.0 / n_classes,
            f"{self.name}.chance_top5": min(5, n_classes) / n_classes,
        }
        out.update({f"{self.name}.{k}": v for k, v in sorted(self.counts.items())})
        out.update({f"{self.name}.{k}": v for k, v in self.completeness().items()})
        if self.durations is not None:
            for bucket, mask in bucket_masks(self.durations).items():
                out.update({f"{self.name}.{bucket}.{k}": v for k, v in self.accuracy(mask).items()})
                out[f"{self.name}.{bucket}.n"] = int(mask.sum())
        folds = sorted({f for f in self.folds if f is not None})
        if len(folds) > 1:
            fold_of = np.array([-1 if f is None else f for f in self.folds])
            for fold in folds:
                out[f"{self.name}.fold{fold}.top1"] = self.accuracy(fold_of == fold)["top1"]
        return out


def _hits_at(scores: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """Whether each target is within the top k (stable ranks, as clap.eval.metrics breaks ties)."""
    target_scores = scores[np.arange(len(targets)), targets][:, None]
    index = np.arange(scores.shape[1])[None, :]
    ranks = (scores > target_scores).sum(axis=1) + ((scores == target_scores) & (index < targets[:, None])).sum(axis=1)
    return ranks < k


def set_clips(spec: ZeroShotSetSpec, metadata: list[ManifestRow] | None, shard_root: str | Path,
              index: dict[str, Any] | None = None) -> tuple[Iterable[EvalClip], int | None]:
    """The clips of a set (its shards, or the native rows' files) and their count (None when unknown)."""
    if spec.shards is not None:
        shard_set = resolve_shard_set(shard_root, spec.shards, index)
        return iter_shard_clips(shard_set), shard_set.count
    return native_clips(metadata or []), len(metadata or [])


def set_metadata(spec: ZeroShotSetSpec, upstream: UpstreamRecords) -> list[ManifestRow] | None:
    """Every clip the set's metadata lists (all folds): the ingest manifest's rows of an ingested set,
    the native metadata's rows of a folder; None when an ingested set has no manifest to read."""
    if spec.shards is not None:
        return upstream.metadata.rows(spec.shards)
    return read_native_rows(spec.name, spec.path or "", spec.kind, spec.split)


def _in_folds(fold: int | None, folds: tuple[int, ...] | None) -> bool:
    return folds is None or fold is None or int(fold) in folds


def evaluate_zero_shot_set(
    engine: ClapInference, spec: ZeroShotSetSpec, config: ZeroShotConfig, overlap: TrainingOverlap,
    shard_root: str | Path = "data/shards", index: dict[str, Any] | None = None,
    upstream: UpstreamRecords | None = None,
) -> ZeroShotSetResult:
    """Select (folds), check (one label, no training overlap), embed and classify one set's clips among
    the set's full class list; every clip of its metadata that is not scored is listed with the reason."""
    upstream = upstream or UpstreamRecords()
    folds = spec.folds if spec.folds is not None else config.folds
    metadata = set_metadata(spec, upstream)
    expected = [row for row in metadata if _in_folds(row.fold, folds)] if metadata is not None else None
    clips, total = set_clips(spec, metadata, shard_root, index)
    total = len(expected) if spec.path is not None and expected is not None else total  # native: rows in the folds
    dropped: list[DroppedClip] = []
    counts = {"excluded": 0, "unreadable": 0, "not_single_label": 0}
    labels: set[str] = set()
    seen: set[str] = set()
    unhashed = 0

    def selected() -> Iterator[EvalClip]:
        nonlocal unhashed
        for clip in clips:
            if not _in_folds(clip.fold, folds):
                continue
            seen.add(clip.id)
            if len(clip.labels) != 1:
                counts["not_single_label"] += 1
                dropped.append(DroppedClip(spec.name, clip.id, clip.where,
                                           f"{len(clip.labels)} labels; zero-shot classification needs exactly one"))
                continue
            labels.add(clip.labels[0])
            why = overlap.reason(clip)
            unhashed += not clip.sha256
            if why:
                counts["excluded"] += 1
                dropped.append(DroppedClip(spec.name, clip.id, clip.where, why))
                continue
            yield clip

    audio, kept, unreadable = embed_clips(engine, selected(), set_name=spec.name, batch_size=config.batch_size, total=total)
    counts["unreadable"] = len(unreadable)
    if unhashed:
        log.warning("%s: %d clip(s) have no content hash (not in the manifest): their overlap with training data "
                    "was checked against exclude_ids only", spec.name, unhashed)
    dropped.extend(unreadable)
    if expected is not None:
        dropped.extend(upstream_drops(spec.name, expected, seen, upstream.quarantine))
    counts.update(stage_counts(dropped))
    if not kept:
        raise EvalSetError(f"zero-shot set '{spec.name}': no clip left to evaluate ({counts}); see the dropped clips")
    # the class list is the metadata's (all folds), so clips dropped upstream do not shrink it
    full = {row.labels[0] for row in metadata if len(row.labels) == 1} if metadata is not None else set()
    class_names = sorted(full | labels)
    text = class_text_embeddings(engine, class_names, config.prompt_templates)
    position = {label: i for i, label in enumerate(class_names)}
    result = ZeroShotSetResult(
        name=spec.name, labels=class_names, ids=[clip.id for clip in kept],
        targets=np.array([position[clip.labels[0]] for clip in kept], dtype=np.int64),
        scores=(audio @ text.T).numpy().astype(np.float64),
        folds=[clip.fold for clip in kept], dropped=dropped, counts=counts,
        durations=np.array([clip.duration for clip in kept]),
        clips_expected=len(expected) if expected is not None else len(seen),
        classes_expected=len({r.labels[0] for r in expected if len(r.labels) == 1} | labels) if expected is not None
        else len(labels),
    )
    acc, state = result.accuracy(), result.completeness()
    log.info("%s: %d clips, %d classes: top-1 %.4f, top-5 %.4f (chance %.4f); excluded %d, unreadable %d",
             spec.name, len(kept), len(class_names), acc["top1"], acc["top5"], 1 / len(class_names),
             counts["excluded"], counts["unreadable"])
    if not state["complete"]:
        log.warning("%s; the dropped clips and reasons are in the set's dropped.csv", partial_message(spec.name, state))
    return result


def check_zero_shot_sets(config: ZeroShotConfig, shard_root: str | Path = "data/shards") -> dict[str, Any] | None:
    """Fail early (before a model loads) on a set that is not in the shard index or a folder with no
    known layout; returns the shard index when any set needs it."""
    index = read_shard_index(shard_root) if any(s.shards for s in config.sets) else None
    for spec in config.sets:
        if spec.shards is not None:
            resolve_shard_set(shard_root, spec.shards, index)
        else:
            root = Path(spec.path or "")
            if not root.is_dir():
                raise EvalSetError(f"{root}: folder of zero-shot set '{spec.name}' not found (fix its path)")
            if spec.kind is None:
                detect_kind(root)
    return index


def evaluate_zero_shot(
    engine: ClapInference, config: ZeroShotConfig, overlap: TrainingOverlap, shard_root: str | Path = "data/shards",
    upstream: UpstreamRecords | None = None,
) -> list[ZeroShotSetResult]:
    """Every configured set in order; all sets are checked before the first is embedded."""
    index = check_zero_shot_sets(config, shard_root)
    return [evaluate_zero_shot_set(engine, spec, config, overlap, shard_root, index, upstream) for spec in config.sets]


def write_zero_shot_reports(results: Sequence[ZeroShotSetResult], out_dir: str | Path) -> ReportPaths:
    """Under ``out_dir``: ``zeroshot.json`` (flat metrics of every set), and per set
    ``zeroshot/<set>/per_class.csv`` and ``dropped.csv`` (every clip of the set not scored, with the
    stage and reason), ``zeroshot_plots/<set>/predictions.csv`` (one row per clip, for `dvc plots`'
    confusion template) and ``confusion.png``. Both folders are replaced as a whole, so their paths never
    depend on the set names in params."""
    from clap.report.figures import plot_confusion  # noqa: PLC0415 - matplotlib only when writing

    paths = ReportPaths.fresh(out_dir, "zeroshot")
    metrics: dict[str, Any] = {}
    for r in results:
        metrics.update(r.flat_metrics())
        write_rows(paths.tables / r.name / "per_class.csv", r.per_class(),
                   ["set", "label", "n", "correct", "top1", "top5", "most_confused_with"])
        write_rows(paths.tables / r.name / "dropped.csv", [asdict(d) for d in r.dropped], DROPPED_COLUMNS)
        write_rows(paths.plots / r.name / "predictions.csv", r.prediction_rows(),
                   ["set", "id", "actual", "predicted", "similarity"])
        state = r.completeness()
        title = f"Zero-shot {r.name}: top-1 {r.accuracy()['top1']:.3f} ({len(r.ids)} clips)"
        if not state["complete"]:
            title += f"\nPARTIAL: {state['clips_scored']}/{state['clips_expected']} clips, " \
                     f"{state['classes_scored']}/{state['classes_expected']} classes"
        plot_confusion(paths.plots / r.name / "confusion.png", r.confusion(), r.labels, title=title)
    write_metrics(paths.metrics, metrics)
    return paths
