"""The manifest: one row per audio clip, the single schema every data stage reads and writes.

Stored as JSON Lines (one object per line) so that diffs stay readable and rows stream.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable, Iterator

#: Splits a row may carry. ``train`` feeds training; the others are held out for evaluation.
TRAIN_SPLITS = ("train",)
EVAL_SPLITS = ("val", "test")
KNOWN_SPLITS = TRAIN_SPLITS + EVAL_SPLITS


@dataclass
class ManifestRow:
    """One audio clip.

    id:        unique across the manifest, ``<source>/<clip>`` (also the clip's file stem downstream).
    source:    the dataset the row came from (``builtin_captions``, ``clotho``, ``esc50``...); it names
               the shard folder ``<root>/<source>/<split>/``.
    split:     one of KNOWN_SPLITS.
    path:      the audio file (local path; S3 sources are downloaded into a local cache first).
    captions:  human captions (may be empty for label-only data).
    labels:    class labels / keywords (may be empty for caption-only data).
    duration:  seconds, from the file header at ingest, from the samples after normalisation.
    sha256:    content hash of the audio file bytes at ingest; used for overlap exclusion.
    fold:      cross-validation fold (ESC-50, UrbanSound8K), or None.
    task:      what the row is for: ``retrieval`` (captioned), ``pretrain`` (label-only),
               ``classification`` (single label), ``tagging`` (multi-label).
    augmented: captions made by the captions stage, ``{"template": [...], "k2c": [...]}``.
    """

    id: str
    source: str
    split: str
    path: str
    captions: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    duration: float = 0.0
    sha256: str = ""
    fold: int | None = None
    task: str = "retrieval"
    sample_rate: int = 0
    channels: int = 0
    augmented: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> "ManifestRow":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"manifest row {data.get('id', '?')}: unknown fields {sorted(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)


def write_manifest(rows: Iterable[ManifestRow], path: str | Path) -> int:
    """Write rows as JSON Lines, sorted by id so that the file is deterministic; returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ordered = sorted(rows, key=lambda r: r.id)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as fh:
        for row in ordered:
            fh.write(json.dumps(row.to_dict(), ensure_ascii=False, sort_keys=True) + "\n")
    tmp.replace(path)
    return len(ordered)


def iter_manifest(path: str | Path) -> Iterator[ManifestRow]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found (run the stage that writes it: dvc repro)")
    with path.open() as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield ManifestRow.from_dict(json.loads(line))
            except (json.JSONDecodeError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{lineno}: malformed manifest row ({exc})") from exc


def read_manifest(path: str | Path) -> list[ManifestRow]:
    return list(iter_manifest(path))


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()
