"""Zero-shot classification: every class becomes a sentence, every clip takes the closest sentence.

Each class label is put into a prompt template ("This is a sound of {label}.", the paper's) and
embedded by the text tower; a clip's prediction is the class whose text embedding is most similar
to its audio embedding. With several templates (a prompt ensemble, as CLIP does) a class's text
embeddings are averaged and the mean is L2-normalised again.

Reported per set: top-1 and top-5 accuracy, class-balanced top-1, per-class accuracy and the
confusion matrix, the chance levels (1/classes, 5/classes) and the counts of clips left out, each
with its reason:

* **excluded**: the clip overlaps the training data. The overlap is by content: a clip whose
  sha256 (the ingest hash in the manifest; for native folders the hash of the file) equals that of
  any training row of the manifest (``data/manifest/captions.jsonl``). Ingest already drops training
  copies of evaluation files, so with the pipeline's own model this is a safety net; for a model
  trained elsewhere, ``exclude_ids`` lists clips known to be in its training data (clip ids, file
  names, file stems or sha256 hashes; inline or in a text file, one per line).
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

from clap.data.manifest import TRAIN_SPLITS, iter_manifest
from clap.eval.datasets import (
    NATIVE_KINDS,
    EvalClip,
    EvalSetError,
    content_hash,
    detect_kind,
    iter_shard_clips,
    native_clips,
    read_native_rows,
    read_shard_index,
    resolve_shard_set,
)
from clap.eval.embeddings import DroppedClip, embed_clips, embed_texts
from clap.eval.metrics import topk_accuracy
from clap.model.inference import DEFAULT_TEMPLATE, ClapInference
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
        unknown = set(entry) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"params.yaml eval_zeroshot.sets '{entry.get('name', '?')}': unknown keys {sorted(unknown)}")
        values = dict(entry)
        if values.get("folds") is not None:
            values["folds"] = parse_folds(values["folds"])
        return cls(**values)

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
        values = dict(section or {})
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"params.yaml eval_zeroshot: unknown keys {sorted(unknown)} (known: {sorted(cls.__dataclass_fields__)})")
        if "sets" in values:
            values["sets"] = tuple(ZeroShotSetSpec.from_params(e) for e in values["sets"] or ())
        if values.get("templates") is not None:
            templates = values["templates"]
            values["templates"] = tuple([templates] if isinstance(templates, str) else templates) or None
        values["folds"] = parse_folds(values.get("folds"))
        if isinstance(values.get("exclude_ids"), list):
            values["exclude_ids"] = tuple(str(v) for v in values["exclude_ids"])
        return cls(**values)


# ---------------------------------------------------------------------------------------- exclusion


def read_exclude_ids(value: Sequence[str] | str | None) -> frozenset[str]:
    """``exclude_ids`` as a set of entries: inline list, or a text file (one per line, ``#`` comments)."""
    if value is None:
        return frozenset()
    if isinstance(value, str):
        path = Path(value)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: exclude_ids file not found (give a text file of ids, or a list in params.yaml)")
        lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
        return frozenset(line for line in lines if line)
    return frozenset(str(v).strip() for v in value if str(v).strip())


@dataclass
class TrainingOverlap:
    """Decides which evaluation clips must be left out because a model may have trained on them."""

    train_hashes: dict[str, str] = field(default_factory=dict)  # sha256 -> a training clip id
    known_hashes: dict[str, str] = field(default_factory=dict)  # clip id -> sha256 (ingest's)
    listed: frozenset[str] = frozenset()

    @classmethod
    def build(cls, manifest: str | Path | None, exclude_ids: Sequence[str] | str | None = None) -> "TrainingOverlap":
        """From the manifest's rows (training hashes; every row's hash by id) and ``exclude_ids``."""
        overlap = cls(listed=read_exclude_ids(exclude_ids))
        if manifest is None:
            log.warning("no manifest given: overlap with training data is checked only against exclude_ids")
            return overlap
        for row in iter_manifest(manifest):
            if not row.sha256:
                continue
            overlap.known_hashes[row.id] = row.sha256
            if row.split in TRAIN_SPLITS:
                overlap.train_hashes.setdefault(row.sha256, row.id)
        log.info("overlap check: %d training hashes from %s, %d listed exclusions", len(overlap.train_hashes),
                 manifest, len(overlap.listed))
        return overlap

    def reason(self, clip: EvalClip) -> str | None:
        """Why ``clip`` must be excluded, or None."""
        if not clip.sha256:
            clip.sha256 = self.known_hashes.get(clip.id, "")
        digest = content_hash(clip)
        if self.listed:
            names = {clip.id, clip.id.split("/", 1)[-1], digest}
            if isinstance(clip.audio, (str, Path)):  # a native file: its name may be listed too
                names |= {Path(clip.audio).name, Path(clip.audio).stem}
            hit = sorted(names & self.listed)
            if hit:
                return f"listed in exclude_ids ({hit[0]})"
        if digest and digest in self.train_hashes:
            return f"same audio as training clip {self.train_hashes[digest]} (sha256 {digest[:12]})"
        return None


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
    labels: list[str]
    ids: list[str]           # [N] the evaluated clips
    targets: np.ndarray      # [N] class index of each evaluated clip
    scores: np.ndarray       # [N, L] cosine similarities
    folds: list[int | None]
    dropped: list[DroppedClip] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # excluded / unreadable / not_single_label

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

    def flat_metrics(self) -> dict[str, float]:
        """``<set>.top1``, ``<set>.top5``, ``<set>.balanced_top1``, ``<set>.n``, counts and chance levels."""
        n_classes = len(self.labels)
        acc = self.accuracy()
        per_class = [r["top1"] for r in self.per_class() if r["top1"] is not None]
        out = {
            f"{self.name}.top1": acc["top1"],
            f"{self.name}.top5": acc["top5"],
            f"{self.name}.balanced_top1": float(np.mean(per_class)),
            f"{self.name}.n": int(self.targets.shape[0]),
            f"{self.name}.n_classes": n_classes,
            f"{self.name}.chance_top1": 1.0 / n_classes,
            f"{self.name}.chance_top5": min(5, n_classes) / n_classes,
        }
        out.update({f"{self.name}.{k}": v for k, v in sorted(self.counts.items())})
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


def set_clips(spec: ZeroShotSetSpec, shard_root: str | Path, index: dict[str, Any] | None = None) -> tuple[Iterable[EvalClip], int | None]:
    """The clips of a set and their count (for the progress bar; None when unknown)."""
    if spec.shards is not None:
        shard_set = resolve_shard_set(shard_root, spec.shards, index)
        return iter_shard_clips(shard_set), shard_set.count
    rows = read_native_rows(spec.name, spec.path or "", spec.kind, spec.split)
    return native_clips(rows), len(rows)


def evaluate_zero_shot_set(
    engine: ClapInference, spec: ZeroShotSetSpec, config: ZeroShotConfig, overlap: TrainingOverlap,
    shard_root: str | Path = "data/shards", index: dict[str, Any] | None = None,
) -> ZeroShotSetResult:
    """Select (folds), check (one label, no training overlap), embed and classify one set's clips."""
    folds = spec.folds if spec.folds is not None else config.folds
    clips, total = set_clips(spec, shard_root, index)
    dropped: list[DroppedClip] = []
    counts = {"excluded": 0, "unreadable": 0, "not_single_label": 0}
    labels: set[str] = set()
    unhashed = 0

    def selected() -> Iterator[EvalClip]:
        nonlocal unhashed
        for clip in clips:
            if folds is not None and clip.fold is not None and int(clip.fold) not in folds:
                continue
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
    if not kept:
        raise EvalSetError(f"zero-shot set '{spec.name}': no clip left to evaluate ({counts}); see the dropped clips")
    class_names = sorted(labels)
    text = class_text_embeddings(engine, class_names, config.prompt_templates)
    position = {label: i for i, label in enumerate(class_names)}
    result = ZeroShotSetResult(
        name=spec.name, labels=class_names, ids=[clip.id for clip in kept],
        targets=np.array([position[clip.labels[0]] for clip in kept], dtype=np.int64),
        scores=(audio @ text.T).numpy().astype(np.float64),
        folds=[clip.fold for clip in kept], dropped=dropped, counts=counts,
    )
    acc = result.accuracy()
    log.info("%s: %d clips, %d classes: top-1 %.4f, top-5 %.4f (chance %.4f); excluded %d, unreadable %d",
             spec.name, len(kept), len(class_names), acc["top1"], acc["top5"], 1 / len(class_names),
             counts["excluded"], counts["unreadable"])
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
) -> list[ZeroShotSetResult]:
    """Every configured set in order; all sets are checked before the first is embedded."""
    index = check_zero_shot_sets(config, shard_root)
    return [evaluate_zero_shot_set(engine, spec, config, overlap, shard_root, index) for spec in config.sets]


