"""normalize: real audio files of every common format in, 48 kHz mono FLAC out, bad input quarantined."""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

from clap.data.manifest import ManifestRow, read_manifest, write_manifest
from clap.data.normalize import (
    ClipResult,
    NormalizeConfig,
    QUARANTINE_COLUMNS,
    NormalizeOutputs,
    normalize_expectations,
    normalize_clip,
    normalize_manifest,
    output_path,
    write_quarantine,
)
from clap.data.validation import DataValidationError, validate_dataframe
from clap.stages import normalize as normalize_stage
from tests.repo_copy import committed_params

TONE_HZ = 440.0


@dataclass(frozen=True)
class Good:
    fmt: str
    subtype: str
    sample_rate: int
    channels: int
    seconds: float


GOOD = {
    "wav_44k_stereo": Good("WAV", "PCM_16", 44100, 2, 1.5),
    "flac_48k_mono": Good("FLAC", "PCM_16", 48000, 1, 1.0),
    "ogg_22k_mono": Good("OGG", "VORBIS", 22050, 1, 2.0),
    "mp3_44k_stereo": Good("MP3", "MPEG_LAYER_III", 44100, 2, 1.2),
    "wav_16k_float": Good("WAV", "FLOAT", 16000, 1, 0.8),
    "odd name (1)": Good("WAV", "PCM_16", 32000, 1, 0.6),
}

# bad input -> (reason code, words the quarantine sentence must contain)
BAD = {
    "undecodable": ("undecodable", "not a readable audio file"),
    "empty": ("empty", "empty file"),
    "zero_frames": ("no_samples", "zero audio samples"),
    "silent": ("silent", "silent"),
    "nan_samples": ("non_finite", "not finite"),
    "too_short": ("too_short", "too short"),
    "too_long": ("too_long", "too long"),
    "missing": ("missing", "file not found"),
}

CFG = NormalizeConfig(min_duration=0.5, max_duration=3.0, silence_threshold=1e-4, max_bad_fraction=1.0, workers=2)


def tone(seconds: float, sr: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amplitude * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)


def write_good(path: Path, spec: Good) -> None:
    left = tone(spec.seconds, spec.sample_rate, 0.5)
    # stereo: the right channel is quieter, so the mono mean has amplitude (0.5 + 0.1) / 2 = 0.3
    data = np.stack([left, left * 0.2], axis=1) if spec.channels == 2 else left
    sf.write(str(path), data, spec.sample_rate, format=spec.fmt, subtype=spec.subtype)


def write_bad(path: Path, kind: str) -> None:
    sr = 16000
    if kind == "undecodable":
        path.write_bytes(b"RIFF" + bytes(range(256)) * 8)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "zero_frames":
        sf.write(str(path), np.zeros(0, dtype=np.float32), sr)
    elif kind == "silent":
        sf.write(str(path), np.zeros(sr, dtype=np.float32), sr)
    elif kind == "nan_samples":
        data = tone(1.0, sr)
        data[100:110] = np.nan
        sf.write(str(path), data, sr, subtype="FLOAT")
    elif kind == "too_short":
        sf.write(str(path), tone(0.2, sr), sr)
    elif kind == "too_long":
        sf.write(str(path), tone(3.5, sr), sr)
    elif kind == "missing":
        pass  # the manifest names a file that is not there


def dominant_hz(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spectrum)])


def make_manifest(root: Path, good: dict[str, Good], bad: list[str]) -> Path:
    raw = root / "raw"
    raw.mkdir(parents=True)
    ext = {"WAV": "wav", "FLAC": "flac", "OGG": "ogg", "MP3": "mp3"}
    rows = []
    for name, spec in good.items():
        path = raw / f"{name}.{ext[spec.fmt]}"
        write_good(path, spec)
        rows.append(ManifestRow(id=f"test/{name}", source="test", split="train", path=str(path), labels=["tone"]))
    for name in bad:
        path = raw / f"{name}.wav"
        write_bad(path, name)
        rows.append(ManifestRow(id=f"test/{name}", source="test", split="train", path=str(path)))
    write_manifest(rows, root / "ingest.jsonl")
    return root / "ingest.jsonl"


