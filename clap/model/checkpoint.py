"""Checkpoints: our model folders, LAION-CLAP ``.pt`` imports, transformers ``ClapModel`` import/export.

Formats :func:`load_model` accepts:

* **our model folder**: ``config.json`` (``format: clap-pipeline`` + :class:`ClapConfig` with fully
  resolved presets), ``model.safetensors`` and ``tokenizer/`` (written by :func:`save_model`);
* **a LAION-CLAP checkpoint** (``630k-*.pt``, ``music_*.pt``; HTS-AT tiny/base, fusion or not, with
  RoBERTa; also PANN / BERT variants of the reference code): a dict with ``state_dict`` (or a bare
  state dict), keys maybe prefixed ``module.``. Tiny/base, the window, heads and fusion are read
  from the weights' names and shapes;
* **a transformers CLAP folder** (``ClapModel.save_pretrained``, e.g. laion/clap-htsat-unfused).

LAION names map to ours as follows (transformers' conversion script documents the same facts):
``audio_branch.`` -> ``audio_encoder.htsat.audio_encoder.`` (``bn0`` -> ``batch_norm``; in each
Swin block ``norm1/norm2`` -> ``layernorm_before/after``, ``attn.qkv`` split into
``attention.self.query/key/value``, ``attn.proj`` -> ``attention.output.dense``, ``mlp.fc1/fc2`` ->
``intermediate.dense`` / ``output.dense``); ``text_branch.`` -> ``text_encoder.model.``;
``{audio,text}_projection.{0,2}`` -> ``.linear1/.linear2``. Keys that are not weights of ours are
dropped, each for a stated reason (:data:`LAION_DROPPED`); the STFT/mel buffers and the shifted
window masks are first checked against what our front-end and encoder compute. Everything else must
match exactly: any key left over on either side is an error listing them.

Every ``.pt`` is read by :func:`clap.model.torch_files.read_torch_state_dict` (``weights_only=True``,
numpy scalars allowed, trainer state dropped).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from clap.model.model import ClapConfig, ClapModel
from clap.model.presets import AUDIO_PRESETS, TEXT_PRESETS, merge_overrides
from clap.model.text_encoders import ModelNotFoundLocally
from clap.model.torch_files import CheckpointError, read_torch_state_dict

logger = logging.getLogger(__name__)

FORMAT = "clap-pipeline"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"

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

#: Our prefixes <-> transformers ClapModel prefixes.
_TO_TRANSFORMERS = (("audio_encoder.htsat.", "audio_model."), ("text_encoder.model.", "text_model."))
#: Buffers transformers' ClapTextModel saves that our RoBERTa recomputes.
_TRANSFORMERS_TEXT_BUFFERS = ("text_model.embeddings.position_ids", "text_model.embeddings.token_type_ids")
#: ClapAudioConfig fields that define an HTS-AT architecture (copied on import).
_HTSAT_ARCH_KEYS = (
    "spec_size", "num_mel_bins", "patch_size", "patch_stride", "window_size", "mlp_ratio", "drop_path_rate",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "qkv_bias", "hidden_act", "layer_norm_eps",
    "aff_block_r", "patch_embeds_hidden_size", "depths", "num_attention_heads", "enable_patch_layer_norm",
    "flatten_patch_embeds", "patch_embed_input_channels",
)
#: ClapTextConfig fields shared with RobertaConfig.
_ROBERTA_ARCH_KEYS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
    "layer_norm_eps", "pad_token_id", "bos_token_id", "eos_token_id",
)


# ---------------------------------------------------------------------------------------------------
# Our format
# ---------------------------------------------------------------------------------------------------
def save_model(model: ClapModel, out_dir: str | Path) -> Path:
    """Write ``model`` as ``out_dir/{config.json, model.safetensors, tokenizer/}``; returns ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, **model.resolved_config().to_dict()}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    try:
        model.text_encoder.tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
    except ModelNotFoundLocally as exc:
        logger.warning("%s: saved without a tokenizer (%s)", out, exc)
    logger.info("saved model to %s", out)
    return out


def _load_our_folder(path: Path, meta: dict[str, Any], allow_download: bool, tokenizer: str | None) -> ClapModel:
    version = meta.pop("format_version", None)
    meta.pop("format", None)
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: model format version {version!r}; this code reads version {FORMAT_VERSION}")
    config = ClapConfig.from_dict(meta)
    config.allow_download = allow_download or config.allow_download
    if tokenizer is not None:
        config.tokenizer = str(tokenizer)
    elif (path / TOKENIZER_DIR).is_dir():
        config.tokenizer = str(path / TOKENIZER_DIR)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{path}: {WEIGHTS_FILE} is missing; re-save the model with clap.model.checkpoint.save_model")
    model = ClapModel(config, load_pretrained=False)
    _load_strict(model, load_file(str(weights)), str(weights))
    return model


