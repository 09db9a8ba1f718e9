"""The `clap` command line, end to end on a tiny saved model and real audio files."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clap.cli import main
from tests.tiny_clap import save_tiny_model

LABELS = ["dog", "rain", "engine"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("cli-model") / "tiny", fusion=True)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory, make_audio) -> list[Path]:  # noqa: ANN001 (conftest fixture)
    root = tmp_path_factory.mktemp("clips")
    return [
        make_audio(root / "a.wav", seconds=1.0, sample_rate=16_000),
        make_audio(root / "sub" / "b.flac", seconds=11.0, sample_rate=44_100, channels=2),
    ]


def _run(*args: str) -> int:
    return main([str(a) for a in args])


def test_embed_audio_writes_jsonl_csv_and_npy_that_agree(model_dir: Path, clips: list[Path], tmp_path: Path) -> None:
    outs = {suffix: tmp_path / f"audio{suffix}" for suffix in (".jsonl", ".csv", ".npy")}
    for out in outs.values():
        assert _run("embed", "--model", model_dir, "--audio", *clips, "--out", out) == 0

    rows = [json.loads(line) for line in outs[".jsonl"].read_text().splitlines()]
    assert [r["path"] for r in rows] == [str(c) for c in clips]
    from_jsonl = np.array([r["embedding"] for r in rows])
    with outs[".csv"].open() as fh:
        table = list(csv.reader(fh))
    assert table[0] == ["path"] + [f"e{i}" for i in range(512)]
    assert [r[0] for r in table[1:]] == [str(c) for c in clips]
    from_csv = np.array([[float(v) for v in r[1:]] for r in table[1:]])
    from_npy = np.load(outs[".npy"])
    assert from_npy.shape == (2, 512) and from_npy.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(from_npy, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(from_jsonl, from_npy, atol=1e-6)
    np.testing.assert_allclose(from_csv, from_npy, atol=1e-6)


def test_embed_folder_and_texts(model_dir: Path, clips: list[Path], tmp_path: Path) -> None:
    folder_out = tmp_path / "folder.npy"
    assert _run("embed", "--model", model_dir, "--audio", clips[0].parent, "--out", folder_out) == 0
    assert np.load(folder_out).shape == (2, 512)  # a.wav and sub/b.flac, found recursively

    text_file = tmp_path / "texts.txt"
    text_file.write_text("a dog barks\n\nrain on a roof\n")
    out = tmp_path / "text.jsonl"
    assert _run("embed", "--model", model_dir, "--text-file", text_file, "--out", out) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == ["a dog barks", "rain on a roof"]
    assert all(len(r["embedding"]) == 512 for r in rows)


def test_zeroshot_json_and_csv(model_dir: Path, clips: list[Path], tmp_path: Path) -> None:
    out_json = tmp_path / "zs.json"
    assert _run("zeroshot", "--model", model_dir, "--labels", ",".join(LABELS), *clips, "--top-k", "2",
                "--out", out_json) == 0
    report = json.loads(out_json.read_text())
    assert report["labels"] == LABELS and report["template"] == "This is a sound of {label}."
    assert [r["path"] for r in report["results"]] == [str(c) for c in clips]
    for r in report["results"]:
        assert len(r["top"]) == 2 and r["top"][0]["probability"] >= r["top"][1]["probability"]
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert r["top"][0]["label"] == max(r["probabilities"], key=r["probabilities"].get)

    labels_file = tmp_path / "classes.json"  # the reference's {label: index} layout, out of order
    labels_file.write_text(json.dumps({"rain": 1, "engine": 2, "dog": 0}))
    out_csv = tmp_path / "zs.csv"
    assert _run("zeroshot", "--model", model_dir, "--labels-file", labels_file, *clips, "--format", "csv",
                "--out", out_csv) == 0
    with out_csv.open() as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == ["path", "prediction", "probability"] + LABELS
    for row, r in zip(table, report["results"]):
        assert row["prediction"] == r["top"][0]["label"]
        assert float(row["probability"]) == pytest.approx(r["top"][0]["probability"], abs=1e-5)


def test_console_script_runs(model_dir: Path, clips: list[Path]) -> None:
    """The installed `clap` entry point, in a fresh process, printing JSON to stdout."""
    script = Path(sys.executable).with_name("clap")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "clap.cli"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        command + ["zeroshot", "--model", str(model_dir), "--labels", "dog,rain", str(clips[0])],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["results"][0]["path"] == str(clips[0])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["embed", "--model", "{tmp}/nope", "--text", "x", "--out", "{tmp}/o.npy"], "nope: no such model"),
        (["embed", "--model", "{model}", "--text", "x", "--out", "{tmp}/o.parquet"], "unknown output format"),
        (["embed", "--model", "{model}", "--audio", "{tmp}/missing.wav", "--out", "{tmp}/o.npy"],
         "missing.wav: no such file or folder"),
        (["zeroshot", "--model", "{model}", "--labels", "dog,dog", "{clip}"], "duplicate labels"),
        (["zeroshot", "--model", "{model}", "--labels-file", "{tmp}/none.txt", "{clip}"], "none.txt: labels file not found"),
        (["zeroshot", "--model", "{model}", "--labels", "dog", "{tmp}/garbage.wav"], "garbage.wav: not a readable audio file"),
    ],
)
def test_errors_name_the_input(
    args: list[str], message: str, model_dir: Path, clips: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "garbage.wav").write_bytes(b"definitely not audio" * 8)
    filled = [a.format(tmp=tmp_path, model=model_dir, clip=clips[0]) for a in args]
    assert main(filled) == 2
    assert message in capsys.readouterr().err


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["zeroshot", "--model", "m", "a.wav"])  # neither --labels nor --labels-file
    assert exc.value.code == 2


@pytest.fixture()
def folder_with_a_corrupt_file(clips: list[Path], tmp_path: Path) -> Path:
    """The two good clips plus an undecodable .wav and an empty .flac, in one folder (sorted order:
    a.wav, b.flac, broken.wav, empty.flac)."""
    folder = tmp_path / "clips"
    folder.mkdir()
    for clip in clips:
        (folder / clip.name).write_bytes(clip.read_bytes())
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00not really a wave file" * 4)
    (folder / "empty.flac").write_bytes(b"")
    return folder


def test_unreadable_files_in_a_folder_are_skipped_and_listed(
    model_dir: Path, folder_with_a_corrupt_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = folder_with_a_corrupt_file
    bad = [str(folder / "broken.wav"), str(folder / "empty.flac")]
    good = [str(folder / "a.wav"), str(folder / "b.flac")]

    out = tmp_path / "emb.jsonl"
    assert _run("embed", "--model", model_dir, "--audio", folder, "--out", out) == 1
    assert [json.loads(line)["path"] for line in out.read_text().splitlines()] == good
    with (tmp_path / "emb.jsonl.errors.csv").open() as fh:
        errors = list(csv.DictReader(fh))
    assert [e["path"] for e in errors] == bad and all(e["reason"] for e in errors)
    err = capsys.readouterr().err
    assert f"clap embed: skipped {bad[0]}: " in err and f"clap embed: skipped {bad[1]}: " in err
    assert "2 of 4 audio files skipped as unreadable" in err and "emb.jsonl.errors.csv" in err

    out_csv = tmp_path / "zs.csv"
    assert _run("zeroshot", "--model", model_dir, "--labels", ",".join(LABELS), folder, "--format", "csv",
                "--out", out_csv) == 1
    with out_csv.open() as fh:
        assert [row["path"] for row in csv.DictReader(fh)] == good
    assert (tmp_path / "zs.csv.errors.csv").read_text().count("\n") == 3  # header + the two bad files

    # --strict: stop at the first unreadable file, name it, exit 2
    assert _run("embed", "--model", model_dir, "--audio", folder, "--out", tmp_path / "strict.npy", "--strict") == 2
    assert "broken.wav" in capsys.readouterr().err and not (tmp_path / "strict.npy").exists()

    # once the folder is clean, the run succeeds and the stale errors file is gone
    for path in bad:
        Path(path).unlink()
    assert _run("embed", "--model", model_dir, "--audio", folder, "--out", out) == 0
    assert not (tmp_path / "emb.jsonl.errors.csv").exists()


def test_laion_checkpoint_takes_a_tokenizer_folder(tmp_path: Path, clips: list[Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`--tokenizer` on both commands; without it the error names the file and the argument."""
    from tests.test_checkpoint import laion_state_dict, make_roberta_tokenizer, save_laion, tiny_hf_clap

    checkpoint = save_laion(tmp_path / "630k-tiny.pt", laion_state_dict(tiny_hf_clap(False), False))
    tokenizer = make_roberta_tokenizer(tmp_path / "tok")
    assert _run("zeroshot", "--model", checkpoint, "--tokenizer", tokenizer, "--labels", "dog,rain", clips[0],
                "--out", tmp_path / "zs.json") == 0
    assert json.loads((tmp_path / "zs.json").read_text())["results"][0]["path"] == str(clips[0])
    assert _run("embed", "--model", checkpoint, "--tokenizer", tokenizer, "--text", "a dog", "--out",
                tmp_path / "t.npy") == 0
    capsys.readouterr()

    assert _run("embed", "--model", checkpoint, "--text", "a dog", "--out", tmp_path / "t2.npy") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert err.startswith("clap embed: error: 630k-tiny.pt needs the RoBERTa tokenizer 'roberta-base', which is not "
                          "available offline: pass tokenizer=<folder> (ClapInference/load_model) or --tokenizer "
                          "<folder> (clap CLI, eval stages)")
    assert err.count("roberta-base") == 1