def outputs_under(root: Path) -> NormalizeOutputs:
    return NormalizeOutputs(
        manifest=root / "normalized.jsonl",
        audio_root=root / "audio",
        quarantine=root / "reports/quarantine.csv",
        report=root / "reports/normalize.json",
        gx_dir=root / "reports/gx/normalize",
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("normalize")
    manifest = make_manifest(root, GOOD, list(BAD))
    outputs = outputs_under(root)
    summary = normalize_manifest(manifest, outputs, CFG, progress=False)
    rows = {r.id: r for r in read_manifest(outputs.manifest)}
    return root, outputs, summary, rows


def quarantine_rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and list(rows[0]) == list(QUARANTINE_COLUMNS)
    return {r["id"]: r for r in rows}


def test_each_kind_of_bad_input_is_quarantined_with_its_reason(run) -> None:
    _, outputs, summary, rows = run
    quarantined = quarantine_rows(outputs.quarantine)
    assert set(quarantined) == {f"test/{name}" for name in BAD}
    for name, (code, words) in BAD.items():
        assert words in quarantined[f"test/{name}"]["reason"], (name, quarantined[f"test/{name}"])
        assert quarantined[f"test/{name}"]["path"].endswith(f"{name}.wav")
        assert (quarantined[f"test/{name}"]["code"], quarantined[f"test/{name}"]["source"]) == (code, "test")
        assert quarantined[f"test/{name}"]["split"] == "train"
    assert summary.quarantined_by_reason == {code: 1 for code, _ in BAD.values()}
    # nothing valid dropped, nothing bad kept
    assert set(rows) == {f"test/{name}" for name in GOOD}


def test_good_inputs_become_48k_mono_16bit_flac_of_the_same_length(run) -> None:
    _, outputs, _, rows = run
    for name, spec in GOOD.items():
        row = rows[f"test/{name}"]
        path = Path(row.path)
        assert path.is_file() and path.suffix == ".flac"
        assert path.resolve().is_relative_to((outputs.audio_root / "test" / "train").resolve())
        info = sf.info(str(path))
        assert (info.format, info.subtype, info.samplerate, info.channels) == ("FLAC", "PCM_16", 48000, 1)
        assert (row.sample_rate, row.channels) == (48000, 1)
        assert row.duration == pytest.approx(info.frames / 48000, abs=1e-6)
        tolerance = 0.06 if spec.fmt == "MP3" else 1e-3  # MP3 frames may pad or trim a little
        assert row.duration == pytest.approx(spec.seconds, abs=tolerance), name
        audio, sr = sf.read(str(path), dtype="float32")
        assert dominant_hz(audio, sr) == pytest.approx(TONE_HZ, abs=2.0), name  # resampled, not re-pitched
        expected_peak = 0.3 if spec.channels == 2 else 0.5  # channel mean
        assert np.max(np.abs(audio)) == pytest.approx(expected_peak, abs=0.03), name
        assert row.labels == ["tone"]  # the rest of the row carries over


def test_report_counts_inputs_outputs_and_hours(run) -> None:
    _, outputs, _, rows = run
    report = json.loads(outputs.report.read_text())
    assert report["inputs"] == len(GOOD) + len(BAD)
    assert report["written"] == len(GOOD)
    assert report["quarantined"] == len(BAD)
    assert report["quarantined_by_reason"]["silent"] == 1
    assert report["hours"] == pytest.approx(sum(r.duration for r in rows.values()) / 3600, abs=1e-6)
    assert report["by_source"]["test"]["written"] == len(GOOD)


def test_gx_suite_result_is_written(run) -> None:
    _, outputs, _, _ = run
    result = json.loads((outputs.gx_dir / "normalize.json").read_text())
    assert result["success"] is True
    checked = {r["expectation_config"]["kwargs"].get("column") for r in result["results"]}
    assert {"sample_rate", "channels", "duration", "finite", "file_exists"} <= checked


def test_gx_suite_rejects_a_wrong_rate_or_a_missing_file(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "id": ["a", "b"],
            "path": ["a.flac", "b.flac"],
            "file_exists": [True, False],
            "sample_rate": [48000, 44100],
            "channels": [1, 1],
            "duration": [1.0, 1.0],
            "finite": [True, True],
        }
    )
    with pytest.raises(DataValidationError) as err:
        validate_dataframe(frame, "normalize", normalize_expectations(CFG), tmp_path, build_docs=False)
    assert "sample_rate" in str(err.value) and "file_exists" in str(err.value)


