"""The keyword-to-caption stand-in: trained by the k2c_model stage, used by the captions stage in k2c mode."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import yaml

from clap.data.captions import STANDIN_INFO, template_caption
from clap.data.manifest import ManifestRow, read_manifest, write_manifest
from clap.stages import captions as captions_stage
from clap.stages import k2c_model as k2c_stage

GENDERED = re.compile(r"\b(man|woman|men|women|boy|girl|he|she)\b", re.IGNORECASE)

# every human caption starts with a gendered word, so the stand-in learns to write them and
# de-biasing has work to do on what it generates
CAPTIONED = {
    "dog barking": ["a man walks a dog that barks loudly", "a woman calls her dog while it barks"],
    "rain": ["a girl listens to rain falling on a roof", "a boy stands in heavy rain"],
    "engine humming": ["a man starts a car engine that hums", "a woman idles an engine"],
    "siren": ["a man hears a siren wailing", "a girl covers her ears as a siren blares"],
}
STEPS = 60
STANDIN = {"steps": STEPS, "batch_size": 8, "lr": 5.0e-3, "warmup_steps": 5, "d_model": 32, "d_ff": 64,
           "num_layers": 1, "num_heads": 2, "vocab_size": 300, "seed": 7}


def manifest_rows() -> list[ManifestRow]:
    rows = [ManifestRow(id=f"caps/train_{i}", source="caps", split="train", path="a.flac", captions=captions,
                        labels=[label]) for i, (label, captions) in enumerate(CAPTIONED.items())]
    rows.append(ManifestRow(id="caps/test_0", source="caps", split="test", path="t.flac", labels=["dog barking"],
                            captions=["a held-out caption the stand-in must never see"]))
    rows += [
        ManifestRow(id="tags/0", source="tags", split="train", path="b.flac", labels=["dog_barking"]),
        ManifestRow(id="tags/1", source="tags", split="train", path="c.flac", labels=["rain", "siren"]),
        ManifestRow(id="tags/2", source="tags", split="train", path="d.flac", labels=["engine humming"]),
    ]
    return rows


def train(tmp_path: Path, out: str, **overrides: object) -> Path:
    params = tmp_path / f"params_{out}.yaml"
    params.write_text(yaml.safe_dump({"caption_augmentation": "k2c",
                                      "captions": {"k2c_standin": {**STANDIN, **overrides}}}))
    manifest = tmp_path / "normalized.jsonl"
    if not manifest.exists():
        write_manifest(manifest_rows(), manifest)
    assert k2c_stage.main(["--params", str(params), "--input", str(manifest), "--out", str(tmp_path / out)]) == 0
    return tmp_path / out


def caption(tmp_path: Path, standin: Path, mode: str = "k2c") -> tuple[int, Path]:
    name = f"{mode}_{standin.name}"
    params = tmp_path / f"params_captions_{name}.yaml"
    params.write_text(yaml.safe_dump({"caption_augmentation": mode, "captions": {"k2c_num_beams": 2}}))
    out = tmp_path / f"captions_{name}.jsonl"
    code = captions_stage.main(["--params", str(params), "--input", str(tmp_path / "normalized.jsonl"),
                                "--output", str(out), "--report", str(tmp_path / f"captions_{name}.json"),
                                "--k2c-standin", str(standin), "--no-progress"])
    return code, out


def test_standin_captions_label_only_clips_debiased_and_reproducibly(tmp_path: Path) -> None:
    standin = train(tmp_path, "k2c")
    info = json.loads((standin / STANDIN_INFO).read_text())
    assert info["trained"] and info["sets"] == ["caps/train"]  # the test clip is never read
    assert info["clips"] == 4 and info["pairs"] == 8
    assert info["final_loss"] < info["first_loss"]

    code, out = caption(tmp_path, standin)
    assert code == 0
    rows = {r.id: r for r in read_manifest(out)}
    for clip_id in ("tags/0", "tags/1", "tags/2"):
        row = rows[clip_id]
        generated = row.augmented["k2c"]
        assert generated and all(text.strip() for text in generated), clip_id
        assert generated[0] != template_caption(row.labels) and row.augmented["template"] == [template_caption(row.labels)]
        assert not any(GENDERED.search(text) for text in generated), generated
    report = json.loads((tmp_path / "captions_k2c_k2c.json").read_text())
    assert report["k2c_standin"] is True and report["k2c_model"] is None
    assert report["k2c_model_used"] == f"stand-in T5 trained on caps/train labels->captions, {STEPS} steps"
    assert report["debiased_words"]["k2c"] > 0  # it wrote gendered words, and they were replaced

    # same params and seed: the same model and captions; another seed: another model
    again = train(tmp_path, "k2c_again")
    assert (again / "model.safetensors").read_bytes() == (standin / "model.safetensors").read_bytes()
    assert caption(tmp_path, again)[0] == 0
    assert [r.augmented for r in read_manifest(tmp_path / "captions_k2c_k2c_again.jsonl")] == [
        r.augmented for r in read_manifest(out)]
    other = train(tmp_path, "k2c_other_seed", seed=8)
    assert (other / "model.safetensors").read_bytes() != (standin / "model.safetensors").read_bytes()


def test_without_captioned_labelled_clips_only_k2c_mode_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    label_only = [r for r in manifest_rows() if r.source == "tags"]
    write_manifest(label_only, tmp_path / "normalized.jsonl")
    standin = train(tmp_path, "k2c")  # the stage succeeds: the default pipeline must not break
    assert json.loads((standin / STANDIN_INFO).read_text())["trained"] is False

    assert caption(tmp_path, standin, mode="template")[0] == 0
    with caplog.at_level(logging.ERROR):
        code, out = caption(tmp_path, standin, mode="k2c")
    assert code == 1 and not out.exists()
    assert "was not trained" in caplog.text and "captions.k2c_model" in caplog.text


def test_bad_standin_params_name_the_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_manifest(manifest_rows(), tmp_path / "normalized.jsonl")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"captions": {"k2c_standin": {"stpes": 10}}}))
    with caplog.at_level(logging.ERROR):
        code = k2c_stage.main(["--params", str(params), "--input", str(tmp_path / "normalized.jsonl"),
                               "--out", str(tmp_path / "k2c")])
    assert code == 1 and "captions.k2c_standin: unknown keys ['stpes']" in caplog.text
