"""Accounting for an evaluation set: every clip its metadata lists is either scored or listed with why not.

A set's metadata is the full list of its clips: for an ingested set (``<source>/<split>`` of the
shard index) the rows of the ingest manifest (``data/manifest/ingest.jsonl``, written before any clip
is dropped), for a native folder its own metadata file (``meta/esc50.csv`` ...). A clip of the set
that is not scored is reported with the stage that left it out and the reason:

* ``normalize``: quarantined upstream (``reports/data/quarantine.csv``, with normalize's reason);
* ``upstream``: missing from the shard set for a reason no report records;
* ``eval``: left out at evaluation (overlap with training data, unreadable, not single-label).

A set scored on fewer clips (or classes) than its metadata lists is *partial*: its metrics carry
``complete: false`` with the expected and scored counts, and the report never puts it beside a
published figure.

Metrics are also split by clip duration (:data:`DURATION_BUCKETS`): 10 s or less, and longer (the
reference's 10 s chunk of 480,000 samples at 48 kHz; longer clips are the ones feature fusion is for).
"""

from __future__ import annotations

import argparse
import csv
import logging
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clap.data.manifest import ManifestRow, iter_manifest
from clap.eval.embeddings import DroppedClip

log = logging.getLogger(__name__)

DEFAULT_INGEST_MANIFEST = Path("data/manifest/ingest.jsonl")
DEFAULT_QUARANTINE = Path("reports/data/quarantine.csv")
#: Longest clip of the short bucket, in seconds (the reference's 10 s chunk).
CHUNK_SECONDS = 10.0
DURATION_BUCKETS = ("dur_le10s", "dur_gt10s")
DROPPED_COLUMNS = ["set", "id", "stage", "reason", "where"]


def duration_bucket(seconds: float) -> str:
    """``dur_le10s`` for clips of 10 s or less, ``dur_gt10s`` for longer ones."""
    return DURATION_BUCKETS[1] if seconds > CHUNK_SECONDS else DURATION_BUCKETS[0]


def bucket_masks(durations: Sequence[float]) -> dict[str, np.ndarray]:
    """One boolean mask per duration bucket over ``durations`` (buckets with no clip are left out)."""
    names = np.array([duration_bucket(float(d)) for d in durations])
    return {bucket: names == bucket for bucket in DURATION_BUCKETS if (names == bucket).any()}


def read_quarantine(path: str | Path | None) -> dict[str, str]:
    """``{clip id: reason}`` from normalize's quarantine CSV (columns ``id, path, reason``); {} if absent."""
    if path is None or not Path(path).is_file():
        if path is not None:
            log.warning("%s not found: clips quarantined upstream cannot be named (run `dvc repro normalize`)", path)
        return {}
    with Path(path).open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"id", "reason"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)} (expected id, path, reason as normalize writes)")
        return {row["id"]: row["reason"] for row in reader if row.get("id")}


@dataclass
class IngestMetadata:
    """The ingest manifest's rows, by ``<source>/<split>``: what every ingested set should hold."""

    sets: dict[str, list[ManifestRow]] = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def read(cls, path: str | Path | None) -> "IngestMetadata":
        if path is None:
            log.warning("no ingest manifest given: clips dropped before the shards cannot be accounted for")
            return cls()
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: ingest manifest not found (run `dvc repro ingest`, or pass "
                                    "--ingest-manifest none to account only for clips dropped at evaluation)")
        sets: dict[str, list[ManifestRow]] = {}
        for row in iter_manifest(path):
            sets.setdefault(f"{row.source}/{row.split}", []).append(row)
        return cls(sets=sets, path=Path(path))

    def rows(self, set_name: str) -> list[ManifestRow] | None:
        """The set's rows, or None when no manifest was read (nothing known beyond the shards)."""
        return self.sets.get(set_name, []) if self.path is not None else None


