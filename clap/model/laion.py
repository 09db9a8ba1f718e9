"""LAION-CLAP checkpoints (``630k-*.pt``, ``music_*.pt``) -> our :class:`ClapModel`.

A checkpoint is a dict with ``state_dict`` (or a bare state dict), keys maybe prefixed ``module.``:
HTS-AT tiny/base, fusion or not, with RoBERTa; also PANN / BERT variants of the reference code.
Tiny/base, the window, heads and fusion are read from the weights' names and shapes.

LAION names map to ours as follows (transformers' conversion script documents the same facts):
``audio_branch.`` -> ``audio_encoder.htsat.audio_encoder.`` (``bn0`` -> ``batch_norm``; in each
Swin block ``norm1/norm2`` -> ``layernorm_before/after``, ``attn.qkv`` split into
``attention.self.query/key/value``, ``attn.proj`` -> ``attention.output.dense``, ``mlp.fc1/fc2`` ->
``intermediate.dense`` / ``output.dense``); ``text_branch.`` -> ``text_encoder.model.``;
``{audio,text}_projection.{0,2}`` -> ``.linear1/.linear2``. Keys that are not weights of ours are
dropped, each for a stated reason (:data:`LAION_DROPPED`); the STFT/mel buffers and the shifted
window masks are first checked against what our front-end and encoder compute. Everything else must
match exactly: any key left over on either side is an error listing them.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from clap.model.model import ClapConfig, ClapModel
from clap.model.presets import AUDIO_PRESETS, TEXT_PRESETS, merge_overrides
from clap.model.weights import CheckpointError, load_strict, read_torch_state_dict

logger = logging.getLogger(__name__)

#: LAION keys we do not load, and why.
LAION_DROPPED: dict[str, str] = {
    "spectrogram_extractor": "STFT kernels of the reference's in-model front-end; ours computes features "
    "outside the model (checked equal to a 1024-point periodic-Hann DFT first)",
    "logmel_extractor": "mel filterbank of the reference's in-model front-end (checked equal to our "
    "Slaney 64-bin 50 Hz-14 kHz filterbank first)",
    "attn_mask": "shifted-window attention masks; transformers' HTS-AT computes them (checked equal first)",
    "tscam_conv / head / fc_audioset": "the audio encoder's AudioSet classification head; the embedding is "
    "taken before it",
    "text_transform / audio_transform": "the reference's extra MLPs on the embeddings, used only by its "
    "optional MLP loss, never for embeddings",
    "text_branch.embeddings.position_ids / token_type_ids": "constant buffers stored by old transformers versions",
}

_HTSAT_RENAMES: list[tuple[str, str]] = [
    (r"^bn0\.", "batch_norm."),
    (r"^(layers\.\d+\.blocks\.\d+)\.norm1\.", r"\1.layernorm_before."),
    (r"^(layers\.\d+\.blocks\.\d+)\.norm2\.", r"\1.layernorm_after."),
    (r"^(layers\.\d+\.blocks\.\d+)\.attn\.proj\.", r"\1.attention.output.dense."),
    (r"^(layers\.\d+\.blocks\.\d+)\.attn\.(relative_position_bias_table|relative_position_index)$", r"\1.attention.self.\2"),
    (r"^(layers\.\d+\.blocks\.\d+)\.mlp\.fc1\.", r"\1.intermediate.dense."),
    (r"^(layers\.\d+\.blocks\.\d+)\.mlp\.fc2\.", r"\1.output.dense."),
]
_QKV = re.compile(r"^(layers\.\d+\.blocks\.\d+)\.attn\.qkv\.(weight|bias)$")
_ATTN_MASK = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.attn_mask$")
_FRONTEND_KEYS = (
    "spectrogram_extractor.stft.conv_real.weight",
    "spectrogram_extractor.stft.conv_imag.weight",
    "logmel_extractor.melW",
)
_AUDIO_HEADS = (r"^tscam_conv\.", r"^head\.", r"^fc_audioset\.")


def _expected_stft_kernels(n_fft: int = 1024) -> tuple[Tensor, Tensor]:
    """Real and imaginary DFT kernels times a periodic Hann window, shaped [n_fft//2+1, 1, n_fft]."""
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    angle = 2 * math.pi * torch.outer(k, n) / n_fft
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    return (torch.cos(angle) * window)[:, None, :], (-torch.sin(angle) * window)[:, None, :]


def check_frontend_buffers(state: dict[str, Tensor], source: str) -> None:
    """Check the reference's in-model STFT/mel buffers are what our front-end computes (else our
    features would not be the ones the checkpoint was trained on)."""
    from clap.model.frontend import LogMel, MelConfig

    real, imag = _expected_stft_kernels()
    expected = {
        _FRONTEND_KEYS[0]: real,
        _FRONTEND_KEYS[1]: imag,
        _FRONTEND_KEYS[2]: LogMel(MelConfig(recipe="slaney")).fbank.to(torch.float64),
    }
    for key, want in expected.items():
        if key not in state:
            continue
        got = state[key].to(torch.float64)
        scale = float(want.abs().max())
        if got.shape != want.shape or float((got - want).abs().max()) > 1e-4 * scale:
            raise CheckpointError(
                f"{source}: audio_branch.{key} differs from our front-end's (shape {tuple(got.shape)} vs "
                f"{tuple(want.shape)}): the checkpoint was trained on other features (window/hop/mel/fmax), "
                "which clap.model.frontend does not reproduce"
            )


def check_attn_masks(encoder: nn.Module, masks: dict[str, Tensor], source: str) -> None:
    """Check the reference's stored shifted-window masks against those transformers computes."""
    hf_encoder = encoder.htsat.audio_encoder
    for key, mask in masks.items():
        stage, block = (int(g) for g in _ATTN_MASK.match(key).groups())  # type: ignore[union-attr]
        try:
            layer = hf_encoder.layers[stage].blocks[block]
        except IndexError:
            raise CheckpointError(f"{source}: audio_branch.{key} has no matching block in the model") from None
        height, width = hf_encoder.input_resolutions[stage]
        want = layer.get_attn_mask(height, width, dtype=torch.float32, device=torch.device("cpu"))
        if want is None or tuple(want.shape) != tuple(mask.shape) or not torch.equal(want, mask.float()):
            raise CheckpointError(
                f"{source}: audio_branch.{key} is not the shifted-window mask of this HTS-AT "
                "(different input size, window or shift)"
            )


def map_htsat_branch(branch: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """LAION ``audio_branch.*`` (prefix removed) of an HTS-AT -> names inside ``ClapAudioModel``'s
    ``audio_encoder``. Returns (mapped, ours -> LAION name). Front-end buffers, masks and heads must
    have been removed before."""
    mapped: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in branch.items():
        qkv = _QKV.match(key)
        if qkv:
            block, kind = qkv.groups()
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                new = f"{block}.attention.self.{name}.{kind}"
                mapped[new], origin[new] = part.clone(), key
            continue
        new = key
        for pattern, replacement in _HTSAT_RENAMES:
            new = re.sub(pattern, replacement, new)
        mapped[new], origin[new] = value, key
    return mapped, origin


def split_audio_branch(branch: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """(weights, front-end buffers, attention masks); AudioSet heads are dropped."""
    weights, frontend, masks = {}, {}, {}
    for key, value in branch.items():
        if key in _FRONTEND_KEYS:
            frontend[key] = value
        elif _ATTN_MASK.match(key):
            masks[key] = value
        elif not any(re.match(p, key) for p in _AUDIO_HEADS):
            weights[key] = value
    return weights, frontend, masks


def _stage_indices(state: dict[str, Tensor], pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in state if (m := re.match(pattern, k))})


def infer_htsat(branch: dict[str, Tensor], source: str) -> tuple[str, dict[str, Any], bool]:
    """(preset name, overrides, fusion) of a LAION HTS-AT ``audio_branch`` from its names and shapes."""
    try:
        embed, _, patch, _ = branch["patch_embed.proj.weight"].shape
        stages = _stage_indices(branch, r"^layers\.(\d+)\.")
        depths = [len(_stage_indices(branch, rf"^layers\.{i}\.blocks\.(\d+)\.")) for i in stages]
        heads = [int(branch[f"layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1]) for i in stages]
        table = int(branch["layers.0.blocks.0.attn.relative_position_bias_table"].shape[0])
        mlp_hidden = int(branch["layers.0.blocks.0.mlp.fc1.weight"].shape[0])
        mel_bins = int(branch["bn0.weight"].shape[0])
    except KeyError as exc:
        raise CheckpointError(f"{source}: not an HTS-AT audio branch (missing audio_branch.{exc.args[0]})") from exc
    window = (math.isqrt(table) + 1) // 2
    overrides: dict[str, Any] = {
        "patch_embeds_hidden_size": int(embed), "depths": depths, "num_attention_heads": heads,
        "window_size": window, "mlp_ratio": mlp_hidden / int(embed), "num_mel_bins": mel_bins,
        "patch_size": int(patch), "patch_stride": [int(patch), int(patch)],
    }
    mask = branch.get("layers.0.blocks.1.attn_mask")
    if mask is not None:  # [windows, w*w, w*w] over the first stage's grid
        overrides["spec_size"] = math.isqrt(int(mask.shape[0])) * window * int(patch)
    fusion = "patch_embed.mel_conv2d.weight" in branch
    name = next(
        (n for n, p in AUDIO_PRESETS.items() if p["family"] == "htsat" and p["patch_embeds_hidden_size"] == embed
         and list(p["depths"]) == depths and list(p["num_attention_heads"]) == heads and n != "htsat-cpu"),
        "htsat-tiny",
    )
    return name, overrides, fusion


def infer_pann(branch: dict[str, Tensor], source: str) -> tuple[str, dict[str, Any]]:
    """(preset name, overrides) of a PANN ``audio_branch`` (CNN14 convention: a 6-block net does not
    pool after its last block)."""
    blocks = _stage_indices(branch, r"^conv_block(\d+)\.")
    try:
        channels = [int(branch[f"conv_block{i}.conv1.weight"].shape[0]) for i in blocks]
        kernel = int(branch["conv_block1.conv1.weight"].shape[-1])
        embed = int(branch["fc1.weight"].shape[0])
    except KeyError as exc:
        raise CheckpointError(f"{source}: not a PANN audio branch (missing {exc.args[0]})") from exc
    if kernel != 3 or "conv_block1.conv2.weight" not in branch:
        raise CheckpointError(f"{source}: PANN variant with {kernel}x{kernel} single-conv blocks (CNN6) is not supported")
    pool = [[2, 2]] * len(channels)
    if len(channels) == 6:
        pool[-1] = [1, 1]
    # the reference's network whatever preset its widths match: no input pooling, PANN's dropout
    overrides = {"channels": channels, "pool": pool, "embed_dim": embed, "input_pool": [1, 1],
                 "block_dropout": 0.2, "embed_dropout": 0.5}
    name = next(
        (n for n, p in AUDIO_PRESETS.items() if p["family"] == "pann" and p["channels"] == channels
         and p["embed_dim"] == embed),
        "pann-cnn14",
    )
    return name, overrides


def infer_text_branch(text: dict[str, Tensor], source: str) -> tuple[str, dict[str, Any]]:
    """(preset name, architecture) of a LAION ``text_branch`` (RoBERTa or BERT). The head count is not
    stored in the weights: it is taken as hidden/64 (true of every RoBERTa/BERT size)."""
    if "embeddings.word_embeddings.weight" not in text:
        kinds = sorted({k.split(".")[0] for k in text})
        raise CheckpointError(
            f"{source}: text_branch is not a RoBERTa/BERT model (top-level parts {kinds}); only the reference's "
            "roberta and bert text branches are supported"
        )
    vocab, hidden = (int(s) for s in text["embeddings.word_embeddings.weight"].shape)
    type_vocab = int(text["embeddings.token_type_embeddings.weight"].shape[0])
    name = "roberta-base" if type_vocab == 1 else "bert-base-uncased"
    config = dict(TEXT_PRESETS[name]["config"])
    config.update(
        vocab_size=vocab, hidden_size=hidden, type_vocab_size=type_vocab,
        max_position_embeddings=int(text["embeddings.position_embeddings.weight"].shape[0]),
        num_hidden_layers=len(_stage_indices(text, r"^encoder\.layer\.(\d+)\.")),
        intermediate_size=int(text["encoder.layer.0.intermediate.dense.weight"].shape[0]),
        num_attention_heads=max(1, hidden // 64),
    )
    return name, config


def _projection_key(key: str) -> str:
    return re.sub(r"^(audio|text)_projection\.(0|2)\.", lambda m: f"{m[1]}_projection.linear{1 if m[2] == '0' else 2}.", key)


def import_laion_checkpoint(
    path: str | Path,
    *,
    tokenizer: str | None = None,
    text_overrides: dict[str, Any] | None = None,
    allow_download: bool = False,
) -> ClapModel:
    """A :class:`ClapModel` holding the weights of a LAION-CLAP checkpoint (strict; see the module doc).

    ``tokenizer``: the text tower's tokenizer (default: the preset's, e.g. roberta-base from the local
    cache). ``text_overrides``: e.g. ``{"config": {"num_attention_heads": 8}}`` for a text branch whose
    head count is not hidden/64.
    """
    source = str(path)
    state = read_torch_state_dict(path)
    groups: dict[str, dict[str, Tensor]] = {"audio_branch": {}, "text_branch": {}, "rest": {}}
    for key, value in state.items():
        head = key.split(".", 1)[0]
        if head in ("audio_branch", "text_branch"):
            groups[head][key.split(".", 1)[1]] = value
        elif head not in ("text_transform", "audio_transform"):
            groups["rest"][key] = value
    if not groups["audio_branch"] or not groups["text_branch"]:
        raise CheckpointError(f"{source}: not a LAION-CLAP checkpoint (no audio_branch.* / text_branch.* weights)")

    audio_weights, frontend, masks = split_audio_branch(groups["audio_branch"])
    check_frontend_buffers(frontend, source)
    if "patch_embed.proj.weight" in audio_weights:
        audio_name, audio_overrides, fusion = infer_htsat(audio_weights, source)
        audio_mapped, audio_origin = map_htsat_branch(audio_weights)
        audio_prefix = "audio_encoder.htsat.audio_encoder."
    else:
        audio_name, audio_overrides = infer_pann(audio_weights, source)
        fusion = any(k.startswith(("mel_conv", "fusion_model")) for k in audio_weights)
        if fusion and ("mel_conv2d.0.weight" not in audio_weights or "fusion_model.local_att.0.weight" not in audio_weights
                       or any(k.startswith(("mel_conv1d", "fusion_model.local_att2")) for k in audio_weights)):
            raise CheckpointError(f"{source}: PANN fusion other than aff_2d (1-D, DAF or iAFF fusion) is not supported; "
                                  "aff_2d (the paper's) is")
        audio_mapped, audio_origin = dict(audio_weights), {k: k for k in audio_weights}
        audio_prefix = "audio_encoder.cnn."

    text = {k: v for k, v in groups["text_branch"].items() if k not in ("embeddings.position_ids", "embeddings.token_type_ids")}
    text_name, text_arch = infer_text_branch(text, source)
    overrides = {"config": text_arch}
    if text_overrides:
        overrides = merge_overrides(overrides, text_overrides)
    embed_dim = int(groups["rest"]["text_projection.2.weight"].shape[0]) if "text_projection.2.weight" in groups["rest"] else 512
    config = ClapConfig(
        audio_encoder=audio_name, text_encoder=text_name, fusion=fusion, embed_dim=embed_dim,
        audio_overrides=audio_overrides, text_overrides=overrides, tokenizer=tokenizer, allow_download=allow_download,
    )
    model = ClapModel(config)
    if masks:
        check_attn_masks(model.audio_encoder, masks, source)

    ours: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in audio_mapped.items():
        ours[audio_prefix + key], origin[audio_prefix + key] = value, "audio_branch." + audio_origin[key]
    for key, value in text.items():
        ours["text_encoder.model." + key], origin["text_encoder.model." + key] = value, "text_branch." + key
    for key, value in groups["rest"].items():
        ours[_projection_key(key)], origin[_projection_key(key)] = value, key
    load_strict(model, ours, source, renamed=origin)
    logger.info("%s: imported LAION-CLAP checkpoint (%s%s, %s)", source, audio_name, " fusion" if fusion else "", text_name)
    return model
