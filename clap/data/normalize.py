"""Normalisation: every clip becomes a 48 kHz mono 16-bit FLAC, or is quarantined with a reason.

One input row -> one of two outcomes, decided by :func:`normalize_clip`:

* written: decoded (clap.audio.load_audio), downmixed to mono (channel mean), resampled with
  ``torchaudio.functional.resample``, quantised to int16 (x32768, round, clip) and written
  as FLAC to ``<audio_root>/<source>/<split>/<clip>.flac``; the manifest row gets the new path,
  duration, sample rate and channel count.
* quarantined: missing, empty, undecodable, zero samples, non-finite samples, silent, or longer than
  ``max_duration`` (checked on the file header first, so a file far too long is never decoded).
  Short clips are valid data (the model's front-end repeat-pads them, as the reference does); a
  ``min_duration`` is opt-in (default null). The row lands in the quarantine CSV
  (:data:`QUARANTINE_COLUMNS`) with its reason code and a sentence saying why.
* dropped as overlap: a train clip whose decoded 48 kHz int16 samples equal those of a val/test
  clip (a lossless re-encode of an evaluation clip: :mod:`clap.data.overlap`, code ``same_audio``);
  each match is a line of the audio overlaps CSV.

The run as a whole (:func:`normalize_manifest`) fans the clips out over a process pool, writes a
report and fails only when the share of bad inputs exceeds ``max_bad_fraction``. Output bytes depend
only on the input samples and the config, so DVC's cache sees identical outs for identical ins.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import multiprocessing
import os
import re
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from tqdm import tqdm

from clap.audio import SAMPLE_RATE, AudioDecodeError, audio_info, load_audio
from clap.data.manifest import ManifestRow, read_manifest, write_manifest
from clap.data.normalize_checks import normalize_expectations, validation_frame
from clap.data.overlap import OverlapMatch, dropped_ids, find_overlaps, write_overlaps
from clap.params import config_from_mapping

log = logging.getLogger(__name__)

#: Quarantine reason codes, in the order checks run. The CSV carries the sentence; reports count codes.
REASONS = ("missing", "empty", "undecodable", "no_samples", "non_finite", "too_short", "too_long", "silent")
QUARANTINE_COLUMNS = ("id", "source", "split", "path", "code", "reason")
#: A header may overstate the length a little (MP3 estimates); the decoded length decides near the limit.
HEADER_SLACK_S = 1.0

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_MAX_NAME = 80


class NormalizeError(RuntimeError):
    """The normalize run cannot produce a trustworthy output (too many bad inputs, bad manifest...)."""


@dataclass(frozen=True)
class NormalizeConfig:
    """The ``normalize`` section of params.yaml."""

    sample_rate: int = SAMPLE_RATE
    min_duration: float | None = None  # opt-in; short clips are repeat-padded at feature time
    max_duration: float = 120.0
    silence_threshold: float = 1.0e-4
    max_bad_fraction: float = 0.1
    workers: int = 2

    @classmethod
    def from_params(cls, section: dict[str, Any]) -> "NormalizeConfig":
        cfg = config_from_mapping(cls, section, "params.yaml normalize")
        low = cfg.min_duration if cfg.min_duration is not None else 0.0
        if low < 0 or cfg.max_duration <= low:
            raise ValueError(
                f"params.yaml normalize: need 0 <= min_duration < max_duration (min_duration may be null), got "
                f"{cfg.min_duration} and {cfg.max_duration}"
            )
        if not 0.0 <= cfg.max_bad_fraction <= 1.0:
            raise ValueError(f"params.yaml normalize.max_bad_fraction: must lie in [0, 1], got {cfg.max_bad_fraction}")
        return cfg


@dataclass
class ClipResult:
    """What happened to one input row."""

    id: str
    source_path: str
    source: str = ""
    split: str = ""
    row: ManifestRow | None = None  # the updated row when written
    reason_code: str = ""           # one of REASONS when quarantined
    reason: str = ""                # the human sentence for the quarantine file
    finite: bool = True             # every output sample is finite (checked after resampling)
    peak: float = 0.0               # peak amplitude of the mono mix before quantisation
    clipped_samples: int = 0        # samples beyond [-1, 1] clipped at quantisation
    cpu_seconds: float = 0.0        # CPU time the clip took in its worker (for throughput figures)
    pcm_sha256: str = ""            # sha256 of the written int16 samples (overlap by decoded audio)

    @property
    def ok(self) -> bool:
        return self.row is not None


@dataclass
class NormalizeSummary:
    """Counts of one run; ``to_json`` is the reports/data/normalize.json document."""

    inputs: int
    written: int
    quarantined_by_reason: dict[str, int]
    overlap_dropped: int
    hours: float
    clipped_samples: int
    max_bad_fraction: float
    sample_rate: int
    by_source: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def quarantined(self) -> int:
        return sum(self.quarantined_by_reason.values())

    @property
    def bad_fraction(self) -> float:
        """Quarantined share of the inputs (overlap drops are not bad input)."""
        return self.quarantined / self.inputs if self.inputs else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "written": self.written,
            "overlap_dropped": self.overlap_dropped,
            "quarantined": self.quarantined,
            "quarantined_by_reason": dict(sorted(self.quarantined_by_reason.items())),
            "bad_fraction": round(self.bad_fraction, 6),
            "max_bad_fraction": self.max_bad_fraction,
            "hours": round(self.hours, 6),
            "clipped_samples": self.clipped_samples,
            "sample_rate": self.sample_rate,
            "by_source": {k: self.by_source[k] for k in sorted(self.by_source)},
        }


# --------------------------------------------------------------------------- paths


def safe_name(text: str) -> str:
    """A file-name-safe form of ``text`` ([A-Za-z0-9_-] only, at most ~90 chars).

    Names that had to change get a short hash of the original appended, so two different inputs
    never map to the same file (``a b`` and ``a_b`` both sanitise to ``a_b``).
    """
    cleaned = _UNSAFE.sub("_", text).strip("_") or "clip"
    if cleaned == text and len(text) <= _MAX_NAME:
        return text
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
    return f"{cleaned[:_MAX_NAME]}-{digest}"


def clip_name(row: ManifestRow) -> str:
    """The clip part of a row id (``<source>/<clip>`` -> ``<clip>``), made safe for a file name."""
    prefix = f"{row.source}/"
    clip = row.id[len(prefix):] if row.id.startswith(prefix) else row.id
    return safe_name(clip)


def output_path(row: ManifestRow, audio_root: Path) -> Path:
    """``<audio_root>/<source>/<split>/<clip>.flac``; every component made safe."""
    return Path(audio_root) / safe_name(row.source) / safe_name(row.split) / f"{clip_name(row)}.flac"


# --------------------------------------------------------------------------- one clip


def _quarantine(row: ManifestRow, code: str, reason: str, **extra: Any) -> ClipResult:
    return ClipResult(
        id=row.id, source_path=row.path, source=row.source, split=row.split, reason_code=code, reason=reason, **extra
    )


def to_pcm16(mono: np.ndarray) -> tuple[np.ndarray, int]:
    """Quantise float samples to int16: x32768, round half to even, clip to the int16 range.

    The scale is the inverse of the decoder's (libsndfile reads int16 as k/32768), so a file that is
    already 16-bit keeps its exact samples and normalising a normalised file changes nothing.
    Returns the samples and how many had to be clipped.
    """
    scaled = np.rint(mono.astype(np.float64) * 32768.0)
    clipped = int(np.count_nonzero((scaled < -32768.0) | (scaled > 32767.0)))
    return np.clip(scaled, -32768.0, 32767.0).astype(np.int16), clipped


def write_flac_atomic(pcm: np.ndarray, sample_rate: int, path: Path) -> None:
    """Write int16 mono samples as 16-bit FLAC via a temporary file renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        sf.write(str(tmp), pcm, sample_rate, format="FLAC", subtype="PCM_16")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def normalize_clip(row: ManifestRow, out_path: Path, cfg: NormalizeConfig) -> ClipResult:
    """Decode, check, downmix, resample and write one clip; bad input comes back quarantined."""
    src = Path(row.path)
    if not src.is_file():
        return _quarantine(row, "missing", f"file not found: {src}")
    if src.stat().st_size == 0:
        return _quarantine(row, "empty", "empty file (0 bytes)")
    try:
        header_seconds, _, _ = audio_info(src)  # the header only: nothing is decoded yet
    except AudioDecodeError as exc:
        return _quarantine(row, "undecodable", f"not a readable audio file ({exc.__cause__ or exc})")
    if header_seconds > cfg.max_duration + HEADER_SLACK_S:
        return _quarantine(
            row, "too_long", f"too long: {header_seconds:.3f} s (from the file header; not decoded) is above "
            f"normalize.max_duration ({cfg.max_duration:g} s)"
        )
    try:
        samples, sr = load_audio(src)
    except AudioDecodeError as exc:
        return _quarantine(row, "undecodable", f"not a readable audio file ({exc.__cause__ or exc})")
    frames = samples.shape[1]
    if frames == 0 or sr <= 0:
        return _quarantine(row, "no_samples", "the file decodes to zero audio samples")
    bad = int(np.count_nonzero(~np.isfinite(samples)))
    if bad:
        return _quarantine(
            row, "non_finite", f"{bad} of {samples.size} samples are not finite (NaN or infinity)", finite=False
        )
    duration = frames / sr
    if cfg.min_duration is not None and duration < cfg.min_duration:
        return _quarantine(
            row, "too_short", f"too short: {duration:.3f} s is below normalize.min_duration ({cfg.min_duration:g} s)"
        )
    if duration > cfg.max_duration:
        return _quarantine(
            row, "too_long", f"too long: {duration:.3f} s is above normalize.max_duration ({cfg.max_duration:g} s)"
        )
    mono = samples.mean(axis=0)
    peak = float(np.max(np.abs(mono)))
    if peak < cfg.silence_threshold:
        return _quarantine(
            row,
            "silent",
            f"silent: peak amplitude {peak:.3g} of the mono mix is below normalize.silence_threshold "
            f"({cfg.silence_threshold:g})",
            peak=peak,
        )
    if sr != cfg.sample_rate:
        mono = AF.resample(torch.from_numpy(mono), sr, cfg.sample_rate).numpy()
    finite = bool(np.isfinite(mono).all())
    pcm, clipped = to_pcm16(mono)
    write_flac_atomic(pcm, cfg.sample_rate, out_path)
    updated = replace(
        row,
        path=str(out_path),
        duration=round(len(pcm) / cfg.sample_rate, 6),
        sample_rate=cfg.sample_rate,
        channels=1,
    )
    return ClipResult(
        id=row.id, source_path=row.path, source=row.source, split=row.split, row=updated, finite=finite, peak=peak,
        clipped_samples=clipped, pcm_sha256=hashlib.sha256(pcm.astype("<i2").tobytes()).hexdigest(),
    )