def test_output_bytes_are_identical_across_runs_and_worker_counts(run, tmp_path: Path) -> None:
    root, _, _, rows = run
    again = outputs_under(tmp_path)
    normalize_manifest(root / "ingest.jsonl", again, replace(CFG, workers=1), validate=False, progress=False)
    rerun = {r.id: r for r in read_manifest(again.manifest)}
    assert set(rerun) == set(rows)
    for clip_id, row in rows.items():
        assert Path(rerun[clip_id].path).read_bytes() == Path(row.path).read_bytes(), clip_id
        assert Path(rerun[clip_id].path).name == Path(row.path).name


def test_normalising_a_normalised_file_changes_nothing(run, tmp_path: Path) -> None:
    _, _, _, rows = run
    done = rows["test/wav_44k_stereo"]
    again = normalize_clip(done, tmp_path / "again.flac", CFG)
    assert again.ok
    assert (tmp_path / "again.flac").read_bytes() == Path(done.path).read_bytes()


def test_overloud_float_input_is_clipped_and_counted(tmp_path: Path) -> None:
    loud = tmp_path / "loud.wav"
    sf.write(str(loud), tone(1.0, 48000, amplitude=1.5), 48000, subtype="FLOAT")
    row = ManifestRow(id="test/loud", source="test", split="train", path=str(loud))
    result = normalize_clip(row, tmp_path / "loud.flac", CFG)
    assert result.ok and result.clipped_samples > 0
    samples, _ = sf.read(str(tmp_path / "loud.flac"), dtype="int16")
    assert samples.max() == 32767 and samples.min() == -32768


def write_params(path: Path, **normalize: object) -> Path:
    params = {"normalize": {"sample_rate": 48000, "min_duration": 0.5, "max_duration": 3.0,
                            "silence_threshold": 1e-4, "workers": 1, **normalize}}
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.mark.parametrize(("max_bad", "exit_code"), [(0.1, 1), (0.5, 0)])
def test_stage_fails_only_above_the_bad_share(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, max_bad: float, exit_code: int
) -> None:
    manifest = make_manifest(tmp_path, {k: GOOD[k] for k in ("wav_44k_stereo", "flac_48k_mono")}, ["silent"])
    params = write_params(tmp_path / "params.yaml", max_bad_fraction=max_bad)
    out = outputs_under(tmp_path)
    args = ["--params", str(params), "--input", str(manifest), "--output", str(out.manifest),
            "--audio-root", str(out.audio_root), "--quarantine", str(out.quarantine),
            "--report", str(out.report), "--gx-dir", str(out.gx_dir)]
    with caplog.at_level(logging.ERROR):
        assert normalize_stage.main(args) == exit_code
    assert "test/silent" in quarantine_rows(out.quarantine)
    if exit_code:
        message = caplog.text
        assert "1 of 3 inputs (33.3%)" in message and str(out.quarantine) in message
        assert "normalize.max_bad_fraction" in message
        assert not out.manifest.exists()  # nothing downstream runs on a bad set
    else:
        assert len(read_manifest(out.manifest)) == 2


def test_output_paths_are_safe_and_distinct(tmp_path: Path) -> None:
    def path_of(clip_id: str) -> Path:
        return output_path(ManifestRow(id=clip_id, source="src", split="train", path="x"), tmp_path)

    assert path_of("src/clip_001") == tmp_path / "src/train/clip_001.flac"
    escaped = path_of("src/../../etc/passwd")
    assert escaped.parent == tmp_path / "src/train" and ".." not in escaped.name
    assert path_of("src/a b") != path_of("src/a_b")
    assert path_of("src/dir/clip").parent == tmp_path / "src/train"


def test_quarantine_rerun_replaces_its_rows_and_keeps_others(tmp_path: Path) -> None:
    csv_path = tmp_path / "quarantine.csv"
    csv_path.write_text("id,path,reason\nother/x,x.wav,flagged elsewhere\n")
    bad = [ClipResult(id="test/a", source_path="a.wav", reason_code="silent", reason="silent: peak 0")]
    for _ in range(2):
        write_quarantine(bad, csv_path, ["test/a"])
    rows = quarantine_rows(csv_path)
    assert list(rows) == ["other/x", "test/a"]


# --- short clips kept, long files rejected from the header, re-encoded eval copies dropped --------


