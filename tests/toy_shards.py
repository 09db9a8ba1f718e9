"""A tiny, learnable shard set for trainer and evaluation tests: tones of a few classes with captions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from clap.data.manifest import ManifestRow
from clap.data.shards import ShardConfig, write_shards

TOY_CLASSES = {
    "low hum": 110.0,
    "high whistle": 3520.0,
    "mid beep": 880.0,
}


def toy_clip(frequency: float, seconds: float, rng: np.random.Generator, sr: int = 48_000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    tone = np.sin(2 * np.pi * frequency * rng.uniform(0.97, 1.03) * t)
    return (0.4 * tone + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def write_toy_shards(root: Path, per_class: dict[str, int] | None = None, seconds: float = 2.0,
                     samples_per_shard: int = 4, seed: int = 0) -> Path:
    """Audio files + shards under ``root``; returns the shard root (with index.json)."""
    per_class = per_class or {"train": 6, "val": 2}
    rng = np.random.default_rng(seed)
    rows = []
    for split, count in per_class.items():
        for label, frequency in TOY_CLASSES.items():
            for i in range(count):
                clip_id = f"toy/{split}-{label.replace(' ', '_')}-{i}"
                path = root / "audio" / f"{clip_id.split('/')[1]}.flac"
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, toy_clip(frequency, seconds, rng), 48_000, subtype="PCM_16")
                rows.append(ManifestRow(
                    id=clip_id, source="toy", split=split, path=str(path),
                    captions=[f"a {label}", f"the sound of a {label}"], labels=[label],
                    duration=seconds, sample_rate=48_000, channels=1, task="retrieval",
                ))
    shard_root = root / "shards"
    write_shards(rows, shard_root, ShardConfig(samples_per_shard=samples_per_shard), progress=False)
    return shard_root
