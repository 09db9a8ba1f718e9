"""Zero-shot evaluation: native ESC-50 / VGGSound layouts, overlap exclusion, prompt ensembles, reports,
and the README's command on a LAION-layout checkpoint."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from clap.data.manifest import ManifestRow, sha256_file, write_manifest
from clap.eval.datasets import detect_kind, read_vggsound
from clap.eval.zeroshot import ZeroShotConfig, ZeroShotSetSpec, class_text_embeddings
from clap.model.inference import ClapInference
from clap.stages import eval_zeroshot
from tests.tiny_clap import save_tiny_model, tiny_model
from tests.toy_shards import write_toy_shards

ESC_CLASSES = ["dog", "rain", "church_bells", "clock_tick", "crying_baby", "sea_waves"]
SR = 44_100


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def write_esc50(root: Path) -> Path:
    """An ESC-50 layout: meta/esc50.csv + audio/, 6 classes x 2 folds x 2 clips (1 s, 44.1 kHz), plus a
    fold-1 entry whose file is not audio."""
    rng = np.random.default_rng(0)
    (root / "audio").mkdir(parents=True)
    rows = []
    for target, category in enumerate(ESC_CLASSES):
        for fold in (1, 2):
            for take in "AB":
                name = f"{fold}-{1000 + target}-{take}-{target}.wav"
                t = np.arange(SR) / SR
                wave = 0.3 * np.sin(2 * np.pi * (150 * (target + 1) + 40 * (take == "B")) * t) + 0.01 * rng.standard_normal(SR)
                sf.write(root / "audio" / name, wave.astype(np.float32), SR)
                rows.append([name, fold, target, category, "False", str(1000 + target), take])
    (root / "audio" / "1-9999-A-0.wav").write_bytes(b"not audio at all")
    rows.append(["1-9999-A-0.wav", 1, 0, "dog", "False", "9999", "A"])
    (root / "meta").mkdir()
    with (root / "meta" / "esc50.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zeroshot")
    esc = write_esc50(root / "ESC-50-master")
    shards = write_toy_shards(root / "toy", per_class={"test": 2}, seconds=1.0)
    # The manifest: a training clip with the same bytes as an ESC-50 fold-1 file, and the toy test
    # rows, one of which shares its (ingest) hash with another training row.
    dup = esc / "audio" / "1-1001-A-1.wav"
    toy_test = sorted((root / "toy" / "audio").glob("test-*.flac"))
    rows = [
        ManifestRow(id="other/copy_of_rain", source="other", split="train", path="x.wav", sha256=sha256_file(dup)),
        ManifestRow(id="other/copy_of_toy", source="other", split="train", path="y.wav", sha256="ab" * 32),
    ] + [
        ManifestRow(id=f"toy/{p.stem}", source="toy", split="test", path=str(p),
                    sha256="ab" * 32 if i == 0 else sha256_file(p)) for i, p in enumerate(toy_test)
    ]
    manifest = root / "captions.jsonl"
    write_manifest(rows, manifest)
    exclude = root / "exclude.txt"
    exclude.write_text("# clips the external model saw\n1-1002-B-2.wav\n")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"eval_zeroshot": {
        "sets": [{"name": "toy", "shards": "toy/test"}], "template": "This is a sound of {label}.",
        "templates": None, "folds": None, "batch_size": 8, "exclude_ids": None,
    }}))
    return {"root": root, "esc": esc, "shards": shards, "manifest": manifest, "exclude": exclude, "params": params,
            "model": save_tiny_model(root / "model", fusion=False)}


def test_esc50_folder_fold1_with_exclusions_and_reports(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "eval"
    rc = eval_zeroshot.main([
        "--params", str(setup["params"]), "--model", str(setup["model"]), "--manifest", str(setup["manifest"]),
        "--set", f"esc50={setup['esc']}", "--folds", "1", "--exclude-ids", str(setup["exclude"]),
        "--out", str(out), "--device", "cpu",
    ])
    assert rc == 0
    metrics = json.loads((out / "zeroshot.json").read_text())
    # fold 1: 12 listed clips + 1 broken file; one excluded by content hash, one by file name.
    assert metrics["esc50.excluded"] == 2 and metrics["esc50.unreadable"] == 1
    assert metrics["esc50.n"] == 13 - 2 - 1
    assert metrics["esc50.n_classes"] == 6
    assert metrics["esc50.chance_top1"] == pytest.approx(1 / 6, abs=1e-6)
    for key in ("top1", "top5", "balanced_top1"):
        assert 0.0 <= metrics[f"esc50.{key}"] <= 1.0
    assert metrics["esc50.top5"] >= metrics["esc50.top1"]
    assert not any(key.startswith("esc50.fold") for key in metrics)  # one fold only
    # 13 clips of fold 1 in the metadata, 10 scored: partial, though every class was scored
    assert (metrics["esc50.complete"], metrics["esc50.clips_expected"], metrics["esc50.clips_scored"]) == (False, 13, 10)
    assert (metrics["esc50.classes_expected"], metrics["esc50.classes_scored"]) == (6, 6)
    assert metrics["esc50.dur_le10s.n"] == 10 and "esc50.dur_gt10s.n" not in metrics  # 1 s clips only
    assert metrics["esc50.dur_le10s.top1"] == metrics["esc50.top1"]

    dropped = {row["id"]: (row["stage"], row["reason"]) for row in read_csv(out / "zeroshot/esc50/dropped.csv")}
    assert dropped["esc50/1-1001-A-1"][0] == "eval" and "other/copy_of_rain" in dropped["esc50/1-1001-A-1"][1]
    assert "exclude_ids" in dropped["esc50/1-1002-B-2"][1]
    assert "not a readable audio file" in dropped["esc50/1-9999-A-0"][1]

    # The same top-1 from the inference API on the clips that were kept (labels as words).
    kept = [p for p in sorted((setup["esc"] / "audio").glob("1-*.wav")) if f"esc50/{p.stem}" not in dropped]
    labels = sorted(c.replace("_", " ") for c in ESC_CLASSES)
    engine = ClapInference(setup["model"], device="cpu", progress=False)
    predicted = engine.zero_shot(kept, labels).predictions()
    truth = [ESC_CLASSES[int(p.stem.split("-")[-1])].replace("_", " ") for p in kept]
    assert metrics["esc50.top1"] == pytest.approx(np.mean([a == b for a, b in zip(predicted, truth)]), abs=1e-6)

    predictions = read_csv(out / "zeroshot_plots/esc50/predictions.csv")
    assert len(predictions) == metrics["esc50.n"]
    assert np.mean([r["actual"] == r["predicted"] for r in predictions]) == pytest.approx(metrics["esc50.top1"], abs=1e-6)

    per_class = read_csv(out / "zeroshot/esc50/per_class.csv")
    assert sorted(r["label"] for r in per_class) == labels
    assert sum(int(r["n"]) for r in per_class) == metrics["esc50.n"]
    assert (out / "zeroshot_plots/esc50/confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ingested_set_from_params_excludes_training_overlap_by_manifest_hash(setup: dict[str, Path], tmp_path: Path) -> None:
    rc = eval_zeroshot.main(["--params", str(setup["params"]), "--model", str(setup["model"]),
                             "--shards", str(setup["shards"]), "--manifest", str(setup["manifest"]),
                             "--ingest-manifest", "none", "--out", str(tmp_path), "--device", "cpu"])
    assert rc == 0
    metrics = json.loads((tmp_path / "zeroshot.json").read_text())
    assert (metrics["toy.n"], metrics["toy.excluded"], metrics["toy.n_classes"]) == (5, 1, 3)
    assert metrics["toy.top5"] == 1.0 and metrics["toy.chance_top5"] == 1.0  # 3 classes: all in the top 5
    assert (tmp_path / "zeroshot_plots/toy/confusion.png").is_file()


def test_prompt_ensemble_is_the_renormalised_mean_of_the_template_embeddings() -> None:
    engine = ClapInference(tiny_model(False), device="cpu", progress=False)
    labels = ["dog", "rain", "church bells"]
    templates = ["This is a sound of {label}.", "a recording of {label}"]
    ensemble = class_text_embeddings(engine, labels, templates)
    first, second = (engine.embed_text([t.format(label=x) for x in labels]) for t in templates)
    torch.testing.assert_close(ensemble, torch.nn.functional.normalize(first + second, dim=-1))
    torch.testing.assert_close(ensemble.norm(dim=1), torch.ones(3))
    assert not torch.allclose(ensemble, first, atol=1e-4)
    torch.testing.assert_close(class_text_embeddings(engine, labels, templates[:1]), first)
    config = ZeroShotConfig.from_params({"templates": templates, "template": "ignored {label}"})
    assert config.prompt_templates == tuple(templates)
    with pytest.raises(ValueError, match="placeholder"):
        ZeroShotConfig.from_params({"template": "no label here"})


def test_vggsound_csv_layout_is_read_with_missing_audio_kept_for_reporting(tmp_path: Path) -> None:
    (tmp_path / "audio").mkdir()
    sf.write(tmp_path / "audio" / "abc_000030.wav", np.zeros(1600, dtype=np.float32), 16_000)
    sf.write(tmp_path / "audio" / "trainclip_000000.wav", np.zeros(1600, dtype=np.float32), 16_000)
    (tmp_path / "vggsound.csv").write_text(
        "abc,30,people marching,test\n"
        "gone,12,dog barking,test\n"
        "trainclip,0,dog barking,train\n"
    )
    assert detect_kind(tmp_path) == "vggsound"
    rows = read_vggsound(tmp_path, "vgg")
    assert [(r.id, r.labels) for r in rows] == [("vgg/abc_000030", ["people marching"]), ("vgg/gone_000012", ["dog barking"])]
    assert Path(rows[0].path).is_file() and not Path(rows[1].path).exists()
    assert len(read_vggsound(tmp_path, "vgg", split=None)) == 3


def test_set_specs_from_the_command_line() -> None:
    assert ZeroShotSetSpec.from_cli("esc50=/data/ESC-50-master") == ZeroShotSetSpec(name="esc50", path="/data/ESC-50-master")
    assert ZeroShotSetSpec.from_cli("us8k:urbansound8k=/d").kind == "urbansound8k"
    assert ZeroShotSetSpec.from_cli("b=shards:builtin_esc/test").shards == "builtin_esc/test"
    with pytest.raises(ValueError, match="unknown kind"):
        ZeroShotSetSpec.from_cli("x:mp3=/d")


def test_readme_command_runs_on_a_laion_layout_checkpoint(setup: dict[str, Path], tmp_path: Path) -> None:
    """``--model <LAION .pt> --tokenizer <folder> --set esc50=<folder> --folds 1 --manifest none``."""
    import transformers
    from tokenizers import ByteLevelBPETokenizer

    from tests.test_checkpoint import laion_state_dict, save_laion, tiny_hf_clap

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([f"This is a sound of {c.replace('_', ' ')}." for c in ESC_CLASSES] * 3, vocab_size=400,
                            min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(tmp_path))
    tokenizer = tmp_path / "roberta"
    transformers.RobertaTokenizerFast(vocab=str(tmp_path / "vocab.json"), merges=str(tmp_path / "merges.txt")).save_pretrained(tokenizer)
    checkpoint = save_laion(tmp_path / "630k-tiny.pt", laion_state_dict(tiny_hf_clap(False), False))

    out = tmp_path / "laion"
    rc = eval_zeroshot.main(["--params", str(setup["params"]), "--model", str(checkpoint), "--tokenizer", str(tokenizer),
                             "--set", f"esc50={setup['esc']}", "--folds", "1", "--manifest", "none",
                             "--out", str(out), "--device", "cpu"])
    assert rc == 0
    metrics = json.loads((out / "zeroshot.json").read_text())
    assert metrics["esc50.n"] == 12 and metrics["esc50.excluded"] == 0 and metrics["esc50.unreadable"] == 1
    assert 0.0 <= metrics["esc50.top1"] <= 1.0


def test_unknown_sets_fail_before_the_model_loads(setup: dict[str, Path], tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    common = ["--params", str(setup["params"]), "--model", str(tmp_path / "no-model"), "--shards", str(setup["shards"]),
              "--manifest", "none", "--out", str(tmp_path)]
    assert eval_zeroshot.main(common + ["--set", "esc=shards:esc50/test"]) == 1
    assert "esc50/test" in caplog.text and "toy/test" in caplog.text  # names the known sets
    assert eval_zeroshot.main(common + ["--set", f"x={tmp_path}"]) == 1
    assert "no known dataset layout" in caplog.text
    assert not (tmp_path / "zeroshot.json").exists()


def test_ingested_set_accounts_for_clips_dropped_upstream_and_keeps_the_full_class_list(
        setup: dict[str, Path], tmp_path: Path) -> None:
    """The ingest manifest lists 7 clips of 4 classes; normalize quarantined the only 'rain' clip and
    one 'mid beep' clip vanished without a record: the set is scored among all 4 classes, marked partial,
    every missing clip is listed with its stage and reason, and accuracies are split by duration."""
    from clap.data.shards import ShardConfig, write_shards
    from tests.toy_shards import toy_clip

    rng = np.random.default_rng(1)
    listed = [("low hum", 110.0, 1.0), ("low hum", 110.0, 10.5), ("high whistle", 3520.0, 1.0),
              ("high whistle", 3520.0, 1.0), ("mid beep", 880.0, 1.0), ("mid beep", 880.0, 1.0), ("rain", 0.0, 1.0)]
    rows = []
    for i, (label, frequency, seconds) in enumerate(listed):
        path = tmp_path / "audio" / f"acct-{i}.flac"
        path.parent.mkdir(exist_ok=True)
        sf.write(path, toy_clip(frequency, seconds, rng), 48_000, subtype="PCM_16")
        rows.append(ManifestRow(id=f"acct/{i}", source="acct", split="test", path=str(path), labels=[label],
                                duration=seconds, sample_rate=48_000, channels=1, task="classification"))
    write_manifest(rows, tmp_path / "ingest.jsonl")
    shards = tmp_path / "shards"
    write_shards(rows[:5], shards, ShardConfig(samples_per_shard=4), progress=False)  # acct/5 and acct/6 never arrive
    (tmp_path / "quarantine.csv").write_text("id,path,reason\nacct/6,raw/rain.wav,silent: peak amplitude 0 < 1e-4\n")

    out = tmp_path / "eval"
    rc = eval_zeroshot.main(["--params", str(setup["params"]), "--model", str(setup["model"]), "--shards", str(shards),
                             "--set", "acct=shards:acct/test", "--manifest", "none",
                             "--ingest-manifest", str(tmp_path / "ingest.jsonl"),
                             "--quarantine", str(tmp_path / "quarantine.csv"), "--out", str(out), "--device", "cpu"])
    assert rc == 0
    metrics = json.loads((out / "zeroshot.json").read_text())
    assert metrics["acct.complete"] is False
    assert (metrics["acct.clips_expected"], metrics["acct.clips_scored"]) == (7, 5)
    assert (metrics["acct.classes_expected"], metrics["acct.classes_scored"]) == (4, 3)
    assert metrics["acct.n_classes"] == 4 and metrics["acct.chance_top1"] == pytest.approx(0.25)
    assert (metrics["acct.quarantined"], metrics["acct.missing_upstream"]) == (1, 1)
    assert (metrics["acct.dur_le10s.n"], metrics["acct.dur_gt10s.n"]) == (4, 1)
    assert metrics["acct.dur_gt10s.top1"] in (0.0, 1.0)

    dropped = {row["id"]: row for row in read_csv(out / "zeroshot/acct/dropped.csv")}
    assert set(dropped) == {"acct/5", "acct/6"}
    assert dropped["acct/6"]["stage"] == "normalize" and "silent: peak amplitude 0" in dropped["acct/6"]["reason"]
    assert dropped["acct/5"]["stage"] == "upstream" and "not in its shards" in dropped["acct/5"]["reason"]
    per_class = {row["label"]: row for row in read_csv(out / "zeroshot/acct/per_class.csv")}
    assert per_class["rain"]["n"] == "0" and per_class["rain"]["top1"] == ""  # listed, never scored