@dataclass(frozen=True)
class ZeroShotReportPaths:
    metrics: Path
    per_class: Path
    predictions: Path
    dropped: Path
    confusion: dict[str, Path]


def write_zero_shot_reports(results: Sequence[ZeroShotSetResult], out_dir: str | Path) -> ZeroShotReportPaths:
    """``zeroshot.json`` (flat metrics), ``zeroshot_per_class.csv``, ``zeroshot_predictions.csv`` (one row
    per clip), ``zeroshot_dropped.csv`` (every clip left out, with the reason) and
    ``confusion_<set>.png`` per set, under ``out_dir``."""
    from clap.report.figures import plot_confusion  # noqa: PLC0415 - matplotlib only when writing

    out = Path(out_dir)
    metrics: dict[str, float] = {}
    for result in results:
        metrics.update(result.flat_metrics())
    confusion = {
        r.name: plot_confusion(out / f"confusion_{r.name}.png", r.confusion(), r.labels,
                               title=f"Zero-shot {r.name}: top-1 {r.accuracy()['top1']:.3f} ({r.targets.shape[0]} clips)")
        for r in results
    }
    return ZeroShotReportPaths(
        metrics=write_metrics(out / "zeroshot.json", metrics),
        per_class=write_rows(out / "zeroshot_per_class.csv", [row for r in results for row in r.per_class()],
                             ["set", "label", "n", "correct", "top1", "top5", "most_confused_with"]),
        predictions=write_rows(out / "zeroshot_predictions.csv", [row for r in results for row in r.prediction_rows()],
                               ["set", "id", "actual", "predicted", "similarity"]),
        dropped=write_rows(out / "zeroshot_dropped.csv", [asdict(d) for r in results for d in r.dropped],
                           ["set", "id", "where", "reason"]),
        confusion=confusion,
    )
