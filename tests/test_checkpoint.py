"""Checkpoints: our folders round-trip, LAION-CLAP .pt import (strict), transformers import/export.

The LAION checkpoint is built here, key by key, the way the reference's modules name their weights
(HTSAT_Swin_Transformer + torchlibrosa front-end + RobertaModel + projection/transform MLPs, saved
under DDP's ``module.`` prefix, with the stale ``position_ids`` buffer), with the values of a random
tiny ``transformers.ClapModel``. transformers' CLAP reproduces the reference's embeddings (REFERENCE.md),
so an import that puts every tensor in its place gives that model's embeddings exactly.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import librosa
import numpy as np
import pytest
import torch
import transformers
from tokenizers import ByteLevelBPETokenizer

from clap.model.factory import create_model, load_model
from clap.model.hf_interop import export_transformers
from clap.model.native import save_model
from clap.model.weights import CheckpointError
from clap.model.model import ClapConfig, ClapModel

TINY_HTSAT = {"patch_embeds_hidden_size": 8, "depths": [1, 2], "num_attention_heads": [1, 2]}
TINY_TEXT = {"vocab_size": 400, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64, "max_position_embeddings": 130, "type_vocab_size": 1, "layer_norm_eps": 1e-5,
             "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}
CAPTIONS = ["a dog barks in the park", "rain falls on a tin roof"]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny byte-level BPE RoBERTa tokenizer trained on a few sentences (no network)."""
    return str(make_roberta_tokenizer(tmp_path_factory.mktemp("tokenizer")))


def make_roberta_tokenizer(root: Path) -> Path:
    """Train a tiny byte-level BPE tokenizer (vocabulary 400) and save it as a RoBERTa tokenizer
    folder ``root/roberta``."""
    root.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CAPTIONS * 3 + ["this is a sound of a cat", "birds singing at dawn"], vocab_size=400,
                            min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(root))
    tok = transformers.RobertaTokenizerFast(vocab=str(root / "vocab.json"), merges=str(root / "merges.txt"))
    tok.save_pretrained(str(root / "roberta"))
    return root / "roberta"


def features(fusion: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4 if fusion else 1, 1001, 64, generator=g) * 10 - 40
    return x, torch.tensor([True, False])


def tiny_model(tokenizer_dir: str, fusion: bool) -> ClapModel:
    torch.manual_seed(1)
    config = ClapConfig(audio_encoder="htsat-cpu", text_encoder="tiny-roberta", fusion=fusion, tokenizer=tokenizer_dir,
                        audio_overrides=TINY_HTSAT, text_overrides={"config": TINY_TEXT})
    return ClapModel(config).eval()


