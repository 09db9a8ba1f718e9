"""The ingest stage's library: sources -> one manifest of every clip, train/eval overlap removed.

For each source in params.yaml: mirror it from S3 when its path is an ``s3://`` URI, read its
layout with the adapter of its kind, then for every row read the audio header (duration, sample
rate, channels) and hash the file. Train rows that overlap any val/test row (any source) are dropped
from training, as in the paper: the same file bytes, or the same Freesound or YouTube id where the
native layouts carry one (:mod:`clap.data.overlap`); every match is a line of
``reports/data/overlaps.csv``. (Re-encoded copies are caught after decoding, by normalize.) The
result is validated with GX before the manifest is written.

A file whose header cannot be read is kept with duration 0 (normalize quarantines it with the
reason); a file that does not exist fails validation, unless its source says ``on_missing: skip``,
in which case the row is left out and listed in the report.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from tqdm.auto import tqdm

from clap.audio import AudioDecodeError, audio_info
from clap.data.manifest import EVAL_SPLITS, KNOWN_SPLITS, TRAIN_SPLITS, ManifestRow, sha256_file, write_manifest
from clap.data.overlap import OverlapMatch, dropped_ids, find_overlaps, write_overlaps
from clap.data.s3 import MirrorResult, S3Settings, is_s3_uri, mirror_prefix
from clap.data.sources import AdapterContext, SourceSpec, parse_sources, read_source
from clap.data.validation import DataValidationError, ValidationReport, validate_dataframe
from clap.params import load_section

log = logging.getLogger(__name__)

SUITE_NAME = "ingest"
#: How many ids the report and log list per finding (the counts are always complete).
MAX_LISTED_IDS = 1000


@dataclass
class IngestConfig:
    """params.yaml ``sources`` and ``ingest``."""

    sources: list[SourceSpec]
    s3_cache: Path = Path("data/raw/s3cache")  # local mirrors of s3:// sources
    extract_dir: Path = Path("data/raw/extracted")  # audio unpacked from WebDataset tars
    workers: int = 4  # threads reading headers and hashing files
    s3: S3Settings = field(default_factory=S3Settings)
    progress: bool = True

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "IngestConfig":
        """``sources`` and the ``ingest`` section (its ``s3_*`` keys are :class:`S3Settings`)."""
        ingest = params.get("ingest") or {}
        fixed = {"sources": parse_sources(params.get("sources")), "s3": S3Settings.from_params(ingest)}
        return load_section(params, "ingest", cls, fixed=fixed, fixed_at="the sources list and the s3_* keys",
                            ignore=S3Settings.param_keys())


@dataclass
class IngestOutputs:
    """Where a run writes; defaults are the DVC stage's outs."""

    manifest: Path = Path("data/manifest/ingest.jsonl")
    report: Path = Path("reports/data/ingest.json")
    gx_dir: Path = Path("reports/data/gx/ingest")
    overlaps: Path | None = None  # every overlap match; None: overlaps.csv beside the report

    @property
    def overlaps_csv(self) -> Path:
        return self.overlaps if self.overlaps is not None else self.report.parent / "overlaps.csv"


@dataclass
class SourceResult:
    spec: SourceSpec
    rows: list[ManifestRow]
    missing_skipped: list[str] = field(default_factory=list)
    mirror: MirrorResult | None = None
    origins: dict[str, tuple[str, ...]] = field(default_factory=dict)  # id -> freesound:/youtube: keys


@dataclass
class OverlapExclusion:
    kept: list[ManifestRow]
    dropped: dict[str, str]  # train id -> the first eval id it matched
    dropped_rows: list[ManifestRow] = field(default_factory=list)
    matches: list[OverlapMatch] = field(default_factory=list)  # every (train, eval, reason) match


@dataclass
class IngestResult:
    rows: list[ManifestRow]
    report: dict[str, Any]
    validation: ValidationReport


