"""Short sound effects in the native ESC-50 layout survive ingest, normalize and shards, and are
repeat-padded at feature time, as the reference does (issue 12, item 3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from clap.data.ingest import IngestConfig, IngestOutputs, run_ingest
from clap.data.normalize import NormalizeConfig, NormalizeOutputs, normalize_manifest
from clap.data.shards import ShardConfig, iter_shard_samples, list_shards, shard_manifest
from clap.data.sources import parse_sources
from clap.model.frontend import fill_waveform

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["dog", "door_wood_knock", "mouse_click", "glass_breaking", "keyboard_typing"]


def write_esc50(root: Path) -> dict[str, float]:
    """ESC-50 layout, one clip per class, 0.05-0.4 s long (clicks, knocks, a bark), 44.1 kHz."""
    rows, lengths = ["filename,fold,target,category,esc10,src_file,take"], {}
    rng = np.random.default_rng(0)
    for target, (category, seconds) in enumerate(zip(CLASSES, (0.2, 0.35, 0.05, 0.4, 0.12))):
        name = f"{target % 5 + 1}-{1000 + target}-A-{target}.wav"
        t = np.arange(int(seconds * 44100)) / 44100
        burst = 0.4 * np.exp(-t * 20) * rng.standard_normal(t.size)  # a decaying noise burst
        (root / "audio").mkdir(parents=True, exist_ok=True)
        sf.write(str(root / "audio" / name), burst.astype(np.float32), 44100, subtype="PCM_16")
        rows.append(f"{name},{target % 5 + 1},{target},{category},False,{1000 + target},A")
        lengths[f"esc50/{Path(name).stem}"] = seconds
    (root / "meta").mkdir()
    (root / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    return lengths


def test_short_esc50_clips_survive_normalize_and_shards(tmp_path: Path) -> None:
    lengths = write_esc50(tmp_path / "ESC-50-master")
    sources = parse_sources([{"name": "esc50", "kind": "esc50", "path": str(tmp_path / "ESC-50-master")}])
    ingest_out = IngestOutputs(manifest=tmp_path / "ingest.jsonl", report=tmp_path / "r/ingest.json",
                               gx_dir=tmp_path / "r/gx/ingest")
    run_ingest(IngestConfig(sources=sources, progress=False), ingest_out)

    # the repository's own normalize settings (min_duration: null), one worker
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["normalize"]
    cfg = NormalizeConfig.from_params({**params, "workers": 1})
    outputs = NormalizeOutputs(manifest=tmp_path / "normalized.jsonl", audio_root=tmp_path / "audio",
                               quarantine=tmp_path / "r/quarantine.csv", report=tmp_path / "r/normalize.json",
                               gx_dir=tmp_path / "r/gx/normalize")
    summary = normalize_manifest(ingest_out.manifest, outputs, cfg, progress=False)
    assert (summary.written, summary.quarantined) == (len(CLASSES), 0)
    assert outputs.quarantine.read_text() == "id,source,split,path,code,reason\n"

    shard_manifest(outputs.manifest, tmp_path / "shards", ShardConfig(samples_per_shard=4), progress=False)
    samples = {sid: (wave, sr, meta) for sid, wave, sr, meta in
               iter_shard_samples([str(p) for p in list_shards(tmp_path / "shards")])}
    assert {meta["id"] for _, _, meta in samples.values()} == set(lengths)
    assert sorted(tag for _, _, meta in samples.values() for tag in meta["tag"]) == sorted(
        c.replace("_", " ") for c in CLASSES)
    for wave, sr, meta in samples.values():
        assert sr == 48000 and wave.size == pytest.approx(lengths[meta["id"]] * 48000, abs=2)
        # at feature time the clip is repeated whole up to 10 s, then zero-padded (the reference's repeatpad)
        filled = fill_waveform(torch.from_numpy(wave), 480_000).numpy()
        repeats = 480_000 // wave.size
        assert np.array_equal(filled[: repeats * wave.size], np.tile(wave, repeats))
        assert not filled[repeats * wave.size:].any()