@torch.no_grad()
def embeddings(model: ClapModel, fusion: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x, longer = features(fusion)
    tokens = model.tokenize(CAPTIONS)
    return model.encode_audio(x, longer), model.encode_text(tokens["input_ids"], tokens["attention_mask"])


@torch.no_grad()
def hf_embeddings(hf: transformers.ClapModel, tokens: dict, fusion: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x, longer = features(fusion)
    audio = hf.get_audio_features(input_features=x, is_longer=longer)
    text = hf.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    return getattr(audio, "pooler_output", audio), getattr(text, "pooler_output", text)


# --------------------------------------------------------------------------------------------------
# Our format
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", [False, True])
def test_save_load_round_trip_gives_identical_embeddings(tokenizer_dir: str, tmp_path: Path, fusion: bool) -> None:
    model = tiny_model(tokenizer_dir, fusion)
    out = save_model(model, tmp_path / "model")
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "tokenizer"}
    loaded = load_model(out)
    assert not loaded.training and loaded.config.fusion == fusion
    assert loaded.config.audio_overrides["patch_embeds_hidden_size"] == 8
    for a, b in zip(embeddings(model, fusion), embeddings(loaded, fusion)):
        assert torch.equal(a, b)
    assert torch.equal(loaded.logit_scale_a, model.logit_scale_a)
    # the saved tokenizer is the one used: same ids as the original tokenizer
    assert torch.equal(loaded.tokenize(CAPTIONS)["input_ids"], model.tokenize(CAPTIONS)["input_ids"])


def test_load_model_rejects_unknown_paths(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file or folder"):
        load_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path / "empty")


def test_save_load_keeps_weights_strict(tokenizer_dir: str, tmp_path: Path) -> None:
    """A saved folder whose weights lost a tensor does not load silently."""
    from safetensors.torch import load_file, save_file

    out = save_model(tiny_model(tokenizer_dir, False), tmp_path / "model")
    state = load_file(str(out / "model.safetensors"))
    del state["audio_projection.linear2.bias"]
    save_file(state, str(out / "model.safetensors"))
    with pytest.raises(CheckpointError, match="audio_projection.linear2.bias"):
        load_model(out)


# --------------------------------------------------------------------------------------------------
# LAION-CLAP checkpoints
# --------------------------------------------------------------------------------------------------
def tiny_hf_clap(fusion: bool) -> transformers.ClapModel:
    """A random tiny transformers ClapModel with every tensor randomised (BN statistics included)."""
    torch.manual_seed(7 + fusion)
    config = transformers.ClapConfig(
        text_config=TINY_TEXT,
        audio_config={**TINY_HTSAT, "hidden_size": 16, "enable_fusion": fusion, "fusion_type": "aff_2d" if fusion else None},
        projection_dim=512,
    )
    hf = transformers.ClapModel(config).eval()
    with torch.no_grad():
        for name, tensor in hf.state_dict().items():
            if name.endswith(("running_var",)):
                tensor.copy_(torch.rand_like(tensor) + 0.5)
            elif tensor.is_floating_point() and not name.endswith(("position_ids", "token_type_ids")):
                tensor.copy_(torch.randn_like(tensor) * 0.2)
        hf.logit_scale_a.fill_(math.log(20.0))
        hf.logit_scale_t.fill_(math.log(30.0))
    return hf


def reference_shift_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """The reference SwinTransformerBlock's attn_mask, built its way (9 slice regions)."""
    img_mask = torch.zeros((1, height, width, 1))
    count = 0
    for h in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for w in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            img_mask[:, h, w, :] = count
            count += 1
    windows = img_mask.view(1, height // window, window, width // window, window, 1)
    windows = windows.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window)
    mask = windows.unsqueeze(1) - windows.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


def torchlibrosa_buffers(fmax: float = 14000.0) -> dict[str, torch.Tensor]:
    """The reference's frozen front-end parameters (torchlibrosa Spectrogram + LogmelFilterBank)."""
    n_fft = 1024
    window = librosa.filters.get_window("hann", n_fft, fftbins=True)
    omega = np.exp(-2j * np.pi / n_fft)
    dft = np.power(omega, np.outer(np.arange(n_fft), np.arange(n_fft)))[:, : n_fft // 2 + 1] * window[:, None]
    mel = librosa.filters.mel(sr=48000, n_fft=n_fft, n_mels=64, fmin=50, fmax=fmax).T
    return {
        "audio_branch.spectrogram_extractor.stft.conv_real.weight": torch.tensor(np.real(dft).T[:, None, :], dtype=torch.float32),
        "audio_branch.spectrogram_extractor.stft.conv_imag.weight": torch.tensor(np.imag(dft).T[:, None, :], dtype=torch.float32),
        "audio_branch.logmel_extractor.melW": torch.tensor(mel, dtype=torch.float32),
    }


def laion_state_dict(hf: transformers.ClapModel, fusion: bool) -> dict[str, torch.Tensor]:
    """The state dict the reference's CLAP module (HTS-AT + RoBERTa) would hold with ``hf``'s weights."""
    sd: dict[str, torch.Tensor] = {}
    hs = {k: v.clone() for k, v in hf.state_dict().items()}
    enc = "audio_model.audio_encoder."
    cfg = hf.config.audio_config

    def bn(ours: str, theirs: str) -> None:
        for part in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            sd[f"{theirs}.{part}"] = hs[f"{ours}.{part}"]

    def linear(ours: str, theirs: str, bias: bool = True) -> None:
        sd[f"{theirs}.weight"] = hs[f"{ours}.weight"]
        if bias:
            sd[f"{theirs}.bias"] = hs[f"{ours}.bias"]

    sd.update(torchlibrosa_buffers())
    bn(enc + "batch_norm", "audio_branch.bn0")
    linear(enc + "patch_embed.proj", "audio_branch.patch_embed.proj")
    linear(enc + "patch_embed.norm", "audio_branch.patch_embed.norm")
    if fusion:
        linear(enc + "patch_embed.mel_conv2d", "audio_branch.patch_embed.mel_conv2d")
        for branch, convs, bns in (("local_att", (0, 3), (1, 4)), ("global_att", (1, 4), (2, 5))):
            for i in convs:
                linear(f"{enc}patch_embed.fusion_model.{branch}.{i}", f"audio_branch.patch_embed.fusion_model.{branch}.{i}")
            for i in bns:
                bn(f"{enc}patch_embed.fusion_model.{branch}.{i}", f"audio_branch.patch_embed.fusion_model.{branch}.{i}")
    grid = cfg.spec_size // cfg.patch_stride[0]
    for i, depth in enumerate(cfg.depths):
        resolution = grid // 2**i
        for j in range(depth):
            ours, theirs = f"{enc}layers.{i}.blocks.{j}", f"audio_branch.layers.{i}.blocks.{j}"
            linear(f"{ours}.layernorm_before", f"{theirs}.norm1")
            sd[f"{theirs}.attn.relative_position_bias_table"] = hs[f"{ours}.attention.self.relative_position_bias_table"]
            sd[f"{theirs}.attn.relative_position_index"] = hs[f"{ours}.attention.self.relative_position_index"]
            for part in ("weight", "bias"):
                sd[f"{theirs}.attn.qkv.{part}"] = torch.cat(
                    [hs[f"{ours}.attention.self.{n}.{part}"] for n in ("query", "key", "value")])
            linear(f"{ours}.attention.output.dense", f"{theirs}.attn.proj")
            linear(f"{ours}.layernorm_after", f"{theirs}.norm2")
            linear(f"{ours}.intermediate.dense", f"{theirs}.mlp.fc1")
            linear(f"{ours}.output.dense", f"{theirs}.mlp.fc2")
            if j % 2 == 1 and resolution > cfg.window_size:
                sd[f"{theirs}.attn_mask"] = reference_shift_mask(resolution, resolution, cfg.window_size, cfg.window_size // 2)
        if i < len(cfg.depths) - 1:
            linear(f"{enc}layers.{i}.downsample.reduction", f"audio_branch.layers.{i}.downsample.reduction", bias=False)
            linear(f"{enc}layers.{i}.downsample.norm", f"audio_branch.layers.{i}.downsample.norm")
    linear(enc + "norm", "audio_branch.norm")
    width = cfg.patch_embeds_hidden_size * 2 ** (len(cfg.depths) - 1)
    freq_bins = cfg.spec_size // 2 ** (len(cfg.depths) - 1) // cfg.patch_stride[0] // (cfg.spec_size // 64)
    sd["audio_branch.tscam_conv.weight"] = torch.randn(527, width, freq_bins, 3)
    sd["audio_branch.tscam_conv.bias"] = torch.randn(527)
    sd["audio_branch.head.weight"] = torch.randn(527, 527)
    sd["audio_branch.head.bias"] = torch.randn(527)
    for key, value in hs.items():
        if key.startswith("text_model.") and not key.endswith("token_type_ids"):
            sd["text_branch." + key[len("text_model."):]] = value  # includes the stale position_ids
    for tower in ("text", "audio"):
        linear(f"{tower}_projection.linear1", f"{tower}_projection.0")
        linear(f"{tower}_projection.linear2", f"{tower}_projection.2")
        for i in (0, 3):  # MLPLayers([512, 512, 512]): Linear, ReLU, Dropout, Linear
            sd[f"{tower}_transform.sequential.{i}.weight"] = torch.randn(512, 512)
            sd[f"{tower}_transform.sequential.{i}.bias"] = torch.randn(512)
    sd["logit_scale_a"], sd["logit_scale_t"] = hs["logit_scale_a"], hs["logit_scale_t"]
    return {"module." + k: v for k, v in sd.items()}


def reference_optimizer_state(params: list[torch.nn.Parameter]) -> dict:
    """An Adam state dict as the reference trainer saves it: after a step, with the learning rate its
    numpy cosine schedule wrote into each param group (a numpy float64)."""
    optimizer = torch.optim.Adam(params, lr=1e-4)
    for p in params:
        p.grad = torch.full_like(p, 1e-3)
    optimizer.step()
    state = optimizer.state_dict()
    for group in state["param_groups"]:
        group["lr"] = np.float64(0.5 * (1 + np.cos(np.pi * 3 / 45)) * 1e-4)
    return state


def save_laion(path: Path, state: dict[str, torch.Tensor], wrap: bool = True) -> Path:
    """Save like the reference trainer: epoch (a numpy int), name, state_dict, optimizer, AMP scaler."""
    if wrap:
        params = [torch.nn.Parameter(v.detach().clone()) for v in list(state.values())[:4] if v.is_floating_point()]
        state = {"epoch": np.int64(45), "name": "tiny", "state_dict": state,
                 "optimizer": reference_optimizer_state(params), "scaler": torch.amp.GradScaler("cpu").state_dict()}
    torch.save(state, path)
    return path


def as_numpy1_pickle(path: Path) -> Path:
    """The same file as numpy 1.x pickles it (``numpy.core.multiarray.scalar``: the released files' names)."""
    with zipfile.ZipFile(path) as src:
        entries = [(info.filename, src.read(info)) for info in src.infolist()]
    out = path.with_name(path.stem + "-numpy1.pt")
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for name, data in entries:
            if name.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            dst.writestr(name, data)
    return out


@pytest.mark.parametrize("fusion", [False, True])
def test_laion_checkpoint_imports_strictly_and_embeds_like_transformers(
    tokenizer_dir: str, tmp_path: Path, fusion: bool
) -> None:
    hf = tiny_hf_clap(fusion)
    path = save_laion(tmp_path / "630k-tiny.pt", laion_state_dict(hf, fusion))
    model = load_model(path, tokenizer=tokenizer_dir, text_overrides={"config": {"num_attention_heads": 2}})
    assert model.config.fusion == fusion
    assert model.audio_encoder.config["depths"] == [1, 2] and model.audio_encoder.config["window_size"] == 8
    assert model.text_encoder.spec["family"] == "roberta"
    ours_audio, ours_text = embeddings(model, fusion)
    ref_audio, ref_text = hf_embeddings(hf, model.tokenize(CAPTIONS), fusion)
    torch.testing.assert_close(ours_audio, ref_audio, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_text, ref_text, atol=1e-5, rtol=0)
    assert math.isclose(float(model.logit_scale_a.detach().exp()), 20.0, rel_tol=1e-6)


def test_laion_bare_state_dict_without_prefix_loads(tokenizer_dir: str, tmp_path: Path) -> None:
    hf = tiny_hf_clap(False)
    state = {k.removeprefix("module."): v for k, v in laion_state_dict(hf, False).items()}
    model = load_model(save_laion(tmp_path / "bare.pt", state, wrap=False), tokenizer=tokenizer_dir,
                       text_overrides={"config": {"num_attention_heads": 2}})
    torch.testing.assert_close(embeddings(model, False)[0], hf_embeddings(hf, model.tokenize(CAPTIONS), False)[0],
                               atol=1e-5, rtol=0)


def laion_pann_state_dict(cnn: torch.nn.Module, fusion_type: str = "aff_2d") -> dict[str, torch.Tensor]:
    """A LAION-CLAP PANN checkpoint: the tiny HTS-AT one's text tower and front-end buffers, with
    ``cnn``'s weights (randomised, batch-norm statistics included) as its audio branch."""
    state = {k: v for k, v in laion_state_dict(tiny_hf_clap(False), False).items()
             if not k.startswith("module.audio_branch.") or "_extractor." in k}
    generator = torch.Generator().manual_seed(5)
    for key, value in cnn.state_dict().items():
        if value.is_floating_point():
            value = torch.rand(value.shape, generator=generator) + 0.5 if "running_var" in key else \
                torch.randn(value.shape, generator=generator) * 0.2
        state["module.audio_branch." + key] = value
    if fusion_type == "iaff_2d":
        state["module.audio_branch.fusion_model.local_att2.0.weight"] = torch.randn(4, 16, 1, 1)
    width = state["module.audio_projection.0.weight"].shape[0]
    state["module.audio_projection.0.weight"] = torch.randn(width, cnn.embed_dim, generator=generator)
    return state


def test_laion_pann_fusion_checkpoint_loads_and_embeds_like_its_network(tokenizer_dir: str, tmp_path: Path) -> None:
    """A PANN aff_2d checkpoint (the reference's mel_conv2d / fusion_model names) loads strictly as a
    fusion model; its audio tower gives the source network's outputs, long clips fused."""
    from clap.model.pann import PannCnn

    torch.manual_seed(0)
    source = PannCnn(channels=[8, 16, 32, 64], pool=[[2, 2]] * 4, embed_dim=48, fusion=True)
    state = laion_pann_state_dict(source)
    path = save_laion(tmp_path / "pann-fusion.pt", state)
    model = load_model(path, tokenizer=tokenizer_dir, text_overrides={"config": {"num_attention_heads": 2}})
    assert model.config.fusion and model.audio_encoder.config["family"] == "pann"
    assert model.audio_encoder.config["input_pool"] == [1, 1]
    source.load_state_dict({k.removeprefix("module.audio_branch."): v for k, v in state.items()
                            if k.startswith("module.audio_branch.") and "_extractor." not in k})
    source.eval()
    x = torch.randn(2, 4, 1001, 64) * 10 - 40
    longer = torch.tensor([True, False])
    with torch.no_grad():
        torch.testing.assert_close(model.audio_encoder(x, longer), source(x, longer))
    with pytest.raises(CheckpointError, match="other than aff_2d"):
        load_model(save_laion(tmp_path / "iaff.pt", laion_pann_state_dict(source, "iaff_2d")), tokenizer=tokenizer_dir)


def test_laion_extra_or_missing_key_is_an_error_listing_it(tokenizer_dir: str, tmp_path: Path) -> None:
    state = laion_state_dict(tiny_hf_clap(False), False)
    extra = dict(state, **{"module.audio_branch.layers.0.blocks.0.attn.extra_scale": torch.ones(1)})
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\) \['audio_branch.layers.0.blocks.0.attn.extra_scale'\]"):
        load_model(save_laion(tmp_path / "extra.pt", extra), tokenizer=tokenizer_dir)
    missing = {k: v for k, v in state.items() if k != "module.audio_branch.layers.1.blocks.1.mlp.fc2.bias"}
    with pytest.raises(CheckpointError, match=r"missing key\(s\) \['audio_encoder.htsat.audio_encoder.layers.1.blocks.1"
                                              r".output.dense.bias'\]"):
        load_model(save_laion(tmp_path / "missing.pt", missing), tokenizer=tokenizer_dir)


def test_laion_checkpoint_with_another_front_end_is_refused(tokenizer_dir: str, tmp_path: Path) -> None:
    state = laion_state_dict(tiny_hf_clap(False), False)
    state["module.audio_branch.logmel_extractor.melW"] = torchlibrosa_buffers(fmax=18000.0)["audio_branch.logmel_extractor.melW"]
    with pytest.raises(CheckpointError, match="logmel_extractor.melW differs from our front-end"):
        load_model(save_laion(tmp_path / "fmax18k.pt", state), tokenizer=tokenizer_dir)


def test_released_style_checkpoint_loads_with_numpy_trainer_state(tokenizer_dir: str, tmp_path: Path) -> None:
    """numpy float64 learning rates, a numpy int epoch and a scaler beside the weights, pickled under
    numpy 2's and numpy 1's module names: the weights load, the trainer state is not returned."""
    from clap.model.weights import read_torch_state_dict, safe_torch_load

    hf = tiny_hf_clap(False)
    path = save_laion(tmp_path / "630k-tiny.pt", laion_state_dict(hf, False))
    for file in (path, as_numpy1_pickle(path)):
        raw = safe_torch_load(file)
        assert isinstance(raw["epoch"], np.int64) and isinstance(raw["optimizer"]["param_groups"][0]["lr"], np.float64)
        state = read_torch_state_dict(file)
        assert "text_branch.embeddings.position_ids" in state and not any(k.startswith("module.") for k in state)
        assert not {"optimizer", "scaler", "epoch"} & set(state)
        model = load_model(file, tokenizer=tokenizer_dir, text_overrides={"config": {"num_attention_heads": 2}})
        torch.testing.assert_close(embeddings(model, False)[0], hf_embeddings(hf, model.tokenize(CAPTIONS), False)[0],
                                   atol=1e-5, rtol=0)


class _RunsACommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 (pickle protocol)
        return (os.system, (f"touch {self.marker}",))


class _WritesAFile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 (pickle protocol)
        return (Path.write_text, (self.marker, "pwned"))


@pytest.mark.parametrize("payload", [_RunsACommand, _WritesAFile])
def test_checkpoint_with_code_is_refused_and_nothing_runs(tmp_path: Path, payload: type) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "630k-evil.pt"
    torch.save({"epoch": np.int64(1), "state_dict": {"module.x": torch.ones(1)}, "optimizer": payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"630k-evil.pt: refused: it holds the Python global '[\w.]+'.*Nothing "
                                              r"was executed"):
        load_model(path)
    assert not marker.exists()
    other = tmp_path / "args.pt"
    torch.save({"state_dict": {"x": torch.ones(1)}, "args": Path("/tmp")}, other)
    with pytest.raises(CheckpointError, match="refused: it holds the Python global 'pathlib"):
        load_model(other)


def test_audio_tower_starts_from_laion_and_transformers_checkpoints(tmp_path: Path) -> None:
    """``audio_pretrained`` takes the audio branch of a LAION .pt or a transformers CLAP folder."""
    hf = tiny_hf_clap(False)
    laion = save_laion(tmp_path / "630k-tiny.pt", laion_state_dict(hf, False))
    hf.save_pretrained(str(tmp_path / "hf"))
    x, _ = features(False)
    with torch.no_grad():
        want = hf.audio_model(input_features=x).pooler_output
    for source in (laion, tmp_path / "hf"):
        model = create_model(ClapConfig(audio_encoder="htsat-tiny", text_encoder="tiny-bert", audio_overrides=TINY_HTSAT,
                                        audio_pretrained=str(source))).eval()
        with torch.no_grad():
            torch.testing.assert_close(model.audio_encoder(x), want, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# transformers format
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", [False, True])
def test_export_to_transformers_gives_same_embeddings_and_imports_back(
    tokenizer_dir: str, tmp_path: Path, fusion: bool
) -> None:
    model = tiny_model(tokenizer_dir, fusion)
    out = export_transformers(model, tmp_path / "hf")
    hf = transformers.ClapModel.from_pretrained(str(out)).eval()
    ours_audio, ours_text = embeddings(model, fusion)
    hf_audio, hf_text = hf_embeddings(hf, model.tokenize(CAPTIONS), fusion)
    torch.testing.assert_close(hf_audio, ours_audio, atol=1e-5, rtol=0)
    torch.testing.assert_close(hf_text, ours_text, atol=1e-5, rtol=0)
    back = load_model(out)  # transformers folder -> ours, tokenizer from the folder
    for a, b in zip(embeddings(back, fusion), (ours_audio, ours_text)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_exported_model_runs_in_the_zero_shot_pipeline(tokenizer_dir: str, tmp_path: Path) -> None:
    out = export_transformers(tiny_model(tokenizer_dir, False), tmp_path / "hf")
    classifier = transformers.pipeline("zero-shot-audio-classification", model=str(out))
    audio = 0.1 * np.sin(2 * np.pi * 440 * np.arange(48000 * 2) / 48000).astype(np.float32)
    result = classifier(audio, candidate_labels=["dog", "rain", "siren"])
    assert sorted(r["label"] for r in result) == ["dog", "rain", "siren"]
    assert math.isclose(sum(r["score"] for r in result), 1.0, rel_tol=1e-5)


def test_export_refuses_towers_transformers_cannot_hold(tmp_path: Path) -> None:
    model = ClapModel(ClapConfig(audio_encoder="pann-cpu", text_encoder="tiny-bert"))
    with pytest.raises(CheckpointError, match="HTS-AT audio tower and a RoBERTa text tower"):
        export_transformers(model, tmp_path / "hf")
