"""Embeddings for evaluation: a model loaded once, clips streamed through it in batches.

Audio is read and embedded one batch at a time (memory holds ``batch_size`` clips, never the set),
and a clip that cannot be read is set aside with the reason instead of stopping the run.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from clap.audio import SAMPLE_RATE, AudioDecodeError
from clap.eval.datasets import EvalClip
from clap.model.factory import load_model
from clap.model.inference import ClapInference, load_clip

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DroppedClip:
    """A clip left out of an evaluation, and why (written to the set's dropped-clips CSV). ``stage``
    says where it was left out: ``eval`` (here), ``normalize`` (quarantined) or ``upstream``."""

    set: str
    id: str
    where: str
    reason: str
    stage: str = "eval"


def load_engine(
    model: str | Path, *, device: str | None = None, batch_size: int = 32, tokenizer: str | None = None,
    allow_download: bool = False,
) -> ClapInference:
    """A model ready to embed: our model folder, a LAION-CLAP ``.pt`` or a transformers CLAP folder.

    ``tokenizer`` replaces the stored/default tokenizer (e.g. a local copy of roberta-base for the
    released LAION checkpoints); nothing is downloaded unless ``allow_download`` is set.
    """
    target = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = load_model(model, device=target, allow_download=allow_download, tokenizer=tokenizer)
    log.info("model %s on %s (fusion: %s)", model, target, loaded.config.fusion)
    return ClapInference(loaded, device=target, batch_size=batch_size, progress=False)


def embed_texts(engine: ClapInference, texts: Sequence[str], batch_size: int = 256, desc: str = "text") -> Tensor:
    """Unit-length text embeddings [N, D] in input order, with a progress bar."""
    parts: list[Tensor] = []
    with tqdm(total=len(texts), desc=desc, unit="text", disable=len(texts) < batch_size) as bar:
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start:start + batch_size])
            parts.append(engine.embed_text(chunk, batch_size=batch_size))
            bar.update(len(chunk))
    return torch.cat(parts) if parts else torch.empty(0, engine.model.config.embed_dim)


def embed_clips(
    engine: ClapInference, clips: Iterable[EvalClip], *, set_name: str, batch_size: int = 32,
    total: int | None = None,
) -> tuple[Tensor, list[EvalClip], list[DroppedClip]]:
    """Embed clips in batches: (embeddings [K, D] of the K clips kept, those clips in order with their
    ``duration`` set from the decoded audio, the clips that could not be read with the reason)."""
    kept: list[EvalClip] = []
    dropped: list[DroppedClip] = []
    parts: list[Tensor] = []
    batch: list[tuple[EvalClip, Tensor]] = []

    def flush() -> None:
        if batch:
            pairs = [(waveform, SAMPLE_RATE) for _, waveform in batch]
            parts.append(engine.embed_audio(pairs, batch_size=len(pairs)))
            kept.extend(clip for clip, _ in batch)
            batch.clear()

    with tqdm(clips, total=total, desc=f"audio {set_name}", unit="clip") as bar:
        for clip in bar:
            try:
                waveform = load_clip(clip.audio)
            except (AudioDecodeError, FileNotFoundError, ValueError, TypeError) as exc:
                dropped.append(DroppedClip(set=set_name, id=clip.id, where=clip.where, reason=str(exc)))
                log.warning("%s: %s left out (%s)", set_name, clip.id, exc)
                continue
            clip.duration = waveform.shape[-1] / SAMPLE_RATE
            if not isinstance(clip.audio, (str, Path)):
                clip.audio = clip.where  # the waveform is not needed after embedding; keep memory flat
            batch.append((clip, waveform))
            if len(batch) == batch_size:
                flush()
        flush()
    embeds = torch.cat(parts) if parts else torch.empty(0, engine.model.config.embed_dim)
    return embeds, kept, dropped


def add_model_arguments(parser: argparse.ArgumentParser, batch_size_help: str) -> None:
    """The model options every evaluation stage takes (``--model``, ``--tokenizer``, ...)."""
    parser.add_argument("--model", default="data/models/clap",
                        help="our model folder, a LAION-CLAP .pt (e.g. 630k-audioset-best.pt) or a transformers CLAP folder")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer folder replacing the model's (e.g. a local roberta-base for LAION .pt files)")
    parser.add_argument("--allow-download", action="store_true",
                        help="let a missing tokenizer/text model come from the Hugging Face hub")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=None, help=batch_size_help)


def engine_from_args(args: argparse.Namespace, batch_size: int) -> ClapInference:
    return load_engine(args.model, device=args.device, batch_size=batch_size, tokenizer=args.tokenizer,
                       allow_download=args.allow_download)
