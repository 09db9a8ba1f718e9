"""Tiny shard sets with folds and chosen captions, for run-identity and fine-tune protocol tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import soundfile as sf

from clap.data.manifest import ManifestRow, write_manifest
from clap.data.shards import ShardConfig, write_shards
from tests.toy_shards import TOY_CLASSES, toy_clip


def write_fold_shards(root: Path, *, folds: int = 3, per_fold: int = 1, tag_clips: int = 0,
                      caption: str = "a {label}", seconds: float = 1.0, seed: int = 0) -> Path:
    """Tones of the toy classes as set ``toy`` (split ``train``, clips in ``folds`` folds, each
    captioned ``caption``) and, with ``tag_clips``, a multi-label set ``toytags`` (train and test).

    Writes ``root/shards`` (replaced if present; the same file names for the same sizes) and
    ``root/manifest.jsonl``; returns the shard root.
    """
    rng = np.random.default_rng(seed)
    rows: list[ManifestRow] = []

    def add(clip_id: str, source: str, split: str, labels: list[str], fold: int | None) -> None:
        path = root / "audio" / f"{clip_id.replace('/', '-')}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        wave = sum(toy_clip(TOY_CLASSES[label], seconds, rng) for label in labels) / len(labels)
        sf.write(path, wave, 48_000, subtype="PCM_16")
        rows.append(ManifestRow(
            id=clip_id, source=source, split=split, path=str(path), labels=labels, fold=fold,
            captions=[caption.format(label=" and ".join(labels))], duration=seconds, sample_rate=48_000,
            channels=1, task="classification" if fold else "tagging",
        ))

    names = sorted(TOY_CLASSES)
    for fold in range(1, folds + 1):
        for label in names:
            for i in range(per_fold):
                add(f"toy/f{fold}-{label.replace(' ', '_')}-{i}", "toy", "train", [label], fold)
    for split in ("train", "test"):
        for i in range(tag_clips if split == "train" else max(1, tag_clips // 2)):
            labels = [names[i % len(names)]] + ([names[(i + 1) % len(names)]] if i % 2 else [])
            add(f"toytags/{split}-{i}", "toytags", split, labels, None)
    shard_root = root / "shards"
    if shard_root.exists():
        shutil.rmtree(shard_root)
    write_shards(rows, shard_root, ShardConfig(samples_per_shard=4), progress=False)
    write_manifest(rows, root / "manifest.jsonl")
    return shard_root
