"""Rendering and writing the corpus: audio files, metadata.jsonl, classes.json, summary.json."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from clap.corpus.captions import LONG_CLIP_SECONDS
from clap.corpus.config import CorpusConfig
from clap.corpus.encode import encode_audio
from clap.corpus.plan import ClipPlan, plan_corpus, seeded_rng
from clap.corpus.sounds import SOUND_CLASSES, pan_gains, render_background, render_event

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.jsonl"
CLASSES_FILE = "classes.json"
SUMMARY_FILE = "summary.json"


@dataclass
class CorpusSummary:
    """What ``generate_corpus`` wrote."""

    out_dir: Path
    clips: int
    seconds: float
    bytes: int
    counts: dict[str, dict[str, int]]
    formats: dict[str, int]
    sample_rates: dict[int, int]
    channels: dict[int, int]
    long_clips: int
    duplicates: list[tuple[str, str]]
    elapsed: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The deterministic part (no timing, no absolute path), as written to summary.json."""
        data = asdict(self)
        data.pop("out_dir")
        data.pop("elapsed")
        data["seconds"] = round(self.seconds, 3)
        data["sample_rates"] = {str(k): v for k, v in sorted(self.sample_rates.items())}
        data["channels"] = {str(k): v for k, v in sorted(self.channels.items())}
        data["duplicates"] = [list(pair) for pair in self.duplicates]
        return data


def mix_clip(plan: ClipPlan, seed: int) -> np.ndarray:
    """The clip's float64 mix shaped (channels, frames), peak at most 0.98: the same bits on every
    machine (clap.corpus.portable), which ``render_clip`` then rounds to float32."""
    rng = seeded_rng(seed, *plan.seed_key)
    sr = plan.sample_rate
    n = max(1, round(plan.duration * sr))
    audio = render_background(plan.background, plan.background_db, n, sr, plan.channels, rng)
    for event in plan.events:
        start = min(n - 1, round(event.start * sr))
        length = max(1, min(n - start, round(event.length * sr)))
        sound = render_event(event, length, sr, rng)
        audio[:, start : start + length] += pan_gains(event.pan, plan.channels)[:, None] * sound
    peak = np.abs(audio).max()
    if peak > 0.98:
        audio *= 0.98 / peak
    return audio


def render_clip(plan: ClipPlan, seed: int) -> np.ndarray:
    """The clip's samples, float32 shaped (frames, channels), peak below 1."""
    return np.ascontiguousarray(mix_clip(plan, seed).T, dtype=np.float32)


def _write_clip(job: tuple[ClipPlan, int, str]) -> tuple[str, int, float]:
    """Worker: render and write one clip; returns (relative file, bytes, seconds)."""
    plan, seed, out_dir = job
    path = Path(out_dir) / plan.file
    try:
        samples = render_clip(plan, seed)
        serial = int(seeded_rng(seed, *plan.seed_key[:-1], 3).integers(1, 2**31))
        data = encode_audio(samples, plan.sample_rate, plan.fmt, serial)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}"
        raise RuntimeError(f"{path}: could not write clip {plan.id} as {plan.fmt} ({why})") from exc
    return plan.file, len(data), len(samples) / plan.sample_rate


def _worker_count(config: CorpusConfig, jobs: int) -> int:
    workers = config.workers or os.cpu_count() or 1
    return max(1, min(workers, jobs))


def generate_corpus(out_dir: Path, config: CorpusConfig, progress: bool = True) -> CorpusSummary:
    """Write the corpus into ``out_dir`` (which must be empty or absent) and return its summary.

    With more than one worker, clips are written by processes started with ``spawn`` (safe next to
    threads that torch, Ray or Prefect may hold); a script calling this therefore needs the usual
    ``if __name__ == "__main__":`` guard.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    config.validate()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir}: output folder is not empty (remove it or pass an empty folder)")
    out_dir.mkdir(parents=True, exist_ok=True)
    plans, duplicates = plan_corpus(config)
    jobs = [(plan, config.seed, str(out_dir)) for plan in plans]
    workers = _worker_count(config, len(jobs))
    log.info("corpus: writing %d clips to %s with %d worker(s)", len(plans), out_dir, workers)
    results: list[tuple[str, int, float]] = []
    with tqdm(total=len(jobs), desc="corpus", unit="clip", disable=not progress) as bar:
        if workers == 1:
            for job in jobs:
                results.append(_write_clip(job))
                bar.update()
        else:
            # spawn, not fork: the caller may hold threads (torch, ray) that fork would copy badly.
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                for result in pool.map(_write_clip, jobs, chunksize=4):
                    results.append(result)
                    bar.update()
    sizes = {file: (nbytes, seconds) for file, nbytes, seconds in results}
    for copy, original in duplicates:
        shutil.copyfile(out_dir / original.file, out_dir / copy.file)
        sizes[copy.file] = sizes[original.file]
    rows = sorted(plans + [copy for copy, _ in duplicates], key=lambda p: p.id)
    _write_metadata(out_dir, rows)
    summary = CorpusSummary(
        out_dir=out_dir,
        clips=len(rows),
        seconds=sum(sizes[p.file][1] for p in rows),
        bytes=sum(sizes[p.file][0] for p in rows),
        counts=_counts(rows),
        formats=dict(sorted(Counter(p.fmt for p in rows).items())),
        sample_rates=dict(sorted(Counter(p.sample_rate for p in rows).items())),
        channels=dict(sorted(Counter(p.channels for p in rows).items())),
        long_clips=sum(p.duration > LONG_CLIP_SECONDS for p in rows),
        duplicates=[(copy.id, original.id) for copy, original in duplicates],
        elapsed=time.perf_counter() - started,
    )
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary


def write_corpus(out_dir: Path, config: CorpusConfig, progress: bool = True) -> CorpusSummary:
    """Write the corpus to ``out_dir``, replacing an older corpus there: generate into
    ``<out_dir>.partial``, then swap it in, so an interrupted run never leaves a half-written corpus.

    A non-empty ``out_dir`` that is not a corpus (no metadata.jsonl) is left alone: deleting a
    folder passed by mistake (``--out .``) would be far worse than refusing.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / METADATA_FILE).is_file():
        raise FileExistsError(
            f"{out_dir}: exists, is not empty and holds no {METADATA_FILE}, so it is not an old corpus; "
            "pass an empty or new folder with --out, or remove it yourself"
        )
    partial = out_dir.with_name(out_dir.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    summary = generate_corpus(partial, config, progress=progress)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    partial.rename(out_dir)
    summary.out_dir = out_dir
    return summary


def _counts(rows: Sequence[ClipPlan]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        counts.setdefault(row.source, {}).setdefault(row.split, 0)
        counts[row.source][row.split] += 1
    return counts


def _write_metadata(out_dir: Path, rows: Sequence[ClipPlan]) -> None:
    with (out_dir / METADATA_FILE).open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row.metadata(), ensure_ascii=False) + "\n")
    classes = [{"name": c.name, "label": c.label, "keywords": list(c.keywords)} for c in SOUND_CLASSES]
    (out_dir / CLASSES_FILE).write_text(json.dumps(classes, indent=2) + "\n")


def read_metadata(out_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``<out_dir>/metadata.jsonl``; a missing file says which stage writes it."""
    path = Path(out_dir) / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: corpus metadata not found (run: python -m clap.stages.corpus)")
    with path.open() as fh:
        return [json.loads(line) for line in fh if line.strip()]