def _load_strict(module: nn.Module, state: dict[str, Tensor], source: str, renamed: dict[str, str] | None = None) -> None:
    """``load_state_dict`` that fails on any missing or unexpected key, listing them (by their names in
    ``source`` when ``renamed`` maps ours -> theirs)."""
    expected = set(module.state_dict())
    unexpected = sorted((renamed or {}).get(k, k) for k in set(state) - expected)
    missing = sorted(set(expected) - set(state))
    if unexpected or missing:
        raise CheckpointError(
            f"{source}: weights do not fit the model: {len(unexpected)} unexpected key(s) {unexpected[:20]}"
            f"{' ...' if len(unexpected) > 20 else ''} and {len(missing)} missing key(s) {missing[:20]}"
            f"{' ...' if len(missing) > 20 else ''}"
        )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"{source}: weights do not fit the model ({exc})") from exc


# ---------------------------------------------------------------------------------------------------
# LAION-CLAP checkpoints
# ---------------------------------------------------------------------------------------------------
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


def _check_attn_masks(encoder: nn.Module, masks: dict[str, Tensor], source: str) -> None:
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


def _split_audio_branch(branch: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
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
    overrides = {"channels": channels, "pool": pool, "embed_dim": embed}
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

    audio_weights, frontend, masks = _split_audio_branch(groups["audio_branch"])
    check_frontend_buffers(frontend, source)
    if "patch_embed.proj.weight" in audio_weights:
        audio_name, audio_overrides, fusion = infer_htsat(audio_weights, source)
        audio_mapped, audio_origin = map_htsat_branch(audio_weights)
        audio_prefix = "audio_encoder.htsat.audio_encoder."
    else:
        audio_name, audio_overrides = infer_pann(audio_weights, source)
        fusion = any(k.startswith(("mel_conv", "fusion_model")) for k in audio_weights)
        if fusion:
            raise CheckpointError(f"{source}: PANN with feature fusion is not supported (HTS-AT fusion is)")
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
    model = ClapModel(config, load_pretrained=False)
    if masks:
        _check_attn_masks(model.audio_encoder, masks, source)

    ours: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in audio_mapped.items():
        ours[audio_prefix + key], origin[audio_prefix + key] = value, "audio_branch." + audio_origin[key]
    for key, value in text.items():
        ours["text_encoder.model." + key], origin["text_encoder.model." + key] = value, "text_branch." + key
    for key, value in groups["rest"].items():
        ours[_projection_key(key)], origin[_projection_key(key)] = value, key
    _load_strict(model, ours, source, renamed=origin)
    logger.info("%s: imported LAION-CLAP checkpoint (%s%s, %s)", source, audio_name, " fusion" if fusion else "", text_name)
    return model


# ---------------------------------------------------------------------------------------------------
# transformers ClapModel folders
# ---------------------------------------------------------------------------------------------------
def _read_transformers_weights(path: Path) -> dict[str, Tensor]:
    if (path / "model.safetensors").is_file():
        return load_file(str(path / "model.safetensors"))
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, Tensor] = {}
        for shard in shards:
            state.update(load_file(str(path / shard)))
        return state
    if (path / "pytorch_model.bin").is_file():
        return read_torch_state_dict(path / "pytorch_model.bin")
    raise CheckpointError(f"{path}: no model.safetensors or pytorch_model.bin in this transformers model folder")


def _has_tokenizer(path: Path) -> bool:
    return any((path / name).is_file() for name in ("tokenizer.json", "vocab.json", "tokenizer_config.json"))


