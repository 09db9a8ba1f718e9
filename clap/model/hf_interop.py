"""transformers ``ClapModel`` folders (``save_pretrained``, e.g. laion/clap-htsat-unfused): import into
our :class:`ClapModel` and export to it. Our names differ from transformers' by prefixes only.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from safetensors.torch import load_file
from torch import Tensor

from clap.model.model import ClapConfig, ClapModel
from clap.model.presets import AUDIO_PRESETS
from clap.model.weights import CheckpointError, load_strict, read_torch_state_dict

logger = logging.getLogger(__name__)

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



def read_transformers_weights(path: Path) -> dict[str, Tensor]:
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
    model = ClapModel(config)
    state = read_transformers_weights(path)
    for key in _TRANSFORMERS_TEXT_BUFFERS:
        state.pop(key, None)
    ours, origin = {}, {}
    for key, value in state.items():
        new = key
        for our_prefix, their_prefix in _TO_TRANSFORMERS:
            if key.startswith(their_prefix):
                new = our_prefix + key[len(their_prefix):]
        ours[new], origin[new] = value, key
    load_strict(model, ours, str(path), renamed=origin)
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
