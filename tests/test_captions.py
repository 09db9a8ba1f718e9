"""captions: template captions, de-biasing, keyword-to-caption with a tiny local T5, the stage."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import yaml

from clap.data.captions import (
    CaptionConfig,
    CaptionError,
    KeywordToCaption,
    augment_rows,
    debias,
    format_keywords,
    template_caption,
)
from clap.data.manifest import ManifestRow, read_manifest, write_manifest
from clap.stages import captions as captions_stage

# opposite pairs: for any decoder state one word of each pair scores above every neutral word
GENDERED_PAIRS = [("man", "woman"), ("boy", "girl"), ("men", "women"), ("boys", "girls"), ("lady", "gentleman"),
                  ("ladies", "gentlemen")]
GENDERED = [word for pair in GENDERED_PAIRS for word in pair]
VOCAB = ["<pad>", "</s>", "<unk>", *GENDERED, "dog", "bark", "rain", "speech", "|"]


@pytest.fixture(scope="module")
def tiny_k2c(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer T5 (d_model 16) and a word-level tokenizer, saved like any hub model.

    Its token embeddings (tied to the output layer) are tiny except for the gendered words, which
    come in large opposite pairs (+v/-v): whatever the decoder state, half of them outscore every
    other token, so every generated word is gendered and de-biasing has real work to do.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    directory = tmp_path_factory.mktemp("k2c") / "tiny-k2t"
    vocab = {word: i for i, word in enumerate(VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    tokenizer.save_pretrained(directory)

    config = T5Config(
        vocab_size=len(VOCAB), d_model=16, d_ff=32, d_kv=8, num_layers=1, num_decoder_layers=1, num_heads=2,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, dropout_rate=0.0,
    )
    generator = torch.Generator().manual_seed(0)
    model = T5ForConditionalGeneration(config)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb.copy_(0.01 * torch.randn(emb.shape, generator=generator))
        for first, second in GENDERED_PAIRS:
            direction = 4.0 * torch.randn(16, generator=generator)
            emb[vocab[first]], emb[vocab[second]] = direction, -direction
    model.save_pretrained(directory)
    return directory


# --------------------------------------------------------------------------- templates


@pytest.mark.parametrize(
    ("labels", "caption"),
    [
        (["dog"], "the sound of dog"),
        (["dog", "rain"], "the sound of dog and rain"),
        (["dog", "rain", "wind"], "the sound of dog, rain, and wind"),
        (["dog_bark", "dog_bark", " church  bells "], "the sound of dog bark and church bells"),
        ([], ""),
    ],
)
def test_template_caption_joins_labels_with_an_oxford_comma(labels: list[str], caption: str) -> None:
    assert template_caption(labels, "the sound of {labels}") == caption


def test_template_comes_from_params() -> None:
    assert template_caption(["a", "b"], "a recording of {labels}.") == "a recording of a and b."
    with pytest.raises(CaptionError, match="labels"):
        CaptionConfig(template="the sound of {label}")


def test_keywords_are_formatted_like_keytotext() -> None:
    assert format_keywords(["dog_bark", "rain"], "pipe") == "dog bark| rain"
    assert format_keywords(["dog_bark", "rain"], "space") == "dog bark rain"


# --------------------------------------------------------------------------- de-biasing


@pytest.mark.parametrize(
    ("text", "neutral"),
    [
        ("A man speaks", "A person speaks"),
        ("Man talking while women laugh", "Person talking while people laugh"),
        ("She sings and then he claps", "The person sings and then the person claps"),
        ("a girl and a boy play with girls and boys", "a person and a person play with people and people"),
        ("Ladies and gentlemen applaud a lady", "People and people applaud a person"),
        ("MAN SHOUTING", "PERSON SHOUTING"),
        ("a man's voice, then a woman's", "a person's voice, then a person's"),
    ],
)
def test_debias_replaces_gendered_words(text: str, neutral: str) -> None:
    assert debias(text) == neutral


@pytest.mark.parametrize(
    "text", ["man-made noise near a fireman", "a human hums", "the shepherd whistles", "manual drill; themes"]
)
def test_debias_leaves_other_words_alone(text: str) -> None:
    assert debias(text) == text


# --------------------------------------------------------------------------- rows


def rows() -> list[ManifestRow]:
    return [
        ManifestRow(id="caps/1", source="caps", split="train", path="a.flac", captions=["A man speaks loudly"]),
        ManifestRow(id="tags/1", source="tags", split="train", path="b.flac", labels=["Woman_speaking", "dog"]),
        ManifestRow(id="tags/2", source="tags", split="train", path="c.flac", labels=["rain"]),
    ]


def test_template_mode_fills_debiased_template_and_keeps_originals() -> None:
    out, summary = augment_rows(rows(), CaptionConfig(mode="template"), progress=False)
    by_id = {r.id: r for r in out}
    assert by_id["caps/1"].captions == ["A man speaks loudly"]  # human captions untouched by default
    assert by_id["caps/1"].augmented == {"template": [], "k2c": []}
    assert by_id["tags/1"].augmented == {"template": ["the sound of Person speaking and dog"], "k2c": []}
    assert by_id["tags/2"].augmented["template"] == ["the sound of rain"]
    assert summary.template_captions == 2 and summary.debiased_words["template"] == 1


def test_debias_original_and_mode_none() -> None:
    out, _ = augment_rows(rows(), CaptionConfig(mode="template", debias_original=True), progress=False)
    assert out[0].captions == ["A person speaks loudly"]
    out, _ = augment_rows(rows(), CaptionConfig(mode="none"), progress=False)
    assert all(r.augmented == {"template": [], "k2c": []} for r in out)
    out, _ = augment_rows(rows(), CaptionConfig(mode="template", debias=False), progress=False)
    assert out[1].augmented["template"] == ["the sound of Woman speaking and dog"]


def test_k2c_with_a_tiny_local_model_makes_debiased_captions(tiny_k2c: Path) -> None:
    cfg = CaptionConfig(mode="k2c", k2c_model=str(tiny_k2c), k2c_num_captions=2, k2c_num_beams=2,
                        k2c_max_new_tokens=4, k2c_batch_size=2)
    model = KeywordToCaption(str(tiny_k2c))
    raw = model.generate(["dog| bark", "rain"], num_captions=2, num_beams=2, max_new_tokens=4, progress=False)
    raw_words = {w for captions in raw for c in captions for w in c.split()}
    assert raw_words and raw_words <= set(GENDERED)  # the model really writes gendered words

    out, summary = augment_rows(rows(), cfg, k2c=model, progress=False)
    by_id = {r.id: r for r in out}
    assert by_id["caps/1"].augmented["k2c"] == []  # no labels, no keywords
    for clip_id in ("tags/1", "tags/2"):
        k2c = by_id[clip_id].augmented["k2c"]
        assert 1 <= len(k2c) <= 2 and all(c.strip() for c in k2c)
        assert {w for c in k2c for w in c.split()} <= {"person", "people"}
        assert by_id[clip_id].augmented["template"]  # the template kind is kept alongside
    assert summary.k2c_captions >= 2 and summary.debiased_words["k2c"] > 0

    again, _ = augment_rows(rows(), cfg, progress=False)  # loads the model by path itself
    assert [r.augmented for r in again] == [r.augmented for r in out]  # beam search is deterministic


def test_missing_k2c_model_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(CaptionError, match="no such directory") as err:
        augment_rows(rows(), CaptionConfig(mode="k2c", k2c_model=str(missing)), progress=False)
    assert str(missing) in str(err.value)
    with pytest.raises(CaptionError, match="k2c_allow_download") as err:
        KeywordToCaption("clap-tests/not-a-cached-model", allow_download=False)
    assert "clap-tests/not-a-cached-model" in str(err.value)
    with pytest.raises(CaptionError, match="captions.k2c_model is not set"):
        augment_rows(rows(), CaptionConfig(mode="k2c"), progress=False)


def test_no_model_is_loaded_outside_k2c_mode(tmp_path: Path) -> None:
    # a model path that does not exist is never touched unless caption_augmentation is k2c
    cfg = CaptionConfig(mode="template", k2c_model=str(tmp_path / "absent"))
    out, _ = augment_rows(rows(), cfg, progress=False)
    assert all(r.augmented["k2c"] == [] for r in out)


# --------------------------------------------------------------------------- stage


def run_stage(tmp_path: Path, params: dict) -> tuple[int, Path]:
    write_manifest(rows(), tmp_path / "normalized.jsonl")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "captions.jsonl"
    code = captions_stage.main([
        "--params", str(tmp_path / "params.yaml"), "--input", str(tmp_path / "normalized.jsonl"),
        "--output", str(out), "--report", str(tmp_path / "captions.json"),
    ])
    return code, out


def test_stage_writes_caption_manifest(tmp_path: Path) -> None:
    code, out = run_stage(tmp_path, {"caption_augmentation": "template",
                                     "captions": {"template": "a recording of {labels}", "debias": True}})
    assert code == 0
    written = {r.id: r for r in read_manifest(out)}
    assert set(written) == {"caps/1", "tags/1", "tags/2"}
    assert written["tags/2"].augmented == {"template": ["a recording of rain"], "k2c": []}
    assert (tmp_path / "captions.json").is_file()


def test_stage_fails_clearly_when_the_k2c_model_is_unavailable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        code, out = run_stage(tmp_path, {"caption_augmentation": "k2c",
                                         "captions": {"k2c_model": "gagan3012/k2t-base"}})
    assert code == 1 and not out.exists()
    assert "gagan3012/k2t-base" in caplog.text and "k2c_allow_download" in caplog.text