def import_transformers_clap(path: str | Path, *, tokenizer: str | None = None, allow_download: bool = False) -> ClapModel:
    """A :class:`ClapModel` from a transformers ``ClapModel`` folder (strict; tokenizer from the folder
    when it has one)."""
    import transformers

    path = Path(path)
    hf = transformers.ClapConfig.from_pretrained(str(path))
    audio_cfg, text_cfg = hf.audio_config.to_dict(), hf.text_config.to_dict()
    audio_overrides = {k: audio_cfg[k] for k in _HTSAT_ARCH_KEYS if k in audio_cfg}
    depths, heads = list(audio_cfg["depths"]), list(audio_cfg["num_attention_heads"])
    audio_name = next(
        (n for n, p in AUDIO_PRESETS.items() if p["family"] == "htsat" and p["patch_embeds_hidden_size"]
         == audio_cfg["patch_embeds_hidden_size"] and list(p["depths"]) == depths
         and list(p["num_attention_heads"]) == heads and n != "htsat-cpu"),
        "htsat-tiny",
    )
    config = ClapConfig(
        audio_encoder=audio_name, text_encoder="roberta-base", fusion=bool(audio_cfg.get("enable_fusion")),
        embed_dim=int(hf.projection_dim), audio_overrides=audio_overrides,
        text_overrides={"config": {k: text_cfg[k] for k in _ROBERTA_ARCH_KEYS if k in text_cfg}},
        tokenizer=tokenizer or (str(path) if _has_tokenizer(path) else None), allow_download=allow_download,
    )
    if hf.projection_hidden_act != "relu":
        raise CheckpointError(f"{path}: projection activation {hf.projection_hidden_act!r}; ours is relu")
    model = ClapModel(config, load_pretrained=False)
    state = _read_transformers_weights(path)
    for key in _TRANSFORMERS_TEXT_BUFFERS:
        state.pop(key, None)
    ours, origin = {}, {}
    for key, value in state.items():
        new = key
        for our_prefix, their_prefix in _TO_TRANSFORMERS:
            if key.startswith(their_prefix):
                new = our_prefix + key[len(their_prefix):]
        ours[new], origin[new] = value, key
    _load_strict(model, ours, str(path), renamed=origin)
    logger.info("%s: imported transformers CLAP model (%s%s)", path, audio_name, " fusion" if config.fusion else "")
    return model


def export_transformers(model: ClapModel, out_dir: str | Path) -> Path:
    """Save an HTS-AT + RoBERTa model as a transformers ``ClapModel`` folder (weights, config,
    tokenizer and a ``ClapProcessor``), loadable with ``transformers.ClapModel.from_pretrained`` and
    the ``zero-shot-audio-classification`` pipeline.

    The processor's ``ClapFeatureExtractor`` is configured like our front-end (48 kHz, 64 bins,
    50 Hz-14 kHz, 10 s, repeatpad, ``fusion``/``rand_trunc``) but does not compute the same numbers
    (REFERENCE.md): for embeddings identical to ours, feed our features (clap.model.frontend).
    """
    import transformers

    audio_family = model.audio_encoder.config.get("family")
    text_family = model.text_encoder.spec.get("family")
    if audio_family != "htsat" or text_family != "roberta" or model.text_encoder.pooling != "pooler":
        raise CheckpointError(
            f"export to transformers' ClapModel needs an HTS-AT audio tower and a RoBERTa text tower with "
            f"pooler output; this model has {audio_family} + {text_family} ({model.text_encoder.pooling} pooling)"
        )
    text_arch = model.text_encoder.model.config.to_dict()
    hf_config = transformers.ClapConfig(
        audio_config=model.audio_encoder.audio_config.to_dict(),
        text_config={k: text_arch[k] for k in _ROBERTA_ARCH_KEYS if k in text_arch},
        projection_dim=model.config.embed_dim,
        logit_scale_init_value=math.exp(model.config.logit_scale_init),
    )
    hf_model = transformers.ClapModel(hf_config)
    state = {}
    for key, value in model.state_dict().items():
        new = key
        for our_prefix, their_prefix in _TO_TRANSFORMERS:
            if key.startswith(our_prefix):
                new = their_prefix + key[len(our_prefix):]
        state[new] = value
    result = hf_model.load_state_dict(state, strict=False)
    missing = sorted(set(result.missing_keys) - set(_TRANSFORMERS_TEXT_BUFFERS))
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"export to transformers: missing {missing}, unexpected {sorted(result.unexpected_keys)}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(str(out))
    feature_extractor = transformers.ClapFeatureExtractor(
        feature_size=64, sampling_rate=48_000, hop_length=480, max_length_s=10, fft_window_size=1024,
        frequency_min=50, frequency_max=14_000, top_db=None, padding="repeatpad",
        truncation="fusion" if model.config.fusion else "rand_trunc",
    )
    transformers.ClapProcessor(feature_extractor=feature_extractor, tokenizer=model.text_encoder.tokenizer).save_pretrained(
        str(out)
    )
    logger.info("exported transformers ClapModel to %s", out)
    return out


