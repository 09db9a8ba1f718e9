"""CLAP pipeline: contrastive language-audio pre-training, from raw audio to reports."""

__version__ = "0.1.0"
