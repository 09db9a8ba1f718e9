"""Inference for users: audio and text embeddings and zero-shot classification with a trained model.

    from clap.model.inference import ClapInference
    clap = ClapInference("models/clap")                 # our model folder, a LAION .pt, a transformers folder
    audio = clap.embed_audio(["dog.wav", (waveform, 44_100)])   # [N, 512], unit length
    text = clap.embed_text(["a dog barks"])
    result = clap.zero_shot(["dog.wav"], ["dog", "cat", "rain"])
    result.top_k(2)  # [[("dog", 0.93), ("cat", 0.05)]]

Audio items are file paths (anything ``clap.audio.load_audio`` decodes) or ``(waveform, sample_rate)``
pairs, waveform shaped [frames] or [channels, frames], of any rate, length and channel count: they
are downmixed to mono, resampled to 48 kHz and turned into the model's input by
``clap.model.frontend.prepare_audio_features`` in inference mode. That mode takes fixed views of
clips longer than 10 s (the centre 10 s without fusion; the middle start of each third with fusion)
and the model runs in eval mode, so a clip gets the same embedding on every call. The reference
instead draws random crops at inference, so its embeddings of long clips change from call to call.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torchaudio
from torch import Tensor
from tqdm.auto import tqdm

from clap.audio import SAMPLE_RATE, load_audio
from clap.model.factory import load_model
from clap.model.frontend import FillMode, MelConfig, prepare_audio_features
from clap.model.model import ClapModel

logger = logging.getLogger(__name__)

#: A file path or a ``(waveform, sample_rate)`` pair (waveform [frames] or [channels, frames]).
AudioItem = Union[str, Path, tuple[Union[np.ndarray, Tensor], int]]

DEFAULT_TEMPLATE = "This is a sound of {label}."


def describe_item(item: AudioItem, index: int) -> str:
    """How errors name an audio item: its path, or its position for in-memory waveforms."""
    return str(item) if isinstance(item, (str, Path)) else f"audio item {index} (waveform)"


def load_clip(item: AudioItem, index: int = 0, sample_rate: int = SAMPLE_RATE) -> Tensor:
    """One audio item as a mono float32 waveform [frames] at ``sample_rate`` (channels averaged)."""
    name = describe_item(item, index)
    if isinstance(item, (str, Path)):
        path = Path(item)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such audio file (check the path)")
        samples, rate = load_audio(path)
        waveform = torch.from_numpy(samples)
    elif isinstance(item, tuple) and len(item) == 2:
        raw, rate = item
        waveform = torch.as_tensor(raw, dtype=torch.float32)
        if waveform.dim() == 1:
            waveform = waveform.unsqueeze(0)
        if waveform.dim() != 2:
            raise ValueError(f"{name}: expected a waveform [frames] or [channels, frames], got shape {tuple(waveform.shape)}")
        if waveform.numel() and waveform.shape[0] > waveform.shape[1]:
            raise ValueError(
                f"{name}: shape {tuple(waveform.shape)} has more channels than frames; pass [channels, frames] "
                "(soundfile returns [frames, channels]: use its transpose)"
            )
        if not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise ValueError(f"{name}: sample rate must be a positive integer, got {rate!r}")
    else:
        raise TypeError(f"{name}: expected a path or a (waveform, sample_rate) pair, got {type(item).__name__}")
    if waveform.shape[-1] == 0:
        raise ValueError(f"{name}: no samples (empty audio); remove it from the inputs")
    if not torch.isfinite(waveform).all():
        raise ValueError(f"{name}: contains NaN or infinite samples; fix or remove it")
    mono = waveform.float().mean(dim=0)
    if int(rate) != sample_rate:
        mono = torchaudio.functional.resample(mono, int(rate), sample_rate)
    return mono


#: What reading an audio item may raise when the item itself is bad (missing, undecodable, empty, NaN).
UNREADABLE_AUDIO = (OSError, ValueError, TypeError)


@dataclass(frozen=True)
class SkippedAudio:
    """An audio item left out because it could not be read: its position, name and the reason."""

    index: int
    item: str
    reason: str


@dataclass
class ZeroShotResult:
    """Class probabilities [N, L] of N clips over ``labels`` (softmax of the scaled similarities)."""

    labels: list[str]
    probabilities: Tensor

    def top_k(self, k: int = 1) -> list[list[tuple[str, float]]]:
        """Per clip, the ``k`` most likely labels with their probabilities, best first."""
        k = min(k, len(self.labels))
        values, indices = self.probabilities.topk(k, dim=1)
        return [
            [(self.labels[int(i)], float(v)) for v, i in zip(row_v, row_i)] for row_v, row_i in zip(values, indices)
        ]

    def predictions(self) -> list[str]:
        """The most likely label of each clip."""
        return [self.labels[int(i)] for i in self.probabilities.argmax(dim=1)]


def _batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


class ClapInference:
    """A model ready for embedding and zero-shot classification (see the module docstring).

    ``model``: a loaded :class:`ClapModel` or anything ``clap.model.factory.load_model`` reads.
    ``fill``: how clips shorter than 10 s are filled (``repeatpad``, the reference's default).
    ``mel``: front-end settings; by default the model's recipe (HTK with fusion, Slaney without).
    ``tokenizer``: a tokenizer folder (or hub name) replacing the model's, e.g. a local copy of
    roberta-base for the released LAION-CLAP ``.pt`` files, which hold no tokenizer.
    """

    def __init__(
        self,
        model: ClapModel | str | Path,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 16,
        fill: FillMode = "repeatpad",
        mel: MelConfig | None = None,
        allow_download: bool = False,
        tokenizer: str | Path | None = None,
        progress: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if isinstance(model, ClapModel):
            self.model = model.to(self.device)
            if tokenizer is not None:
                self.model.text_encoder.use_tokenizer(str(tokenizer))
        else:
            self.model = load_model(model, device=self.device, allow_download=allow_download,
                                    tokenizer=None if tokenizer is None else str(tokenizer))
        self.model.eval()
        self.batch_size = batch_size
        self.fill: FillMode = fill
        self.mel = mel
        self.progress = progress

    @property
    def fusion(self) -> bool:
        return bool(self.model.config.fusion)

    def _read_batch(self, items: list[AudioItem], start: int, skipped: list[SkippedAudio] | None) -> list[Tensor]:
        """The readable clips of ``items`` (positions from ``start``); unreadable ones raise, or are
        appended to ``skipped`` when it is a list."""
        clips = []
        for index, item in enumerate(items, start):
            try:
                clips.append(load_clip(item, index))
            except UNREADABLE_AUDIO as exc:
                if skipped is None:
                    raise
                skipped.append(SkippedAudio(index=index, item=describe_item(item, index), reason=str(exc)))
                logger.warning("skipped %s (%s)", describe_item(item, index), exc)
        return clips

    @torch.no_grad()
    def embed_audio(
        self, items: Sequence[AudioItem], batch_size: int | None = None, *, skipped: list[SkippedAudio] | None = None
    ) -> Tensor:
        """Unit-length embeddings [N, embed_dim] (float32, CPU) of N audio items, in input order.

        An unreadable item raises, unless ``skipped`` is a list: then it is left out (the result has a
        row per readable item, in input order) and recorded there with its reason."""
        items = list(items)
        size = batch_size or self.batch_size
        out: list[Tensor] = []
        with tqdm(total=len(items), unit="clip", desc="audio", disable=not self.progress or not items) as bar:
            for part in _batches(len(items), size):
                clips = self._read_batch(items[part], part.start, skipped)
                if clips:
                    features = prepare_audio_features(
                        clips, fusion=self.fusion, fill=self.fill, training=False, mel=self.mel, device=self.device
                    )
                    out.append(self.model.encode_audio(features.input_features, features.is_longer).float().cpu())
                bar.update(part.stop - part.start)
        return torch.cat(out) if out else torch.empty(0, self.model.config.embed_dim)

    @torch.no_grad()
    def embed_text(self, texts: Sequence[str], batch_size: int | None = None) -> Tensor:
        """Unit-length embeddings [N, embed_dim] (float32, CPU) of N texts, in input order."""
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text {i}: expected a string, got {type(text).__name__}")
        size = batch_size or max(self.batch_size, 64)
        # shortest to longest, each batch padded to its own longest text: the same embeddings as
        # padding everything to 77 tokens (the attention mask hides padding), for a fraction of the work
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[Tensor] = []
        with tqdm(total=len(texts), unit="text", desc="text", disable=not self.progress or not texts) as bar:
            for part in _batches(len(texts), size):
                batch = [texts[i] for i in order[part]]
                tokens = {k: v.to(self.device) for k, v in self.model.tokenize(batch, padding="longest").items()}
                out.append(self.model.encode_text(tokens["input_ids"], tokens.get("attention_mask")).float().cpu())
                bar.update(part.stop - part.start)
        if not out:
            return torch.empty(0, self.model.config.embed_dim)
        embeddings = torch.empty(len(texts), out[0].shape[1])
        embeddings[torch.tensor(order)] = torch.cat(out)
        return embeddings

    @torch.no_grad()
    def zero_shot(
        self,
        audio_items: Sequence[AudioItem],
        labels: Sequence[str],
        template: str = DEFAULT_TEMPLATE,
        batch_size: int | None = None,
        *,
        skipped: list[SkippedAudio] | None = None,
    ) -> ZeroShotResult:
        """Classify clips among ``labels``: each label becomes ``template.format(label=...)`` (the
        paper's "This is a sound of {label}."), and a clip's probabilities are the softmax of its
        similarities to those texts times the model's logit scale. ``skipped``: as in :meth:`embed_audio`."""
        labels = [str(label) for label in labels]
        if not labels:
            raise ValueError("zero_shot: no labels given")
        if len(set(labels)) != len(labels):
            duplicates = sorted({label for label in labels if labels.count(label) > 1})
            raise ValueError(f"zero_shot: duplicate labels {duplicates}; give each class once")
        if "{label}" not in template:
            raise ValueError(f"zero_shot: template {template!r} has no {{label}} placeholder")
        text = self.embed_text([template.format(label=label) for label in labels])
        audio = self.embed_audio(audio_items, batch_size, skipped=skipped)
        scale = self.model.logit_scale_a.exp().float().cpu()
        return ZeroShotResult(labels=labels, probabilities=(scale * audio @ text.T).softmax(dim=1))