# ---------------------------------------------------------------------------------------------------
# Audio tower initialisation from pretrained weights
# ---------------------------------------------------------------------------------------------------
def _encoder_state_from_file(path: Path) -> dict[str, Tensor]:
    """Audio-branch weights (reference names, no prefix) from a LAION-CLAP, HTS-AT AudioSet (``sed_model.``)
    or PANN AudioSet checkpoint."""
    state = read_torch_state_dict(path)
    for prefix in ("audio_branch.", "sed_model."):
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def load_audio_encoder_weights(encoder: nn.Module, path: str | Path) -> None:
    """Initialise an audio tower from pretrained weights (strict, apart from the AudioSet heads and
    front-end buffers, which the reference skips too: AudioSet HTS-AT was trained at 32 kHz).

    ``path``: one of our model folders, a transformers CLAP folder, a LAION-CLAP ``.pt``, an HTS-AT
    AudioSet checkpoint or a PANN AudioSet checkpoint.
    """
    path = Path(path)
    family = encoder.config.get("family")
    if path.is_dir():
        meta = json.loads((path / CONFIG_FILE).read_text()) if (path / CONFIG_FILE).is_file() else {}
        if meta.get("format") == FORMAT:  # our audio_encoder.* -> the tower's own names
            state, prefix, ours = load_file(str(path / WEIGHTS_FILE)), "audio_encoder.", ""
        elif meta.get("model_type") == "clap":  # transformers' audio_model.* is our htsat.*
            state, prefix, ours = _read_transformers_weights(path), "audio_model.", "htsat."
        else:
            raise CheckpointError(f"{path}: not a model folder of ours or of transformers CLAP (see config.json)")
        mapped = {ours + k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        origin = {ours + k[len(prefix):]: k for k in state if k.startswith(prefix)}
    else:
        weights, _frontend, masks = _split_audio_branch(_encoder_state_from_file(path))
        if family == "htsat":
            if masks:
                _check_attn_masks(encoder, masks, str(path))
            branch, branch_origin = map_htsat_branch(weights)
            mapped = {"htsat.audio_encoder." + k: v for k, v in branch.items()}
            origin = {"htsat.audio_encoder." + k: v for k, v in branch_origin.items()}
        else:
            mapped = {"cnn." + k: v for k, v in weights.items()}
            origin = {"cnn." + k: k for k in weights}
    if getattr(encoder, "fusion", False) and not any(".fusion_model." in k or ".mel_conv2d." in k for k in mapped):
        # A fusion tower started from a non-fusion encoder: the fusion layers are new and keep their init.
        fusion_parts = {k: v for k, v in encoder.state_dict().items() if ".fusion_model." in k or ".mel_conv2d." in k}
        mapped.update(fusion_parts)
        logger.info("%s: no fusion layers in the checkpoint; %d fusion tensors keep their initialisation", path,
                    len(fusion_parts))
    _load_strict(encoder, mapped, str(path), renamed=origin)
    logger.info("audio encoder '%s': initial weights from %s", encoder.name, path)


# ---------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------
def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    allow_download: bool = False,
    *,
    tokenizer: str | None = None,
    text_overrides: dict[str, Any] | None = None,
) -> ClapModel:
    """Load a model (in eval mode) from our model folder, a LAION-CLAP ``.pt`` or a transformers CLAP folder.

    ``allow_download``: let the tokenizer (e.g. roberta-base for LAION imports) come from the hub.
    ``tokenizer``: a tokenizer folder or name replacing the stored/default one. ``text_overrides``:
    LAION imports only (see :func:`import_laion_checkpoint`).
    """
    path = Path(path)
    loader: Callable[[], ClapModel]
    if path.is_dir():
        config_file = path / CONFIG_FILE
        if not config_file.is_file():
            raise CheckpointError(f"{path}: no {CONFIG_FILE}; expected one of our model folders or a transformers CLAP folder")
        meta = json.loads(config_file.read_text())
        if meta.get("format") == FORMAT:
            def loader() -> ClapModel:
                return _load_our_folder(path, meta, allow_download, tokenizer)
        elif meta.get("model_type") == "clap":
            def loader() -> ClapModel:
                return import_transformers_clap(path, tokenizer=tokenizer, allow_download=allow_download)
        else:
            raise CheckpointError(
                f"{path}/{CONFIG_FILE}: neither our format (format: {FORMAT}) nor a transformers CLAP config "
                f"(model_type: clap); got model_type {meta.get('model_type')!r}"
            )
    elif path.is_file():
        def loader() -> ClapModel:
            return import_laion_checkpoint(path, tokenizer=tokenizer, text_overrides=text_overrides,
                                           allow_download=allow_download)
    else:
        raise CheckpointError(
            f"{path}: no such file or folder (expected a model folder, a LAION-CLAP .pt or a transformers CLAP folder)"
        )
    model = loader()
    model.text_encoder.tokenizer_owner = path.name  # the missing-tokenizer error names the file
    return model.to(device).eval()
