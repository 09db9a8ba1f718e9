"""The ingest stage: audio facts, overlap exclusion, the GX suite and the stage's exit codes."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from clap.data.ingest import IngestConfig, IngestOutputs, exclude_overlap, run_ingest
from clap.data.manifest import ManifestRow, read_manifest, sha256_file
from clap.data.overlap import OVERLAP_COLUMNS
from clap.data.sources import parse_sources
from clap.data.validation import DataValidationError, validate_dataframe
from clap.stages import ingest as ingest_stage

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_builtin(root: Path, make_audio) -> dict[str, Path]:
    """A small corpus in the built-in layout: captioned train/val/test, a label-only clip, a
    train clip that is a byte copy of a test clip, and a train file whose header is unreadable."""
    clips = {
        "cap/train1": ("train", ["a dog barks"], [], "wav"),
        "cap/train2": ("train", ["rain falls", "it rains"], [], "flac"),
        "cap/val1": ("val", ["a bell"], [], "wav"),
        "cap/test1": ("test", ["a siren wails"], [], "flac"),
        "lab/train1": ("train", [], ["engine", "wind"], "wav"),
    }
    paths: dict[str, Path] = {}
    lines = []
    for clip_id, (split, captions, labels, ext) in clips.items():
        source, clip = clip_id.split("/")
        rel = f"{source}/{split}/{clip}.{ext}"
        paths[clip_id] = make_audio(root / rel, seconds=0.5, sample_rate=22050, channels=2 if ext == "flac" else 1)
        lines.append({"id": clip_id, "source": source, "split": split, "file": rel, "captions": captions,
                      "labels": labels, "fold": None, "task": "retrieval" if captions else "pretrain"})
    # a train copy of the test clip under a new id (must be excluded from training)
    shutil.copyfile(paths["cap/test1"], root / "cap/train/copy.flac")
    lines.append({"id": "cap/copy", "source": "cap", "split": "train", "file": "cap/train/copy.flac",
                  "captions": ["a siren"], "labels": [], "fold": None, "task": "retrieval"})
    # a file that exists but is not audio: kept with duration 0 for normalize to quarantine
    (root / "cap/train/broken.wav").write_bytes(b"RIFF not really a wave file")
    lines.append({"id": "cap/broken", "source": "cap", "split": "train", "file": "cap/train/broken.wav",
                  "captions": ["noise"], "labels": [], "fold": None, "task": "retrieval"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return paths


def write_esc50(root: Path, make_audio, duplicate_of: Path) -> None:
    """An ESC-50 layout with one clip and a copy of a builtin *train* clip (train keeps nothing from it)."""
    (root / "meta").mkdir(parents=True)
    (root / "meta/esc50.csv").write_text(
        "filename,fold,target,category,esc10,src_file,take\n"
        "1-1-A-0.wav,1,0,dog,True,1,A\n"
        "1-2-A-1.wav,1,1,crying_baby,False,2,A\n"
    )
    make_audio(root / "audio/1-1-A-0.wav")
    (root / "audio").mkdir(exist_ok=True)
    shutil.copyfile(duplicate_of, root / "audio/1-2-A-1.wav")


def outputs_in(tmp: Path) -> IngestOutputs:
    return IngestOutputs(manifest=tmp / "manifest.jsonl", report=tmp / "report.json", gx_dir=tmp / "gx")


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory, make_audio):
    """One full ingest of builtin + esc50 sources, shared by the tests that read its outputs."""
    tmp = tmp_path_factory.mktemp("ingest")
    paths = write_builtin(tmp / "builtin", make_audio)
    write_esc50(tmp / "esc", make_audio, duplicate_of=paths["cap/train1"])
    config = IngestConfig(
        sources=parse_sources(
            [{"name": "builtin", "kind": "builtin", "path": str(tmp / "builtin")},
             {"name": "esc50", "kind": "esc50", "path": str(tmp / "esc")}]
        ),
        progress=False,
    )
    outputs = outputs_in(tmp / "out")
    result = run_ingest(config, outputs)
    return result, outputs, paths


def test_manifest_rows_carry_header_facts_and_hashes(ingested) -> None:
    result, outputs, paths = ingested
    rows = {r.id: r for r in read_manifest(outputs.manifest)}
    stereo = rows["cap/train2"]
    assert (stereo.sample_rate, stereo.channels) == (22050, 2)
    assert stereo.duration == pytest.approx(0.5, abs=1e-3)
    assert stereo.sha256 == sha256_file(paths["cap/train2"])
    assert rows["esc50/1-1-A-0"].labels == ["dog"] and rows["esc50/1-2-A-1"].labels == ["crying baby"]


def test_train_copies_of_eval_audio_are_dropped_and_reported(ingested) -> None:
    result, outputs, _ = ingested
    ids = {r.id for r in read_manifest(outputs.manifest)}
    # the copy of the test clip, and the builtin train clip that ESC-50 (an eval set) also holds
    assert "cap/copy" not in ids and "cap/train1" not in ids
    assert {"cap/test1", "esc50/1-2-A-1", "cap/train2"} <= ids
    report = json.loads(outputs.report.read_text())
    assert report["overlap"]["dropped"] == 2
    assert report["overlap"]["matches"] == {"cap/copy": "cap/test1", "cap/train1": "esc50/1-2-A-1"}
    assert report["overlap"]["dropped_by_source"] == {"cap": 2}
    assert report["counts"]["cap"] == {"test": 1, "train": 2, "val": 1}
    assert report["counts"]["esc50"] == {"test": 2}
    assert report["rows"] == len(ids)


def test_unreadable_file_is_kept_with_zero_duration(ingested) -> None:
    _, outputs, _ = ingested
    broken = {r.id: r for r in read_manifest(outputs.manifest)}["cap/broken"]
    assert broken.duration == 0.0 and broken.sample_rate == 0 and broken.sha256
    report = json.loads(outputs.report.read_text())
    assert report["unreadable"]["ids"] == ["cap/broken"]
    assert "not a readable audio file" in report["unreadable"]["reasons"]["cap/broken"]


def test_gx_result_and_docs_are_written(ingested) -> None:
    result, outputs, _ = ingested
    gx_result = json.loads((outputs.gx_dir / "ingest.json").read_text())
    assert gx_result["success"] is True
    checked = {r["expectation_config"]["type"] for r in gx_result["results"]}
    assert {"expect_column_values_to_be_unique", "expect_column_values_to_be_in_set"} <= checked
    assert (outputs.gx_dir / "docs" / "index.html").is_file()
    assert result.validation.success


def test_overlap_exclusion_spans_sources_and_ignores_unhashed_rows() -> None:
    rows = [
        ManifestRow(id="a/t1", source="a", split="train", path="x", sha256="h1"),
        ManifestRow(id="a/t2", source="a", split="train", path="x", sha256="h2"),
        ManifestRow(id="a/t3", source="a", split="train", path="x", sha256=""),
        ManifestRow(id="b/v1", source="b", split="val", path="x", sha256="h1"),
        ManifestRow(id="c/e1", source="c", split="test", path="x", sha256=""),
        ManifestRow(id="c/e2", source="c", split="test", path="x", sha256="h1"),
    ]
    result = exclude_overlap(rows)
    assert result.dropped == {"a/t1": "b/v1"}
    # eval rows are never dropped, even when they share audio with each other
    assert [r.id for r in result.kept] == ["a/t2", "a/t3", "b/v1", "c/e1", "c/e2"]


def folder_source(root: Path, make_audio, missing: bool = True) -> Path:
    make_audio(root / "ok.wav")
    lines = [{"file": "ok.wav", "caption": "a tone"}]
    if missing:
        lines.append({"file": "gone.wav", "caption": "never recorded"})
    (root / "captions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


def test_missing_file_fails_validation_naming_the_row(tmp_path: Path, make_audio) -> None:
    folder_source(tmp_path / "mine", make_audio)
    sources = parse_sources([{"name": "mine", "kind": "folder", "path": str(tmp_path / "mine")}])
    config = IngestConfig(sources=sources, progress=False)
    outputs = outputs_in(tmp_path / "out")
    with pytest.raises(DataValidationError) as info:
        run_ingest(config, outputs)
    message = str(info.value)
    assert "expect_column_values_to_be_in_set on column 'file_exists'" in message and "mine/gone" in message
    assert not outputs.manifest.exists(), "a failing suite must not leave a manifest behind"
    report = json.loads(outputs.report.read_text())
    assert report["validation"]["success"] is False and any("file_exists" in f for f in report["validation"]["failed"])


def test_on_missing_skip_leaves_rows_out_and_lists_them(tmp_path: Path, make_audio) -> None:
    folder_source(tmp_path / "mine", make_audio)
    sources = parse_sources([{"name": "mine", "kind": "folder", "path": str(tmp_path / "mine"), "on_missing": "skip"}])
    outputs = outputs_in(tmp_path / "out")
    run_ingest(IngestConfig(sources=sources, progress=False), outputs)
    assert [r.id for r in read_manifest(outputs.manifest)] == ["mine/ok"]
    assert json.loads(outputs.report.read_text())["missing_skipped"] == {"count": 1, "ids": ["mine/gone"]}


def test_validate_dataframe_lists_duplicate_ids_and_unknown_splits(tmp_path: Path) -> None:
    frame = pd.DataFrame({"id": ["a", "b", "b", "c"], "split": ["train", "val", "val", "dev"]})
    expectations = [
        {"type": "expect_column_values_to_be_unique", "column": "id"},
        {"type": "expect_column_values_to_be_in_set", "column": "split", "value_set": ["train", "val", "test"]},
    ]
    with pytest.raises(DataValidationError) as info:
        validate_dataframe(frame, "demo", expectations, tmp_path / "gx", build_docs=False)
    report = info.value.report
    assert [(f.expectation_type, f.column) for f in report.failures] == [
        ("expect_column_values_to_be_unique", "id"),
        ("expect_column_values_to_be_in_set", "split"),
    ]
    assert report.failures[0].rows == ["b", "b"] and report.failures[1].examples == ["dev"]
    assert "'dev'" in str(info.value) and "rows c" in str(info.value)
    assert json.loads((tmp_path / "gx" / "demo.json").read_text())["success"] is False


def test_stage_exit_codes(tmp_path: Path, make_audio, monkeypatch: pytest.MonkeyPatch) -> None:
    folder_source(tmp_path / "mine", make_audio)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"sources": [{"name": "mine", "kind": "folder", "path": "mine"}], "ingest": {}}))
    monkeypatch.chdir(tmp_path)
    assert ingest_stage.main(["--params", str(params), "--no-progress"]) == 1  # gone.wav is missing
    assert not Path("data/manifest/ingest.jsonl").exists()
    params.write_text(yaml.safe_dump({"sources": [{"name": "nope", "kind": "folder", "path": "absent"}]}))
    assert ingest_stage.main(["--params", str(params)]) == 1  # a source folder that does not exist


def test_stage_runs_as_module_and_writes_its_outs(tmp_path: Path, make_audio) -> None:
    folder_source(tmp_path / "mine", make_audio, missing=False)
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"sources": [{"name": "mine", "kind": "folder", "path": "mine"}], "ingest": {"workers": 1}})
    )
    done = subprocess.run(
        [sys.executable, "-m", "clap.stages.ingest", "--params", "params.yaml", "--no-progress"],
        cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin",
                                                        "GX_ANALYTICS_ENABLED": "false", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r.id for r in read_manifest(tmp_path / "data/manifest/ingest.jsonl")] == ["mine/ok"]
    assert json.loads((tmp_path / "reports/data/ingest.json").read_text())["counts"] == {"mine": {"train": 1}}
    assert (tmp_path / "reports/data/gx/ingest/ingest.json").is_file()
    assert (tmp_path / "reports/data/gx/ingest/docs/index.html").is_file()
    assert (tmp_path / "reports/data/overlaps.csv").read_text() == ",".join(OVERLAP_COLUMNS) + "\n"


def test_a_bad_byte_in_metadata_is_one_line_and_exit_1_not_a_traceback(tmp_path: Path, make_audio) -> None:
    make_audio(tmp_path / "mine" / "a.wav")
    (tmp_path / "mine" / "captions.csv").write_bytes(b"file,caption\na.wav,a caf\xe9 door\n")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"sources": [{"name": "mine", "kind": "folder", "path": "mine"}]}))
    done = subprocess.run(
        [sys.executable, "-m", "clap.stages.ingest", "--params", "params.yaml", "--no-progress"],
        cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin",
                                                        "GX_ANALYTICS_ENABLED": "false", "HOME": str(tmp_path)},
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
    assert errors == [
        "ERROR clap.stages.ingest: mine/captions.csv line 2: not valid UTF-8 (byte 0xe9 at column 12); set "
        "`encoding: latin-1` (or the file's actual encoding, e.g. cp1252) on source 'mine' in params.yaml"
    ]


def write_table(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_overlap_by_freesound_and_youtube_id_across_native_layouts(tmp_path: Path, make_audio) -> None:
    """The same Freesound sound in a Clotho-layout train split and an ESC-50-layout set, the same YouTube
    video in AudioCaps test and a LAION-style AudioSet train shard: different bytes, still dropped."""
    import webdataset as wds

    clotho, esc, audiocaps, laion = (tmp_path / n for n in ("clotho", "esc", "audiocaps", "audioset"))
    for name in ("Dog bark.wav", "Wind.wav"):
        make_audio(clotho / "development" / name)
    write_table(clotho / "clotho_captions_development.csv",
                "file_name,caption_1\nDog bark.wav,a dog barks\nWind.wav,wind blows\n")
    write_table(clotho / "clotho_metadata_development.csv",
                "file_name,keywords,sound_id,sound_link\nDog bark.wav,dog,100032,\nWind.wav,wind,555,\n")
    for name in ("1-100032-A-0.wav", "1-100032-B-0.wav", "2-7777-A-1.wav"):
        make_audio(esc / "audio" / name)
    write_table(esc / "meta/esc50.csv", "filename,fold,target,category\n1-100032-A-0.wav,1,0,dog\n"
                "1-100032-B-0.wav,1,0,dog\n2-7777-A-1.wav,2,1,rooster\n")
    make_audio(audiocaps / "audio" / "test" / "abcDEF12345.wav")
    write_table(audiocaps / "test.csv", "audiocap_id,youtube_id,start_time,caption\n1,abcDEF12345,30,a car passes\n")
    (laion / "train").mkdir(parents=True)
    with wds.TarWriter(str(laion / "train" / "0.tar")) as sink:
        for key, ytid in (("0", "abcDEF12345"), ("1", "zzzYYY00000")):
            audio = make_audio(tmp_path / "src" / f"{key}.flac").read_bytes()
            meta = {"text": ["the sound of a car"], "original_data": {"youtube_id": ytid}}
            sink.write({"__key__": key, "flac": audio, "json": json.dumps(meta).encode()})
    sources = parse_sources([{"name": "clotho", "kind": "clotho", "path": str(clotho)},
                             {"name": "esc50", "kind": "esc50", "path": str(esc)},
                             {"name": "audiocaps", "kind": "audiocaps", "path": str(audiocaps)},
                             {"name": "audioset", "kind": "laion_wds", "path": str(laion)}])
    outputs = outputs_in(tmp_path / "out")
    run_ingest(IngestConfig(sources=sources, extract_dir=tmp_path / "extracted", progress=False), outputs)

    ids = {r.id for r in read_manifest(outputs.manifest)}
    assert "clotho/Dog_bark" not in ids and "audioset/train_0_0" not in ids
    assert {"clotho/Wind", "audioset/train_0_1", "esc50/1-100032-A-0", "audiocaps/abcDEF12345"} <= ids
    with (tmp_path / "out" / "overlaps.csv").open(newline="") as fh:
        matches = list(csv.DictReader(fh))
    assert list(matches[0]) == list(OVERLAP_COLUMNS)
    assert [(m["id"], m["code"], m["eval_id"], m["key"]) for m in matches] == [
        ("audioset/train_0_0", "youtube_id", "audiocaps/abcDEF12345", "youtube:abcDEF12345"),
        ("clotho/Dog_bark", "freesound_id", "esc50/1-100032-A-0", "freesound:100032"),
        ("clotho/Dog_bark", "freesound_id", "esc50/1-100032-B-0", "freesound:100032"),
    ]
    assert matches[1]["reason"] == "the same Freesound sound (100032) as evaluation clip esc50/1-100032-A-0 (test)"
    assert (matches[1]["source"], matches[1]["split"]) == ("clotho", "train")
    assert matches[1]["path"].endswith("development/Dog bark.wav")
    report = json.loads(outputs.report.read_text())["overlap"]
    assert report["dropped"] == 2 and report["matches_by_reason"] == {"freesound_id": 2, "youtube_id": 1}