def _normalize_job(job: tuple[dict, str], cfg: NormalizeConfig) -> ClipResult:
    """Process-pool entry point (rows travel as dicts; exceptions name the row)."""
    row_dict, out = job
    row = ManifestRow.from_dict(row_dict)
    start = time.process_time()
    try:
        result = normalize_clip(row, Path(out), cfg)
        result.cpu_seconds = time.process_time() - start
        return result
    except Exception as exc:  # an environment failure (disk full, ...), not bad input: stop the run
        raise NormalizeError(f"{row.id} ({row.path}): normalisation failed ({type(exc).__name__}: {exc})") from exc


# --------------------------------------------------------------------------- the run


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Limit torch's intra-op threads for the duration of the block (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _init_worker() -> None:
    # one process per core: torch must not spawn its own thread pool inside each worker
    torch.set_num_threads(1)


def _process_pool(workers: int) -> ProcessPoolExecutor:
    # forkserver: workers fork from a clean server that has imported this module once, so they start
    # fast and never inherit a parent's OpenMP/torch thread state (fork after OpenMP can deadlock).
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker)


def normalize_rows(
    rows: Sequence[ManifestRow], audio_root: Path, cfg: NormalizeConfig, progress: bool = True
) -> list[ClipResult]:
    """Normalise ``rows`` across ``cfg.workers`` processes; results come back in input order."""
    ids = Counter(r.id for r in rows)
    dupes = sorted(i for i, n in ids.items() if n > 1)
    if dupes:
        raise NormalizeError(f"input manifest: duplicate ids {dupes[:5]} (ids must be unique; fix the ingest stage)")
    jobs = [(r.to_dict(), str(output_path(r, audio_root))) for r in rows]
    run_one = partial(_normalize_job, cfg=cfg)
    workers = max(1, min(cfg.workers, len(jobs)))
    bar = partial(tqdm, total=len(jobs), desc="normalize", unit="clip", disable=not progress)
    if workers == 1:
        with torch_threads(1):
            return list(bar(map(run_one, jobs)))
    with _process_pool(workers) as pool:
        return list(bar(pool.map(run_one, jobs, chunksize=max(1, min(8, len(jobs) // (4 * workers))))))


def exclude_same_audio(results: list[ClipResult]) -> list[OverlapMatch]:
    """Train clips whose written samples equal a val/test clip's: their rows are dropped (``row`` set to
    None, their FLACs removed) and every match is returned for the overlaps CSV."""
    pcm = {r.id: r.pcm_sha256 for r in results if r.row is not None and r.pcm_sha256}
    written = [r.row for r in results if r.row is not None]
    matches = find_overlaps(written, lambda row: [("same_audio", pcm[row.id])] if row.id in pcm else [])
    gone = dropped_ids(matches)
    for result in results:
        if result.id in gone and result.row is not None:
            Path(result.row.path).unlink(missing_ok=True)
            result.row = None
    return matches


def summarize(results: Iterable[ClipResult], cfg: NormalizeConfig, overlap_dropped: int = 0) -> NormalizeSummary:
    """Counts of a run; ``overlap_dropped`` rows are neither written nor quarantined."""
    results = list(results)
    reasons = Counter(r.reason_code for r in results if r.reason_code)
    by_source: dict[str, dict[str, float]] = {}
    hours = 0.0
    for r in results:
        if r.ok:
            assert r.row is not None
            entry = by_source.setdefault(r.row.source, {"written": 0, "hours": 0.0})
            entry["written"] += 1
            entry["hours"] += r.row.duration / 3600.0
            hours += r.row.duration / 3600.0
    for entry in by_source.values():
        entry["hours"] = round(entry["hours"], 6)
    return NormalizeSummary(
        inputs=len(results),
        written=sum(r.ok for r in results),
        quarantined_by_reason=dict(reasons),
        overlap_dropped=overlap_dropped,
        hours=hours,
        clipped_samples=sum(r.clipped_samples for r in results),
        max_bad_fraction=cfg.max_bad_fraction,
        sample_rate=cfg.sample_rate,
        by_source=by_source,
    )


def write_quarantine(results: Iterable[ClipResult], path: Path, input_ids: Iterable[str]) -> int:
    """Append this run's quarantined rows to the CSV (:data:`QUARANTINE_COLUMNS`: the input row's id,
    source, split and original path, the reason code of :data:`REASONS` and the sentence).

    Rows an earlier run wrote for the same input ids are replaced, so re-running never duplicates
    entries; rows about other ids (another stage's, another source's) are kept. Returns the count.
    """
    path = Path(path)
    ours = set(input_ids)
    kept: list[dict[str, str]] = []
    if path.is_file():
        with path.open(newline="") as fh:
            kept = [row for row in csv.DictReader(fh) if row.get("id") not in ours]
    fresh = sorted(
        (
            {"id": r.id, "source": r.source, "split": r.split, "path": r.source_path, "code": r.reason_code,
             "reason": r.reason}
            for r in results if r.reason_code
        ),
        key=lambda d: d["id"],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=QUARANTINE_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept + fresh)
    tmp.replace(path)
    return len(fresh)


@dataclass
class NormalizeOutputs:
    """Where a run writes; defaults are the DVC stage's outs."""

    manifest: Path = Path("data/manifest/normalized.jsonl")
    audio_root: Path = Path("data/audio")
    quarantine: Path = Path("reports/data/quarantine.csv")
    overlaps: Path | None = None  # train clips dropped for the same decoded audio; None: beside the quarantine CSV

    @property
    def overlaps_csv(self) -> Path:
        return self.overlaps if self.overlaps is not None else self.quarantine.parent / "overlaps_audio.csv"
    report: Path = Path("reports/data/normalize.json")
    gx_dir: Path = Path("reports/data/gx/normalize")


def normalize_manifest(
    input_manifest: Path,
    outputs: NormalizeOutputs,
    cfg: NormalizeConfig,
    validate: bool = True,
    progress: bool = True,
) -> NormalizeSummary:
    """The normalize stage: rows in, FLACs + manifest + quarantine + report (+ GX result) out.

    Raises NormalizeError when more than ``cfg.max_bad_fraction`` of the inputs are bad (after the
    quarantine file and report are written, so the reasons are there to read) and
    ``DataValidationError`` when the written set breaks the GX suite; the manifest is written only
    when both pass.
    """
    rows = read_manifest(input_manifest)
    if not rows:
        raise NormalizeError(f"{input_manifest}: no rows to normalise (check the ingest stage's sources)")
    log.info("normalising %d clips with %d worker(s) -> %s", len(rows), cfg.workers, outputs.audio_root)
    results = normalize_rows(rows, outputs.audio_root, cfg, progress=progress)
    matches = exclude_same_audio(results)
    write_overlaps(matches, outputs.overlaps_csv)
    if matches:
        log.warning(
            "dropped %d train clip(s) whose decoded audio equals a val/test clip's (matches: %s): %s",
            len(dropped_ids(matches)), outputs.overlaps_csv,
            ", ".join(f"{m.train.id} (= {m.eval.id})" for m in matches[:10]),
        )
    summary = summarize(results, cfg, overlap_dropped=len(dropped_ids(matches)))
    write_quarantine(results, outputs.quarantine, (r.id for r in rows))
    outputs.report.parent.mkdir(parents=True, exist_ok=True)
    outputs.report.write_text(json.dumps(summary.to_json(), indent=2, sort_keys=False) + "\n")
    for code, count in sorted(summary.quarantined_by_reason.items()):
        log.warning("quarantined %d clip(s): %s", count, code)
    if summary.bad_fraction > cfg.max_bad_fraction:
        raise NormalizeError(
            f"{summary.quarantined} of {summary.inputs} inputs ({summary.bad_fraction:.1%}) could not be "
            f"normalised, more than normalize.max_bad_fraction ({cfg.max_bad_fraction:.1%}); the reasons are in "
            f"{outputs.quarantine}. Fix or remove those files, or raise normalize.max_bad_fraction."
        )
    if validate:
        from clap.data.validation import validate_dataframe

        validate_dataframe(validation_frame(results), "normalize", normalize_expectations(cfg), outputs.gx_dir)
    write_manifest([r.row for r in results if r.row is not None], outputs.manifest)
    log.info(
        "wrote %d clips (%.3f h), quarantined %d -> %s",
        summary.written, summary.hours, summary.quarantined, outputs.manifest,
    )
    return summary
