"""Each source kind read from its native layout, built here from small generated audio files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import webdataset as wds

from clap.data.sources import (
    ADAPTERS,
    AdapterContext,
    SourceError,
    SourceSpec,
    parse_sources,
    read_source,
)


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read(root: Path, kind: str, tmp_path: Path, **options: object) -> dict:
    spec = SourceSpec.from_params({"name": kind, "kind": kind, "path": str(root), **options})
    rows = read_source(root, spec, AdapterContext(extract_dir=tmp_path / "extracted", progress=False))
    return {row.id: row for row in rows}


def build_clotho(root: Path, make_audio) -> Path:
    """Clotho v2: clotho_captions_<split>.csv + <split>/<file_name> (file names with spaces)."""
    for folder, names in {
        "development": ["Birds in the park.wav", "Rain on roof.wav"],
        "validation": ["Door slam.wav"],
        "evaluation": ["Traffic noise.wav"],
    }.items():
        rows = []
        for name in names:
            make_audio(root / folder / name)
            rows.append([name] + [f"{Path(name).stem.lower()} caption {i}" for i in range(1, 6)])
        write_csv(root / f"clotho_captions_{folder}.csv", ["file_name"] + [f"caption_{i}" for i in range(1, 6)], rows)
    return root


def test_clotho_layout_maps_splits_and_keeps_five_captions(tmp_path: Path, make_audio) -> None:
    rows = read(build_clotho(tmp_path / "clotho", make_audio), "clotho", tmp_path)
    assert set(rows) == {"clotho/Birds_in_the_park", "clotho/Rain_on_roof", "clotho/Door_slam", "clotho/Traffic_noise"}
    assert {r.split for r in rows.values()} == {"train", "val", "test"}
    assert rows["clotho/Door_slam"].split == "val" and rows["clotho/Traffic_noise"].split == "test"
    birds = rows["clotho/Birds_in_the_park"]
    assert birds.captions == [f"birds in the park caption {i}" for i in range(1, 6)]
    assert Path(birds.path).is_file() and birds.task == "retrieval" and birds.source == "clotho"


def test_audiocaps_groups_captions_and_accepts_both_file_namings(tmp_path: Path, make_audio) -> None:
    root = tmp_path / "audiocaps"
    header = ["audiocap_id", "youtube_id", "start_time", "caption"]
    write_csv(root / "train.csv", header, [[91, "abcDEF12345", 30, "a dog barks"]])
    write_csv(
        root / "test.csv",
        header,
        [
            [101, "zzzYYY00000", 10, "rain falls"],
            [102, "zzzYYY00000", 10, "water drips"],
            [201, "qqq", 0, "a car passes"],
        ],
    )
    make_audio(root / "audio" / "train" / "abcDEF12345.wav")  # named by youtube_id
    make_audio(root / "audio" / "test" / "102.flac")  # named by (one of the) audiocap_id
    rows = read(root, "audiocaps", tmp_path)
    assert rows["audiocaps/abcDEF12345"].split == "train"
    rain = rows["audiocaps/zzzYYY00000"]
    assert rain.captions == ["rain falls", "water drips"] and rain.path.endswith("102.flac") and rain.split == "test"
    # a clip without audio keeps a row (ingest reports it) pointing where the file was expected
    assert not Path(rows["audiocaps/qqq"].path).exists()


def test_esc50_labels_folds_and_test_split(tmp_path: Path, make_audio) -> None:
    root = tmp_path / "ESC-50"
    header = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
    write_csv(
        root / "meta" / "esc50.csv",
        header,
        [
            ["1-100032-A-0.wav", 1, 0, "dog", True, 100032, "A"],
            ["2-1000-A-41.wav", 2, 41, "chirping_birds", False, 1000, "A"],
        ],
    )
    for name in ("1-100032-A-0.wav", "2-1000-A-41.wav"):
        make_audio(root / "audio" / name)
    rows = read(root, "esc50", tmp_path)
    birds = rows["esc50/2-1000-A-41"]
    assert birds.labels == ["chirping birds"] and birds.fold == 2
    assert all(r.split == "test" and r.task == "classification" and not r.captions for r in rows.values())


def test_urbansound8k_reads_fold_folders(tmp_path: Path, make_audio) -> None:
    root = tmp_path / "UrbanSound8K"
    header = ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]
    write_csv(
        root / "metadata" / "UrbanSound8K.csv",
        header,
        [
            ["100032-3-0-0.wav", 100032, 0, 0.3, 1, 5, 3, "dog_bark"],
            ["7061-6-0-0.wav", 7061, 0, 0.3, 1, 1, 6, "gun_shot"],
        ],
    )
    make_audio(root / "audio" / "fold5" / "100032-3-0-0.wav")
    make_audio(root / "audio" / "fold1" / "7061-6-0-0.wav")
    rows = read(root, "urbansound8k", tmp_path)
    bark = rows["urbansound8k/100032-3-0-0"]
    assert bark.labels == ["dog bark"] and bark.fold == 5 and Path(bark.path).is_file()
    assert Path(bark.path).parent.name == "fold5"


def test_folder_csv_merges_rows_and_splits_labels(tmp_path: Path, make_audio) -> None:
    root = tmp_path / "mine"
    make_audio(root / "clips" / "a.wav")
    make_audio(root / "b.flac")
    write_csv(
        root / "captions.csv",
        ["file", "caption", "labels", "split"],
        [
            ["clips/a.wav", "a bell rings", "bell;metal", ""],
            ["clips/a.wav", "ringing", "", ""],
            ["b.flac", "", "wind", "val"],
        ],
    )
    rows = read(root, "folder", tmp_path)
    a = rows["folder/clips_a"]
    assert a.captions == ["a bell rings", "ringing"] and a.labels == ["bell", "metal"] and a.split == "train"
    b = rows["folder/b"]
    assert b.split == "val" and b.labels == ["wind"] and b.task == "pretrain" and not b.captions


def test_folder_jsonl_and_default_split_option(tmp_path: Path, make_audio) -> None:
    root = tmp_path / "mine"
    make_audio(root / "x.wav")
    (root / "captions.jsonl").write_text(
        json.dumps({"file": "x.wav", "captions": ["one", "two"], "labels": ["tag a"], "fold": 3}) + "\n"
    )
    rows = read(root, "folder", tmp_path, split="test")
    x = rows["folder/x"]
    assert (x.captions, x.labels, x.fold, x.split) == (["one", "two"], ["tag a"], 3, "test")


def test_builtin_reads_metadata_jsonl(tmp_path: Path, make_audio) -> None:
    root = tmp_path / "builtin"
    make_audio(root / "builtin_captions" / "train" / "c0001.flac")
    (root / "metadata.jsonl").write_text(
        json.dumps(
            {
                "id": "builtin_captions/c0001",
                "source": "builtin_captions",
                "split": "train",
                "file": "builtin_captions/train/c0001.flac",
                "captions": ["a tone"],
                "labels": [],
                "fold": None,
                "task": "retrieval",
            }
        )
        + "\n"
    )
    row = read(root, "builtin", tmp_path)["builtin_captions/c0001"]
    assert row.source == "builtin_captions" and Path(row.path).is_file() and row.captions == ["a tone"]


def write_tar(path: Path, samples: list[tuple[str, bytes, dict]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as sink:
        for key, audio, meta in samples:
            sink.write({"__key__": key, "flac": audio, "json": json.dumps(meta).encode()})


def test_laion_wds_extracts_audio_and_reads_text_and_tags(tmp_path: Path, make_audio) -> None:
    root = tmp_path / "laion" / "freesound"
    audio = [make_audio(tmp_path / "src" / f"{i}.flac").read_bytes() for i in range(3)]
    write_tar(
        root / "train" / "0.tar",
        [
            ("0", audio[0], {"text": ["a whistle", "someone whistles"], "tag": ["whistle"]}),
            ("1", audio[1], {"text": "a cough"}),
        ],
    )
    write_tar(root / "valid" / "0.tar", [("0", audio[2], {"text": "a bird"})])
    (root / "train" / "sizes.json").write_text(json.dumps({"0.tar": 2}))
    rows = read(root, "laion_wds", tmp_path)
    assert set(rows) == {"laion_wds/train_0_0", "laion_wds/train_0_1", "laion_wds/valid_0_0"}
    whistle = rows["laion_wds/train_0_0"]
    assert whistle.captions == ["a whistle", "someone whistles"] and whistle.labels == ["whistle"]
    assert rows["laion_wds/valid_0_0"].split == "val"
    # audio was extracted byte for byte into the extract folder
    assert Path(whistle.path).read_bytes() == audio[0]
    assert Path(whistle.path).is_relative_to(tmp_path / "extracted")


def test_unknown_kind_lists_known_kinds() -> None:
    with pytest.raises(SourceError) as info:
        parse_sources([{"name": "x", "kind": "audioset", "path": "data/raw/x"}])
    message = str(info.value)
    assert "unknown kind 'audioset'" in message and all(kind in message for kind in ADAPTERS)


def test_credentials_in_params_are_refused() -> None:
    with pytest.raises(SourceError, match="aws_secret_access_key must not be in params.yaml"):
        parse_sources([{"name": "x", "kind": "clotho", "path": "s3://b/p", "aws_secret_access_key": "hunter2"}])


def test_duplicate_source_names_and_unknown_options_are_errors() -> None:
    with pytest.raises(SourceError, match="used twice"):
        parse_sources([{"name": "a", "kind": "esc50", "path": "x"}, {"name": "a", "kind": "clotho", "path": "y"}])
    with pytest.raises(SourceError, match="unknown option"):
        parse_sources([{"name": "a", "kind": "esc50", "path": "x", "spilt": "train"}])


def test_missing_table_names_file_and_layout(tmp_path: Path) -> None:
    (tmp_path / "esc").mkdir()
    with pytest.raises(SourceError, match=r"esc/meta/esc50.csv: not found"):
        read(tmp_path / "esc", "esc50", tmp_path)
    root = tmp_path / "clotho"
    root.mkdir()
    (root / "clotho_captions_development.csv").write_text("name,caption\nx.wav,hi\n")
    with pytest.raises(SourceError, match=r"missing column\(s\) file_name"):
        read(root, "clotho", tmp_path)
