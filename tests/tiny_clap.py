"""A tiny random-init CLAP model folder for inference and CLI tests (CPU-sized, offline)."""

from __future__ import annotations

from pathlib import Path

import torch

from clap.model.native import save_model
from clap.model.model import ClapConfig, ClapModel

#: The htsat-cpu preset cut to two small stages: the same code paths, a fraction of the time.
TINY_HTSAT = {"patch_embeds_hidden_size": 8, "depths": [1, 2], "num_attention_heads": [1, 2]}


def tiny_model(fusion: bool, seed: int = 0) -> ClapModel:
    """HTS-AT (htsat-cpu, shrunk) + the random tiny BERT text tower with MiniLM's packaged tokenizer."""
    torch.manual_seed(seed)
    config = ClapConfig(audio_encoder="htsat-cpu", text_encoder="tiny-bert", fusion=fusion, audio_overrides=TINY_HTSAT)
    return ClapModel(config).eval()


def save_tiny_model(out_dir: Path, fusion: bool, seed: int = 0) -> Path:
    """Write a tiny model folder with ``save_model`` and return its path."""
    return save_model(tiny_model(fusion, seed), out_dir)