def upstream_drops(
    set_name: str, expected: Iterable[ManifestRow], seen_ids: set[str], quarantine: dict[str, str],
) -> list[DroppedClip]:
    """The expected rows that never reached evaluation, each with normalize's reason when it has one."""
    out = []
    for row in expected:
        if row.id in seen_ids:
            continue
        if row.id in quarantine:
            out.append(DroppedClip(set_name, row.id, row.path, f"quarantined by normalize: {quarantine[row.id]}",
                                   stage="normalize"))
        else:
            out.append(DroppedClip(set_name, row.id, row.path, "listed by the set's metadata but not in its shards "
                                   "(dropped before evaluation; see reports/data/)", stage="upstream"))
    if out:
        log.warning("%s: %d clip(s) of the set's metadata were dropped before evaluation (%d quarantined by "
                    "normalize); the set is scored as partial", set_name, len(out),
                    sum(d.stage == "normalize" for d in out))
    return out


def completeness(clips_expected: int, clips_scored: int, classes_expected: int | None = None,
                 classes_scored: int | None = None) -> dict[str, Any]:
    """``complete`` (bool) and the counts it is decided on: a set scored on every clip (and class) its
    metadata lists is complete; otherwise it is partial and not comparable with a published figure."""
    out: dict[str, Any] = {"clips_expected": clips_expected, "clips_scored": clips_scored}
    complete = clips_scored >= clips_expected
    if classes_expected is not None and classes_scored is not None:
        out.update(classes_expected=classes_expected, classes_scored=classes_scored)
        complete = complete and classes_scored >= classes_expected
    out["complete"] = bool(complete)
    return out


def stage_counts(dropped: Iterable[DroppedClip]) -> dict[str, int]:
    """``quarantined`` (normalize) and ``missing_upstream`` (no recorded reason) counts of dropped clips."""
    dropped = list(dropped)
    return {"quarantined": sum(d.stage == "normalize" for d in dropped),
            "missing_upstream": sum(d.stage == "upstream" for d in dropped)}


def partial_message(name: str, counts: dict[str, Any]) -> str:
    """One line saying what a partial set lacks, for logs and the report."""
    text = f"{name}: partial, {counts['clips_scored']} of {counts['clips_expected']} clips scored"
    if "classes_expected" in counts:
        text += f", {counts['classes_scored']} of {counts['classes_expected']} classes"
    return text


@dataclass
class UpstreamRecords:
    """What the data stages recorded: every ingested set's metadata and normalize's quarantine."""

    metadata: IngestMetadata = field(default_factory=IngestMetadata)
    quarantine: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, ingest_manifest: str | Path | None, quarantine_csv: str | Path | None) -> "UpstreamRecords":
        return cls(IngestMetadata.read(ingest_manifest), read_quarantine(quarantine_csv))


def add_upstream_arguments(parser: argparse.ArgumentParser) -> None:
    """``--ingest-manifest`` and ``--quarantine``: what the evaluation stages compare a set with."""
    parser.add_argument("--ingest-manifest", default=str(DEFAULT_INGEST_MANIFEST),
                        help="ingest manifest listing every clip of the ingested sets ('none': account only for "
                             "clips dropped at evaluation)")
    parser.add_argument("--quarantine", default=str(DEFAULT_QUARANTINE),
                        help="normalize's quarantine CSV (id, path, reason) naming why clips were dropped")


def upstream_from_args(args: argparse.Namespace, needed: bool = True) -> UpstreamRecords:
    """The records the arguments name; nothing is read when no set is an ingested one (``needed``)."""
    if not needed:
        return UpstreamRecords()
    none = str(args.ingest_manifest).lower() == "none"
    return UpstreamRecords.read(None if none else args.ingest_manifest, args.quarantine)


@dataclass(frozen=True)
class ReportPaths:
    """Where an eval stage writes under its report folder: ``<kind>.json`` (flat metrics of every set),
    ``<kind>/<set>/`` (tables) and ``<kind>_plots/<set>/`` (plot data and figures)."""

    metrics: Path
    tables: Path
    plots: Path

    @classmethod
    def fresh(cls, out_dir: str | Path, kind: str) -> "ReportPaths":
        """The paths under ``out_dir`` with both folders removed: they are replaced as a whole, so
        their contents never depend on the set names of an earlier run."""
        out = Path(out_dir)
        paths = cls(metrics=out / f"{kind}.json", tables=out / kind, plots=out / f"{kind}_plots")
        for folder in (paths.tables, paths.plots):
            shutil.rmtree(folder, ignore_errors=True)
        return paths
