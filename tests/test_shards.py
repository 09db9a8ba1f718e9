"""shards: reference layout, sizes.json, index.json, audio + json round trip, byte-identical rewrites."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from clap.data.manifest import ManifestRow, write_manifest
from clap.data.shards import (
    TAR_MTIME,
    ShardConfig,
    ShardError,
    iter_shard_samples,
    list_shards,
    write_shards,
)
from clap.stages import shards as shards_stage

SETS = {("caps", "train"): 5, ("caps", "test"): 2, ("tags", "train"): 3}
PER_SHARD = 2


def make_rows(root: Path) -> list[ManifestRow]:
    """Normalised-looking clips: 48 kHz mono 16-bit FLAC, different lengths and content each."""
    rng = np.random.default_rng(0)
    rows = []
    for (source, split), count in SETS.items():
        folder = root / "audio" / source / split
        folder.mkdir(parents=True)
        for i in range(count):
            path = folder / f"{split}-{i:03d}.flac"
            samples = (0.3 * rng.standard_normal(4800 * (i + 1))).clip(-1, 1)
            sf.write(str(path), samples, 48000, format="FLAC", subtype="PCM_16")
            rows.append(
                ManifestRow(
                    id=f"{source}/{split}-{i:03d}", source=source, split=split, path=str(path),
                    captions=[f"caption {i} of {source}"] if source == "caps" else [],
                    labels=["rain", "wind"] if source == "tags" else [],
                    duration=4800 * (i + 1) / 48000, fold=i % 2 if source == "tags" else None,
                    task="pretrain" if source == "tags" else "retrieval", sample_rate=48000, channels=1,
                    augmented={"template": ["the sound of rain and wind"] if source == "tags" else [],
                               "k2c": ["rain falls in the wind"] if source == "tags" else []},
                )
            )
    return rows


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[ManifestRow]]:
    """The stage run end to end from a captions manifest and params.yaml."""
    root = tmp_path_factory.mktemp("shards")
    rows = make_rows(root)
    write_manifest(rows, root / "captions.jsonl")
    (root / "params.yaml").write_text(yaml.safe_dump({"shards": {"samples_per_shard": PER_SHARD}}))
    code = shards_stage.main(["--params", str(root / "params.yaml"), "--input", str(root / "captions.jsonl"),
                              "--out", str(root / "shards")])
    assert code == 0
    return root / "shards", rows


def test_reference_layout_with_sizes_json(built) -> None:
    shard_root, _ = built
    for (source, split), count in SETS.items():
        folder = shard_root / source / split
        n_shards = -(-count // PER_SHARD)
        tars = [f"{i:06d}.tar" for i in range(n_shards)]
        assert sorted(p.name for p in folder.iterdir()) == sorted(tars + ["sizes.json"])
        sizes = json.loads((folder / "sizes.json").read_text())
        assert sizes == {name: min(PER_SHARD, count - i * PER_SHARD) for i, name in enumerate(tars)}


def test_index_lists_sets_splits_shards_and_counts(built) -> None:
    shard_root, rows = built
    index = json.loads((shard_root / "index.json").read_text())
    assert index["total"] == len(rows) and index["samples_per_shard"] == PER_SHARD
    assert {(s, sp) for s, splits in index["sets"].items() for sp in splits} == set(SETS)
    entry = index["sets"]["caps"]["train"]
    assert entry["count"] == 5 and entry["shards"][0] == "caps/train/000000.tar"
    assert all((shard_root / rel).is_file() for rel in entry["shards"])
    assert list_shards(shard_root, sources=["tags"]) == [shard_root / "tags/train/000000.tar",
                                                         shard_root / "tags/train/000001.tar"]


def test_tar_members_are_flac_and_json_pairs_with_fixed_metadata(built) -> None:
    shard_root, _ = built
    with tarfile.open(shard_root / "caps/train/000000.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["train-000.flac", "train-000.json", "train-001.flac", "train-001.json"]
    assert {(m.mtime, m.uname, m.mode) for m in members} == {(TAR_MTIME, "clap", 0o444)}


def test_round_trip_of_audio_and_metadata(built) -> None:
    shard_root, rows = built
    by_id = {r.id: r for r in rows}
    seen = []
    for clip_id, waveform, sr, meta in iter_shard_samples(list_shards(shard_root)):
        row = by_id[clip_id]
        original, original_sr = sf.read(row.path, dtype="float32")
        assert sr == original_sr == 48000 and waveform.dtype == np.float32 and waveform.ndim == 1
        np.testing.assert_array_equal(waveform, original)
        assert meta == {
            "text": row.captions, "text_augment_template": row.augmented["template"],
            "text_augment_t5": row.augmented["k2c"], "tag": row.labels, "id": row.id, "source": row.source,
            "split": row.split, "duration": row.duration, "fold": row.fold, "task": row.task,
        }
        seen.append(clip_id)
    assert len(seen) == len(set(seen)) and sorted(seen) == sorted(by_id)
    # a brace pattern works like a list
    pattern = str(shard_root / "caps/train/{000000..000002}.tar")
    assert [s[0] for s in iter_shard_samples(pattern)] == [f"caps/train-{i:03d}" for i in range(5)]


def test_identical_inputs_give_identical_bytes(built, tmp_path: Path) -> None:
    shard_root, rows = built
    other = tmp_path / "shards"
    write_shards(list(reversed(rows)), other, ShardConfig(samples_per_shard=PER_SHARD), progress=False)
    first = {p.relative_to(shard_root): p.read_bytes() for p in shard_root.rglob("*") if p.is_file()}
    second = {p.relative_to(other): p.read_bytes() for p in other.rglob("*") if p.is_file()}
    assert first.keys() == second.keys()
    assert all(first[k] == second[k] for k in first), [k for k in first if first[k] != second[k]]


def test_rewrite_removes_stale_shards(built, tmp_path: Path) -> None:
    _, rows = built
    root = tmp_path / "shards"
    write_shards(rows, root, ShardConfig(samples_per_shard=1), progress=False)
    assert len(list((root / "caps/train").glob("*.tar"))) == 5
    write_shards(rows, root, ShardConfig(samples_per_shard=4), progress=False)
    assert sorted(p.name for p in (root / "caps/train").glob("*.tar")) == ["000000.tar", "000001.tar"]
    assert sum(1 for _ in iter_shard_samples(list_shards(root))) == len(rows)


def test_unnormalised_or_missing_audio_is_a_clear_error(tmp_path: Path) -> None:
    wav = tmp_path / "raw.wav"
    sf.write(str(wav), np.zeros(4410, dtype=np.float32), 44100)
    row = ManifestRow(id="caps/raw", source="caps", split="train", path=str(wav))
    with pytest.raises(ShardError, match="caps/raw.*44100 Hz.*normalised"):
        write_shards([row], tmp_path / "out", ShardConfig(), progress=False)
    gone = ManifestRow(id="caps/gone", source="caps", split="train", path=str(tmp_path / "gone.flac"))
    with pytest.raises(ShardError, match="caps/gone.*normalize"):
        write_shards([gone], tmp_path / "out", ShardConfig(), progress=False)
