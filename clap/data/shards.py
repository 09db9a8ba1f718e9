"""WebDataset shards in the reference layout, written byte-for-byte reproducibly, and a reader.

Layout under the shard root::

    <source>/<split>/000000.tar, 000001.tar, ...   samples_per_shard samples each (the last may hold fewer)
    <source>/<split>/sizes.json                    {"000000.tar": count, ...}
    index.json                                     every set, split, shard path (relative) and count

Each sample is two tar members sharing a key (the normalised FLAC's file stem, unique within a
source): ``<key>.flac`` (the normalised file's bytes, unchanged) and ``<key>.json``::

    {"text": [human captions] (or []), "text_augment_template": [...], "text_augment_t5": [...],
     "tag": [labels], "id", "source", "split", "duration", "fold", "task"}

Reproducible bytes: rows are sorted by id, members by name, every member gets the same mtime, owner
and mode, and JSON is written with sorted keys, so identical inputs give identical tars (and DVC
sees an unchanged output).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import soundfile as sf
import webdataset as wds
from tqdm import tqdm

from clap.audio import SAMPLE_RATE, AudioDecodeError, audio_info
from clap.data.manifest import ManifestRow, read_manifest
from clap.data.normalize import safe_name
from clap.params import load_section

log = logging.getLogger(__name__)

INDEX_NAME = "index.json"
SIZES_NAME = "sizes.json"
_SHARD_FILE = re.compile(r"^\d{6}\.tar$")
#: Fixed tar member metadata (2000-01-01T00:00:00Z): the bytes must not depend on when or who.
TAR_MTIME = 946684800
TAR_OWNER = "clap"


class ShardError(RuntimeError):
    """Shards cannot be written from the given rows (missing or unnormalised audio, clashing keys...)."""


@dataclass(frozen=True)
class ShardConfig:
    """The ``shards`` section of params.yaml."""

    samples_per_shard: int = 64

    def __post_init__(self) -> None:
        if self.samples_per_shard < 1:
            raise ShardError(f"params.yaml shards.samples_per_shard: must be at least 1, got {self.samples_per_shard}")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "ShardConfig":
        """params.yaml's ``shards`` section (its ``remote`` is :class:`clap.data.remote_shards.RemoteShardsConfig`'s)."""
        return load_section(params, "shards", cls, required=True, ignore=("remote",), error=ShardError)


def shard_name(index: int) -> str:
    return f"{index:06d}.tar"


def sample_key(row: ManifestRow) -> str:
    """The tar key of a row: its normalised file's stem (already safe; made safe again if not)."""
    return safe_name(Path(row.path).stem)


def sample_meta(row: ManifestRow) -> dict[str, Any]:
    """The sample's ``json`` member, in the reference's field names."""
    return {
        "text": list(row.captions),
        "text_augment_template": list(row.augmented.get("template", [])),
        "text_augment_t5": list(row.augmented.get("k2c", [])),
        "tag": list(row.labels),
        "id": row.id,
        "source": row.source,
        "split": row.split,
        "duration": row.duration,
        "fold": row.fold,
        "task": row.task,
    }


def _flac_bytes(row: ManifestRow) -> bytes:
    path = Path(row.path)
    try:
        _, sr, channels = audio_info(path)
    except AudioDecodeError as exc:
        raise ShardError(f"{row.id}: {exc}. Fix: re-run the normalize stage (dvc repro normalize).") from exc
    if path.suffix.lower() != ".flac" or sr != SAMPLE_RATE or channels != 1:
        raise ShardError(
            f"{row.id}: {path} is {sr} Hz, {channels} channel(s), '{path.suffix}'; shards take the normalised "
            f"{SAMPLE_RATE} Hz mono FLACs. Fix: build shards from data/manifest/captions.jsonl after normalize."
        )
    return path.read_bytes()


def _encode_sample(row: ManifestRow) -> dict[str, Any]:
    meta = json.dumps(sample_meta(row), sort_keys=True, ensure_ascii=False).encode("utf-8")
    return {"__key__": sample_key(row), "flac": _flac_bytes(row), "json": meta}


def _clear_stale(directory: Path) -> None:
    """Remove shards of an earlier run (a smaller set must not leave old tars behind)."""
    if directory.is_dir():
        for path in directory.iterdir():
            if _SHARD_FILE.match(path.name) or path.name == SIZES_NAME:
                path.unlink()


def write_tar(samples: Iterable[dict[str, Any]], path: Path) -> int:
    """Write encoded samples to one tar (atomically: a temporary file renamed into place)."""
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    try:
        with tmp.open("wb") as fh:
            with wds.TarWriter(fh, user=TAR_OWNER, group=TAR_OWNER, mode=0o444, mtime=TAR_MTIME, encoder=False) as tw:
                for sample in samples:
                    tw.write(sample)
                    count += 1
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return count