def test_short_clips_are_kept_by_default_and_min_duration_is_opt_in(tmp_path: Path) -> None:
    defaults = NormalizeConfig.from_params(committed_params()["normalize"])
    assert defaults.min_duration is None
    rows = []
    for name, seconds, sr in (("blip", 0.2, 44100), ("click", 0.01, 16000), ("one_sample", 1 / 48000, 48000)):
        path = tmp_path / f"{name}.wav"
        sf.write(str(path), tone(seconds, sr) + np.float32(0.1), sr)  # + 0.1: the one sample is not silent
        rows.append(ManifestRow(id=f"test/{name}", source="test", split="test", path=str(path)))
    for row in rows:
        result = normalize_clip(row, tmp_path / "out" / f"{row.id}.flac", replace(defaults, workers=1))
        assert result.ok, (row.id, result.reason)
        assert result.row is not None and result.row.duration == pytest.approx(sf.info(row.path).duration, abs=1e-4)
    opt_in = normalize_clip(rows[0], tmp_path / "x.flac", replace(defaults, min_duration=0.5))
    assert opt_in.reason_code == "too_short" and "normalize.min_duration (0.5 s)" in opt_in.reason


def write_sparse_wav(path: Path, seconds: float, sample_rate: int = 48000, channels: int = 2) -> int:
    """A valid 16-bit PCM WAV of ``seconds`` of silence that takes no disk space (a sparse file)."""
    import struct

    data_bytes = int(seconds * sample_rate) * channels * 2
    block = channels * 2
    header = (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVEfmt "
              + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block, block, 16)
              + b"data" + struct.pack("<I", data_bytes))
    with path.open("wb") as fh:
        fh.write(header)
        fh.truncate(len(header) + data_bytes)
    return data_bytes


def test_an_hour_long_file_is_rejected_from_its_header_without_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tracemalloc

    import clap.data.normalize as normalize_module

    long_wav = tmp_path / "hour.wav"
    assert write_sparse_wav(long_wav, 3600.0) > 600_000_000  # 691 MB of samples on paper
    assert sf.info(str(long_wav)).duration == pytest.approx(3600.0)

    def no_decoding(path: object) -> None:
        raise AssertionError(f"{path} was decoded")

    monkeypatch.setattr(normalize_module, "load_audio", no_decoding)
    row = ManifestRow(id="test/hour", source="test", split="train", path=str(long_wav))
    tracemalloc.start()
    try:
        result = normalize_clip(row, tmp_path / "hour.flac", replace(CFG, max_duration=120.0))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.reason_code == "too_long"
    assert result.reason == ("too long: 3600.000 s (from the file header; not decoded) is above "
                             "normalize.max_duration (120 s)")
    assert peak < 10_000_000 and not (tmp_path / "hour.flac").exists()


def test_a_lossless_reencode_of_an_eval_clip_is_dropped_from_training(tmp_path: Path) -> None:
    # int16 samples, so both encodings hold exactly the same audio (libsndfile's float -> int16 differs by format)
    samples = np.round(tone(1.0, 44100) * np.linspace(0.2, 1.0, 44100) * 32767).astype(np.int16)
    files = {"eval_wav": ("test", "wav"), "train_flac": ("train", "flac"), "train_other": ("train", "wav")}
    rows = []
    for name, (split, ext) in files.items():
        path = tmp_path / "raw" / f"{name}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), samples if name != "train_other" else samples // 2, 44100, subtype="PCM_16")
        rows.append(ManifestRow(id=f"set/{name}", source="set", split=split, path=str(path), captions=["x"]))
    assert Path(rows[0].path).read_bytes() != Path(rows[1].path).read_bytes()  # ingest's file hash misses it
    assert np.array_equal(sf.read(rows[0].path, dtype="int16")[0], sf.read(rows[1].path, dtype="int16")[0])
    write_manifest(rows, tmp_path / "ingest.jsonl")
    outputs = outputs_under(tmp_path)
    summary = normalize_manifest(tmp_path / "ingest.jsonl", outputs, replace(CFG, workers=1), progress=False)
    kept = {r.id for r in read_manifest(outputs.manifest)}
    assert kept == {"set/eval_wav", "set/train_other"} and summary.overlap_dropped == 1 and summary.quarantined == 0
    assert not (outputs.audio_root / "set" / "train" / "train_flac.flac").exists()
    assert outputs.overlaps_csv == tmp_path / "reports" / "overlaps_audio.csv"
    with outputs.overlaps_csv.open(newline="") as fh:
        matches = list(csv.DictReader(fh))
    assert [(m["id"], m["eval_id"], m["code"]) for m in matches] == [("set/train_flac", "set/eval_wav", "same_audio")]
    assert matches[0]["reason"] == "the same decoded audio (48 kHz int16 samples) as evaluation clip set/eval_wav (test)"
    assert json.loads(outputs.report.read_text())["overlap_dropped"] == 1
