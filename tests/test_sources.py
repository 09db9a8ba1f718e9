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
    with pytest.raises(SourceError, match=r"params.yaml source 'a' \(kind esc50\): unknown keys \['spilt'\]; known: \[.*'on_missing'"):
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


# --- metadata encoding, paths confined to the dataset folder, origin ids -------------------------


def test_a_latin1_byte_is_one_error_naming_file_line_and_the_setting(tmp_path: Path, make_audio) -> None:
    root = build_clotho(tmp_path / "clotho", make_audio)
    table = root / "clotho_captions_evaluation.csv"
    lines = table.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b"traffic noise caption 2", "caf\u00e9 traffic caption 2".encode("latin-1"))
    table.write_bytes(b"".join(lines))
    column = lines[1].index(b"\xe9") + 1
    with pytest.raises(SourceError) as info:
        read(root, "clotho", tmp_path)
    assert str(info.value) == (
        f"{table} line 2: not valid UTF-8 (byte 0xe9 at column {column}); set `encoding: latin-1` (or the file's "
        "actual encoding, e.g. cp1252) on source 'clotho' in params.yaml"
    )
    rows = read(root, "clotho", tmp_path, encoding="latin-1")
    assert "caf\u00e9 traffic caption 2" in rows["clotho/Traffic_noise"].captions


def test_utf8_with_a_byte_order_mark_and_unknown_encodings(tmp_path: Path, make_audio) -> None:
    root = tmp_path / "mine"
    make_audio(root / "a.wav")
    (root / "captions.csv").write_bytes(b"\xef\xbb\xbffile,caption\na.wav,\xc3\xa9t\xc3\xa9\n")
    assert read(root, "folder", tmp_path)["folder/a"].captions == ["\u00e9t\u00e9"]
    with pytest.raises(SourceError, match=r"params.yaml source 'x': unknown encoding 'utf-9'"):
        parse_sources([{"name": "x", "kind": "folder", "path": str(root), "encoding": "utf-9"}])


def esc50_with(root: Path, make_audio, filename: str) -> Path:
    write_csv(root / "meta" / "esc50.csv", ["filename", "fold", "target", "category", "esc10", "src_file", "take"],
              [["1-100032-A-0.wav", 1, 0, "dog", True, 100032, "A"], [filename, 1, 0, "dog", True, 1, "A"]])
    make_audio(root / "audio" / "1-100032-A-0.wav")
    return root


@pytest.mark.parametrize("bad_name", ["../../outside.wav", "/etc/passwd", "..\\..\\outside.wav"])
def test_esc50_names_that_leave_the_dataset_folder_are_refused(tmp_path: Path, make_audio, bad_name: str) -> None:
    make_audio(tmp_path / "outside.wav")
    root = esc50_with(tmp_path / "data" / "ESC-50", make_audio, bad_name)
    with pytest.raises(SourceError) as info:
        read(root, "esc50", tmp_path)
    assert str(info.value) == (
        f"{root / 'meta' / 'esc50.csv'} line 3: filename {bad_name!r} must be a relative path inside "
        f"{root / 'audio'} (no '..', not absolute); fix or remove the row"
    )


def test_every_adapter_confines_metadata_paths(tmp_path: Path, make_audio) -> None:
    clotho = build_clotho(tmp_path / "clotho", make_audio)
    write_csv(clotho / "clotho_captions_validation.csv", ["file_name", "caption_1"], [["../evaluation/x.wav", "c"]])
    audiocaps = tmp_path / "audiocaps"
    write_csv(audiocaps / "test.csv", ["audiocap_id", "youtube_id", "start_time", "caption"],
              [[1, "abcDEF12345", 0, "ok"], [2, "../../../tmp/x", 0, "escape"]])
    us8k = tmp_path / "us8k"
    write_csv(us8k / "metadata" / "UrbanSound8K.csv", ["slice_file_name", "fsID", "fold", "class"],
              [["/abs/1-2-3-4.wav", 1, 1, "siren"]])
    builtin = tmp_path / "builtin"
    builtin.mkdir()
    (builtin / "metadata.jsonl").write_text(json.dumps(
        {"id": "b/1", "source": "b", "split": "train", "file": "../x.flac", "captions": ["c"]}) + "\n")
    folder = tmp_path / "folder"
    write_csv(folder / "captions.csv", ["file", "caption"], [["sub/../../x.wav", "c"]])
    expected = {
        (clotho, "clotho"): f"{clotho / 'clotho_captions_validation.csv'} line 2: file_name '../evaluation/x.wav'",
        (audiocaps, "audiocaps"): f"{audiocaps / 'test.csv'} line 3: youtube_id '../../../tmp/x'",
        (us8k, "urbansound8k"): f"{us8k / 'metadata' / 'UrbanSound8K.csv'} line 2: slice_file_name '/abs/1-2-3-4.wav'",
        (builtin, "builtin"): f"{builtin / 'metadata.jsonl'} line 1: file '../x.flac'",
        (folder, "folder"): f"{folder / 'captions.csv'} line 2: file 'sub/../../x.wav'",
    }
    for (root, kind), start in expected.items():
        with pytest.raises(SourceError) as info:
            read(root, kind, tmp_path)
        assert str(info.value).startswith(start + " must be a relative path inside"), str(info.value)


def test_adapters_record_freesound_and_youtube_origins(tmp_path: Path, make_audio) -> None:
    ctx = AdapterContext(extract_dir=tmp_path / "extracted", progress=False)

    def origins(root: Path, kind: str) -> dict[str, tuple[str, ...]]:
        spec = SourceSpec.from_params({"name": kind, "kind": kind, "path": str(root)})
        return {row.id: ctx.origins.get(row.id, ()) for row in read_source(root, spec, ctx)}

    esc = esc50_with(tmp_path / "esc", make_audio, "2-1000-B-41.wav")
    make_audio(esc / "audio" / "2-1000-B-41.wav")
    assert origins(esc, "esc50") == {"esc50/1-100032-A-0": ("freesound:100032",), "esc50/2-1000-B-41": ("freesound:1",)}
    clotho = build_clotho(tmp_path / "clotho", make_audio)
    write_csv(clotho / "clotho_metadata_development.csv", ["file_name", "keywords", "sound_id", "sound_link"],
              [["Birds in the park.wav", "birds", "", "https://freesound.org/people/x/sounds/4242/"],
               ["Rain on roof.wav", "rain", "777", ""]])
    found = origins(clotho, "clotho")
    assert found["clotho/Birds_in_the_park"] == ("freesound:4242",) and found["clotho/Rain_on_roof"] == ("freesound:777",)
    assert found["clotho/Door_slam"] == ()
    audiocaps = tmp_path / "audiocaps"
    write_csv(audiocaps / "test.csv", ["audiocap_id", "youtube_id", "start_time", "caption"], [[5, "abcDEF12345", 0, "c"]])
    assert origins(audiocaps, "audiocaps") == {"audiocaps/abcDEF12345": ("youtube:abcDEF12345",)}
    laion = tmp_path / "laion"
    clip = make_audio(tmp_path / "src" / "0.flac").read_bytes()
    write_tar(laion / "train" / "0.tar", [("0", clip, {"text": "t", "original_data": {"youtube_id": "abcDEF12345"}})])
    assert origins(laion, "laion_wds") == {"laion_wds/train_0_0": ("youtube:abcDEF12345",)}