def read_sources(config: IngestConfig) -> list[SourceResult]:
    """Every configured source as rows (S3 sources mirrored first); missing files handled per source."""
    ctx = AdapterContext(extract_dir=config.extract_dir, progress=config.progress)
    results = []
    for spec in config.sources:
        mirror = None
        root = Path(spec.path)
        if is_s3_uri(spec.path):
            mirror = mirror_prefix(
                spec.path,
                config.s3_cache,
                endpoint_url=spec.options.get("endpoint_url"),
                profile=spec.options.get("profile"),
                settings=config.s3,
                progress=config.progress,
            )
            root = mirror.local_dir
        rows = read_source(root, spec, ctx)
        origins = {row.id: ctx.origins[row.id] for row in rows if row.id in ctx.origins}
        result = SourceResult(spec=spec, rows=rows, mirror=mirror, origins=origins)
        missing = [row for row in rows if not Path(row.path).is_file()]
        if missing and spec.options.get("on_missing", "fail") == "skip":
            gone = {row.id for row in missing}
            result.rows = [row for row in rows if row.id not in gone]
            result.missing_skipped = sorted(gone)
            log.warning(
                "source '%s': %d clip(s) have no audio file and are skipped (on_missing: skip), e.g. %s",
                spec.name, len(gone), ", ".join(sorted(gone)[:5]),
            )
        elif missing:
            log.error(
                "source '%s': %d clip(s) have no audio file, e.g. %s (validation will fail; set `on_missing: skip` "
                "on the source to leave them out)", spec.name, len(missing), ", ".join(r.path for r in missing[:5]),
            )
        results.append(result)
    return results


def _describe(row: ManifestRow) -> str | None:
    """Fill the row's audio facts in place; returns why the header could not be read, if so."""
    path = Path(row.path)
    if not path.is_file():
        return None  # reported by the validation suite
    row.sha256 = sha256_file(path)
    try:
        row.duration, row.sample_rate, row.channels = audio_info(path)
    except AudioDecodeError as exc:
        row.duration, row.sample_rate, row.channels = 0.0, 0, 0
        return str(exc)
    return None


def describe_audio(rows: list[ManifestRow], workers: int = 4, progress: bool = True) -> dict[str, str]:
    """Header facts and content hash for every row (in place); returns ``{id: reason}`` for unreadable files."""
    unreadable: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        reasons = pool.map(_describe, rows)
        progress_bar = tqdm(zip(rows, reasons), total=len(rows), desc="read headers", unit="file", disable=not progress)
        for row, reason in progress_bar:
            if reason:
                unreadable[row.id] = reason
    for row_id, reason in sorted(unreadable.items())[:20]:
        log.warning("%s: kept with duration 0 for normalize to quarantine: %s", row_id, reason)
    return unreadable


def exclude_overlap(rows: list[ManifestRow], origins: Mapping[str, tuple[str, ...]] | None = None) -> OverlapExclusion:
    """Drop train rows that share, with any val/test row of any source, their file bytes (sha256) or an
    origin key (``freesound:<id>``, ``youtube:<id>``, from ``origins``: row id -> keys)."""
    origins = origins or {}

    def keys(row: ManifestRow) -> list[tuple[str, str]]:
        found = [("same_file", row.sha256)] if row.sha256 else []
        return found + [(f"{key.partition(':')[0]}_id", key) for key in origins.get(row.id, ())]

    matches = find_overlaps(rows, keys)
    gone = dropped_ids(matches)
    dropped: dict[str, str] = {}
    for match in matches:
        dropped.setdefault(match.train.id, match.eval.id)
    return OverlapExclusion(
        kept=[r for r in rows if r.id not in gone],
        dropped=dict(sorted(dropped.items())),
        dropped_rows=[r for r in rows if r.id in gone],
        matches=matches,
    )


def validation_frame(rows: list[ManifestRow]) -> Any:
    """One line per row with the columns the ingest suite checks."""
    import pandas as pd

    eval_hashes = {r.sha256 for r in rows if r.split in EVAL_SPLITS and r.sha256}
    records = [
        {
            "id": r.id,
            "source": r.source,
            "split": r.split,
            "path": r.path,
            "file_exists": Path(r.path).is_file(),
            "text_items": sum(1 for t in r.captions + r.labels if t.strip()),
            "sha256": r.sha256,
            "duration": r.duration,
            "train_eval_overlap": r.split in TRAIN_SPLITS and bool(r.sha256) and r.sha256 in eval_hashes,
        }
        for r in rows
    ]
    columns = ["id", "source", "split", "path", "file_exists", "text_items", "sha256", "duration", "train_eval_overlap"]
    return pd.DataFrame.from_records(records, columns=columns)