def write_set(rows: Sequence[ManifestRow], directory: Path, cfg: ShardConfig, progress: bool = True) -> dict[str, int]:
    """Shards of one source/split; returns ``{tar name: count}`` (also written as sizes.json)."""
    ordered = sorted(rows, key=lambda r: r.id)
    keys: dict[str, str] = {}
    for row in ordered:
        key = sample_key(row)
        if key in keys:
            raise ShardError(
                f"rows {keys[key]} and {row.id} share the shard key {key!r} (same audio file stem in one set); "
                "give each clip its own normalised file"
            )
        keys[key] = row.id
    directory.mkdir(parents=True, exist_ok=True)
    _clear_stale(directory)
    sizes: dict[str, int] = {}
    step = cfg.samples_per_shard
    chunks = [ordered[i:i + step] for i in range(0, len(ordered), step)]
    label = f"shards {directory.parent.name}/{directory.name}"
    for index, chunk in enumerate(tqdm(chunks, desc=label, unit="shard", disable=not progress)):
        name = shard_name(index)
        sizes[name] = write_tar((_encode_sample(r) for r in chunk), directory / name)
    (directory / SIZES_NAME).write_text(json.dumps(sizes, indent=2, sort_keys=True) + "\n")
    return sizes


def write_shards(
    rows: Sequence[ManifestRow], shard_root: Path, cfg: ShardConfig, progress: bool = True
) -> dict[str, Any]:
    """All sets: one folder per source and split, plus index.json. Returns the index."""
    groups: dict[tuple[str, str], list[ManifestRow]] = defaultdict(list)
    for row in rows:
        groups[(row.source, row.split)].append(row)
    sets: dict[str, dict[str, Any]] = {}
    for (source, split), members in sorted(groups.items()):
        rel = Path(safe_name(source)) / safe_name(split)
        sizes = write_set(members, shard_root / rel, cfg, progress=progress)
        sets.setdefault(source, {})[split] = {
            "path": rel.as_posix(),
            "count": sum(sizes.values()),
            "shards": [(rel / name).as_posix() for name in sorted(sizes)],
            "sizes": sizes,
        }
    index = {
        "format": "webdataset",
        "samples_per_shard": cfg.samples_per_shard,
        "total": sum(s["count"] for splits in sets.values() for s in splits.values()),
        "sets": sets,
    }
    shard_root.mkdir(parents=True, exist_ok=True)
    (shard_root / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    log.info("wrote %d samples in %d sets -> %s", index["total"], len(groups), shard_root)
    return index


def shard_manifest(input_manifest: Path, shard_root: Path, cfg: ShardConfig, progress: bool = True) -> dict[str, Any]:
    """The shards stage: captions.jsonl in, shards + index.json out."""
    rows = read_manifest(input_manifest)
    if not rows:
        raise ShardError(f"{input_manifest}: no rows to shard (did normalize quarantine everything?)")
    return write_shards(rows, shard_root, cfg, progress=progress)


# --------------------------------------------------------------------------- reading


def list_shards(
    shard_root: Path, sources: Iterable[str] | None = None, splits: Iterable[str] | None = None
) -> list[Path]:
    """Shard paths from index.json, optionally only some sources / splits, in a stable order."""
    index_path = Path(shard_root) / INDEX_NAME
    if not index_path.is_file():
        raise FileNotFoundError(f"{index_path}: shard index not found (run the shards stage: dvc repro shards)")
    index = json.loads(index_path.read_text())
    want_sources = set(sources) if sources is not None else None
    want_splits = set(splits) if splits is not None else None
    paths = []
    for source, by_split in sorted(index["sets"].items()):
        if want_sources is not None and source not in want_sources:
            continue
        for split, entry in sorted(by_split.items()):
            if want_splits is not None and split not in want_splits:
                continue
            paths.extend(Path(shard_root) / rel for rel in entry["shards"])
    return paths


def _every_shard(src: Iterable[str], group: Any = None) -> Iterator[str]:
    # node splitter that keeps all shards (each caller reads the whole set, e.g. evaluation)
    yield from src


def iter_shard_samples(
    urls: str | Path | Sequence[str | Path], split_by_node: bool = False
) -> Iterator[tuple[str, np.ndarray, int, dict[str, Any]]]:
    """Yield ``(id, mono float32 waveform, sample_rate, meta)`` for every sample, in shard order.

    ``urls`` is one shard, a brace pattern (``.../{000000..000003}.tar``) or a list; anything
    webdataset opens (local paths, ``pipe:`` commands, URLs). With ``split_by_node`` each
    torch.distributed rank reads its own share of the shards.
    """
    if isinstance(urls, (str, Path)):
        url_list: str | list[str] = str(urls)
    else:
        url_list = [str(u) for u in urls]
    dataset = wds.WebDataset(
        url_list,
        shardshuffle=False,
        nodesplitter=wds.split_by_node if split_by_node else _every_shard,
        empty_check=False,
    )
    for sample in dataset:
        where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        if "flac" not in sample or "json" not in sample:
            raise ShardError(f"{where}: sample lacks a flac or json member (found {sorted(sample)})")
        meta = json.loads(sample["json"])
        try:
            audio, sr = sf.read(io.BytesIO(sample["flac"]), dtype="float32", always_2d=True)
        except Exception as exc:  # soundfile raises several types
            raise ShardError(f"{where}: unreadable flac member ({type(exc).__name__}: {exc})") from exc
        waveform = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
        yield meta["id"], np.ascontiguousarray(waveform, dtype=np.float32), int(sr), meta
