"""Evaluation sets: ingested sets read from the shard index, and classification sets read in place.

Two ways an evaluation set arrives:

* **ingested** (``"<source>/<split>"``): any source that went through ingest -> normalize -> captions
  -> shards is a set in ``<shard root>/index.json``. The built-in corpus gives ``builtin_captions/test``
  and ``builtin_esc/test``; a native Clotho or AudioCaps folder listed in params.yaml ``sources`` as
  ``{name: clotho, kind: clotho, path: ...}`` gives ``clotho/test`` (Clotho's evaluation split) the
  same way, so retrieval and zero-shot code never needs to know a dataset's layout.
* **native** (zero-shot only): a classification dataset's own folder, read where it lies, for
  checkpoints trained elsewhere (a released LAION-CLAP ``.pt``): ESC-50 (``meta/esc50.csv`` +
  ``audio/``), UrbanSound8K (``metadata/UrbanSound8K.csv`` + ``audio/fold<N>/``), VGGSound
  (``vggsound.csv`` + audio files, see :func:`read_vggsound`) and the generic ``folder`` layout of
  :mod:`clap.data.sources`. The layout is detected from the files unless a kind is given. Rows are
  listed by the ingest adapters of :mod:`clap.data.sources` (VGGSound has none there; it is here).

Either way a set is streamed as :class:`EvalClip` items, so memory holds one batch of audio at a time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clap.data.manifest import ManifestRow, sha256_file
from clap.data.sources import (
    AUDIO_EXTENSIONS,
    AdapterContext,
    SourceError,
    SourceSpec,
    clip_id,
    read_source,
)
from clap.model.inference import AudioItem

log = logging.getLogger(__name__)

#: Native layouts a zero-shot set may be read from, and the file that gives each away.
NATIVE_KINDS: dict[str, str] = {
    "esc50": "meta/esc50.csv",
    "urbansound8k": "metadata/UrbanSound8K.csv",
    "vggsound": "vggsound.csv",
    "folder": "captions.csv | captions.jsonl",
}
VGGSOUND_CSV = "vggsound.csv"
VGGSOUND_COLUMNS = ("youtube_id", "start", "label", "split")


class EvalSetError(ValueError):
    """An evaluation set cannot be found or read; the message names the set and the fix."""


@dataclass
class EvalClip:
    """One clip of an evaluation set.

    ``audio`` is a file path (native sets) or a ``(waveform, sample_rate)`` pair (shard samples).
    ``sha256`` is the content hash of the clip's original file as ingest computed it (empty when not
    known yet: :func:`content_hash` fills it for native files).
    """

    id: str
    audio: AudioItem
    captions: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    fold: int | None = None
    sha256: str = ""
    where: str = ""  # file path or shard member, for reports and errors
    duration: float = 0.0  # seconds; set from the decoded audio when the clip is embedded


# ------------------------------------------------------------------------------------- shard sets


@dataclass(frozen=True)
class ShardSet:
    """One ``<source>/<split>`` of the shard index: its shard URLs and sample count."""

    name: str
    urls: tuple[str, ...]
    count: int


def read_shard_index(shard_root: str | Path) -> dict[str, Any]:
    """``<shard_root>/index.json`` (local or ``s3://``), as written by the shards stage."""
    root = str(shard_root).rstrip("/")
    if root.startswith("s3://"):
        from clap.data.wds_s3 import read_text  # noqa: PLC0415 - boto3 only when asked for

        return json.loads(read_text(f"{root}/index.json"))
    index_path = Path(root) / "index.json"
    if not index_path.is_file():
        raise EvalSetError(f"{index_path}: shard index not found (run the shards stage first: dvc repro shards)")
    return json.loads(index_path.read_text())


def resolve_shard_set(shard_root: str | Path, name: str, index: dict[str, Any] | None = None) -> ShardSet:
    """The shards of set ``name`` (``"<source>/<split>"``); an unknown set is an error listing the known ones."""
    source, sep, split = name.partition("/")
    if not sep or not source or not split:
        raise EvalSetError(f"evaluation set '{name}': expected '<source>/<split>', e.g. builtin_captions/test")
    index = index if index is not None else read_shard_index(shard_root)
    entry = index.get("sets", {}).get(source, {}).get(split)
    if not entry or not entry.get("shards"):
        known = sorted(f"{s}/{p}" for s, splits in index.get("sets", {}).items() for p in splits)
        raise EvalSetError(
            f"evaluation set '{name}' is not in {shard_root}/index.json (known: {', '.join(known) or 'none'}); "
            "add its source to params.yaml `sources` and re-run the data stages, or fix the set name"
        )
    root = str(shard_root).rstrip("/")
    return ShardSet(name=name, urls=tuple(f"{root}/{rel}" for rel in entry["shards"]), count=int(entry.get("count", 0)))


def iter_shard_clips(shard_set: ShardSet) -> Iterator[EvalClip]:
    """Every sample of a shard set, in shard order, with its original captions and labels."""
    from clap.data.shards import iter_shard_samples  # noqa: PLC0415
    from clap.data.wds_s3 import register_webdataset_s3  # noqa: PLC0415

    register_webdataset_s3()
    for sample_id, waveform, sample_rate, meta in iter_shard_samples(list(shard_set.urls)):
        texts = meta.get("text") or []
        yield EvalClip(
            id=sample_id,
            audio=(waveform, sample_rate),
            captions=[texts] if isinstance(texts, str) else list(texts),
            labels=list(meta.get("tag") or []),
            fold=meta.get("fold"),
            where=f"{shard_set.name}:{sample_id}",
        )


# ------------------------------------------------------------------------------------ native sets


def detect_kind(root: Path) -> str:
    """The native layout of a dataset folder, from the metadata file it holds."""
    if (root / "meta" / "esc50.csv").is_file():
        return "esc50"
    if (root / "metadata" / "UrbanSound8K.csv").is_file():
        return "urbansound8k"
    if (root / VGGSOUND_CSV).is_file():
        return "vggsound"
    if (root / "captions.csv").is_file() or (root / "captions.jsonl").is_file():
        return "folder"
    expected = "; ".join(f"{kind}: {marker}" for kind, marker in NATIVE_KINDS.items())
    raise EvalSetError(f"{root}: no known dataset layout found (expected one of {expected}); give the kind explicitly")


def _vggsound_records(table: Path) -> list[dict[str, str]]:
    """VGGSound's CSV with or without a header row (the official file has none)."""
    from clap.data.metadata import read_csv_rows  # UTF-8; a bad byte is one error naming file, line and fix

    records = [row for row in read_csv_rows(table) if any(cell.strip() for cell in row)]
    if not records:
        raise EvalSetError(f"{table}: empty")
    first = [cell.strip().lower() for cell in records[0]]
    if "label" in first:
        columns = ["youtube_id" if c in ("youtube_id", "ytid", "# ytid") else c for c in first]
        missing = [c for c in ("label",) if c not in columns]
        if "file" not in columns and "youtube_id" not in columns:
            missing.append("youtube_id or file")
        if missing:
            raise EvalSetError(f"{table}: missing column(s) {', '.join(missing)} (found: {', '.join(first)})")
        body = records[1:]
    else:
        columns = list(VGGSOUND_COLUMNS)
        body = records
    out = []
    for lineno, row in enumerate(body, 2 if "label" in first else 1):
        if len(row) < len(columns):
            raise EvalSetError(f"{table}:{lineno}: expected {len(columns)} columns ({', '.join(columns)}), got {len(row)}")
        out.append({c: cell.strip() for c, cell in zip(columns, row)})
    return out


def read_vggsound(root: Path, name: str, split: str | None = "test") -> list[ManifestRow]:
    """Rows of a VGGSound-style folder: ``<root>/vggsound.csv`` with ``youtube_id, start, label, split``
    (no header, as distributed) or a header naming ``file`` / ``youtube_id``, ``start``, ``label``,
    ``split``; audio files anywhere under ``<root>`` named ``<youtube_id>_<start:06d>``,
    ``<youtube_id>_<start>``, ``<youtube_id>`` or the ``file`` column. Only rows of ``split`` are
    returned (None: all). Rows whose audio is missing keep the expected path, so the caller reports
    them as missing instead of losing them silently."""
    table = root / VGGSOUND_CSV
    if not table.is_file():
        raise EvalSetError(f"{table}: not found (a VGGSound set needs {VGGSOUND_CSV} in its folder)")
    audio: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in AUDIO_EXTENSIONS and path.is_file():
            audio.setdefault(path.stem, path)
            audio.setdefault(path.relative_to(root).as_posix(), path)
    rows = []
    for record in _vggsound_records(table):
        if split is not None and record.get("split", split) != split:
            continue
        if record.get("file"):
            names = [record["file"], Path(record["file"]).stem]
            stem = Path(record["file"]).stem
        else:
            ytid, start = record["youtube_id"], record.get("start", "")
            try:
                start_int = int(float(start)) if start else None
            except ValueError as exc:
                raise EvalSetError(f"{table}: clip {ytid}: start {start!r} is not a number of seconds") from exc
            names = ([f"{ytid}_{start_int:06d}", f"{ytid}_{start_int}"] if start_int is not None else []) + [ytid]
            stem = names[0]
        path = next((audio[n] for n in names if n in audio), root / "audio" / f"{stem}.wav")
        rows.append(ManifestRow(
            id=clip_id(name, stem), source=name, split=record.get("split") or "test", path=str(path),
            labels=[record["label"]], task="classification",
        ))
    return rows


def read_native_rows(name: str, path: str | Path, kind: str | None = None, split: str | None = None) -> list[ManifestRow]:
    """Rows of a native classification folder (layout ``kind``, detected when None)."""
    root = Path(path)
    if not root.is_dir():
        raise EvalSetError(f"{root}: folder of evaluation set '{name}' not found (fix the path)")
    kind = kind or detect_kind(root)
    if kind == "vggsound":
        rows = read_vggsound(root, name, split or "test")
    elif kind in ("esc50", "urbansound8k", "folder"):
        spec = SourceSpec(name=name, kind=kind, path=str(root))
        try:
            rows = read_source(root, spec, AdapterContext(extract_dir=root, progress=False))
        except SourceError as exc:
            raise EvalSetError(f"evaluation set '{name}': {exc}") from exc
        if split is not None:
            rows = [row for row in rows if row.split == split]
    else:
        raise EvalSetError(f"evaluation set '{name}': unknown kind '{kind}' (known: {', '.join(NATIVE_KINDS)})")
    if not rows:
        raise EvalSetError(f"evaluation set '{name}' ({kind}, {root}): no clips listed")
    log.info("set '%s' (%s, %s): %d clips", name, kind, root, len(rows))
    return rows


def native_clips(rows: list[ManifestRow]) -> Iterator[EvalClip]:
    """Native rows as clips whose audio is their file (read, and hashed, only when needed)."""
    for row in rows:
        yield EvalClip(id=row.id, audio=Path(row.path), captions=list(row.captions), labels=list(row.labels),
                       fold=row.fold, sha256=row.sha256, where=row.path)


def content_hash(clip: EvalClip) -> str:
    """The clip's content hash: the ingest hash when known, else the sha256 of its file ("" if it has none)."""
    if not clip.sha256 and isinstance(clip.audio, (str, Path)) and Path(clip.audio).is_file():
        clip.sha256 = sha256_file(clip.audio)
    return clip.sha256