def ingest_expectations() -> list:
    """The ingest suite: unique ids, some text per row, files present, known splits, no overlap left."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToBeUnique(column="id"),
        gxe.ExpectColumnValuesToBeBetween(column="text_items", min_value=1),
        gxe.ExpectColumnValuesToBeInSet(column="file_exists", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(KNOWN_SPLITS)),
        gxe.ExpectColumnValuesToBeInSet(column="train_eval_overlap", value_set=[False]),
    ]


def _listed(ids: list[str]) -> list[str]:
    return ids[:MAX_LISTED_IDS]


def build_report(
    sources: list[SourceResult],
    rows: list[ManifestRow],
    overlap: OverlapExclusion,
    unreadable: dict[str, str],
    validation: ValidationReport,
) -> dict[str, Any]:
    counts: dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        counts[row.source][row.split] += 1
    dropped_by_source: Counter = Counter(r.source for r in overlap.dropped_rows)
    matches_by_reason: Counter = Counter(m.code for m in overlap.matches)
    return {
        "rows": len(rows),
        "hours": round(sum(r.duration for r in rows) / 3600.0, 4),
        "counts": {source: dict(sorted(c.items())) for source, c in sorted(counts.items())},
        "overlap": {
            "dropped": len(overlap.dropped),
            "dropped_by_source": dict(sorted(dropped_by_source.items())),
            "matches_by_reason": dict(sorted(matches_by_reason.items())),
            "ids": _listed(list(overlap.dropped)),
            "matches": dict(list(overlap.dropped.items())[:MAX_LISTED_IDS]),
        },
        "unreadable": {
            "count": len(unreadable),
            "ids": _listed(sorted(unreadable)),
            "reasons": dict(sorted(unreadable.items())[:MAX_LISTED_IDS]),
        },
        "missing_skipped": {
            "count": sum(len(s.missing_skipped) for s in sources),
            "ids": _listed([i for s in sources for i in s.missing_skipped]),
        },
        "sources": {
            s.spec.name: {
                "kind": s.spec.kind,
                "path": s.spec.path,
                "rows_read": len(s.rows) + len(s.missing_skipped),
                **({"s3": s.mirror.to_json()} if s.mirror else {}),
            }
            for s in sources
        },
        "validation": {
            "suite": validation.suite_name,
            "success": validation.success,
            "result": str(validation.result_path),
            "failed": [f.describe() for f in validation.failures],
        },
    }


def run_ingest(config: IngestConfig, outputs: IngestOutputs | None = None) -> IngestResult:
    """The ingest stage: read sources, describe audio, drop overlap, validate, write report and manifest.

    Raises ``DataValidationError`` (after writing the report and GX result, before the manifest)
    when the suite fails.
    """
    outputs = outputs or IngestOutputs()
    sources = read_sources(config)
    rows = [row for source in sources for row in source.rows]
    log.info("read %d clips from %d source(s); reading headers and hashing", len(rows), len(sources))
    unreadable = describe_audio(rows, config.workers, config.progress)

    overlap = exclude_overlap(rows, {i: k for source in sources for i, k in source.origins.items()})
    write_overlaps(overlap.matches, outputs.overlaps_csv)
    if overlap.dropped:
        log.warning(
            "dropped %d train clip(s) that are also in val/test (every match and its reason: %s): %s",
            len(overlap.dropped), outputs.overlaps_csv,
            ", ".join(f"{m.train.id} ({m.code} {m.eval.id})" for m in overlap.matches[:10]),
        )
    rows = overlap.kept

    validation = validate_dataframe(
        validation_frame(rows), SUITE_NAME, ingest_expectations(), outputs.gx_dir, raise_on_failure=False
    )
    report = build_report(sources, rows, overlap, unreadable, validation)
    outputs.report.parent.mkdir(parents=True, exist_ok=True)
    outputs.report.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    if not validation.success:
        raise DataValidationError(validation)
    count = write_manifest(rows, outputs.manifest)
    log.info(
        "wrote %d clips (%.2f h) -> %s; overlap dropped %d, unreadable %d",
        count, report["hours"], outputs.manifest, len(overlap.dropped), len(unreadable),
    )
    return IngestResult(rows=rows, report=report, validation=validation)
