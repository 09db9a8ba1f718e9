"""The audio front-end: log-mel features and the 10 s model input (fill, crop, feature fusion).

Two mel recipes exist because the released CLAP checkpoints were trained on two (see REFERENCE.md):

* ``"slaney"`` (non-fusion models): power STFT -> Slaney-scale, Slaney-area-normalised filterbank
  -> ``10 * log10(max(x, 1e-10))``; numerically librosa's ``melspectrogram(htk=False, norm="slaney")``
  followed by ``power_to_db(ref=1, amin=1e-10, top_db=None)``.
* ``"htk"`` (fusion models): power STFT -> HTK-scale filterbank without normalisation -> the same dB;
  numerically torchaudio's ``MelSpectrogram(norm=None, mel_scale="htk")`` + ``AmplitudeToDB(top_db=None)``.

Both use a periodic Hann window of 1024 samples, hop 480, a centred STFT with reflect padding, 64 bins
from 50 Hz to 14 kHz. Everything here is batched torch code and runs on CPU or GPU.

Choosing the 10 s view of a clip (``prepare_audio_features``):

* clips of 10 s or less are filled to 480,000 samples (``repeatpad``: repeat whole, then zero-pad;
  ``repeat``: repeat and cut; ``pad``: zero-pad) and ``is_longer`` is False;
* longer clips, non-fusion: one 10 s crop of the waveform (``is_longer`` True). Training draws its
  start uniformly at random; inference takes the centre crop, so the same clip always gives the
  same features;
* longer clips, fusion: channel 0 is the whole clip's mel resized (bilinear) to 1001 frames, channels
  1-3 are 1001-frame crops of that mel whose starts come from the front, middle and back thirds of
  the possible start positions (the first position when a third is empty). Training draws each start
  at random within its third; inference takes the middle position of each third. A clip whose mel
  has exactly 1001 frames (at most one hop longer than 10 s) is treated like a short clip, as the
  reference does.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

logger = logging.getLogger(__name__)

MelRecipe = Literal["slaney", "htk"]
FillMode = Literal["repeatpad", "repeat", "pad"]
FILL_MODES: tuple[str, ...] = ("repeatpad", "repeat", "pad")
MEL_RECIPES: tuple[str, ...] = ("slaney", "htk")
#: Samples per STFT block on CPU (about four 10 s clips): small enough for the intermediates to
#: stay in cache (see ``LogMel.from_padded``).
CPU_BLOCK_SAMPLES = 2_000_000


@dataclass(frozen=True)
class MelConfig:
    """Log-mel settings; the defaults are the reference's (48 kHz, 1024/480, 64 bins, 50 Hz-14 kHz).

    ``resize_antialias`` is the anti-aliasing of the fusion input's global (resized) channel. The
    released fusion checkpoints were trained with torchvision 0.13, whose ``Resize`` did not
    anti-alias tensors (plain bilinear, ``align_corners=False``), and transformers'
    ``ClapFeatureExtractor`` does the same, so it is off by default; torchvision >= 0.17 switched
    its default to True, which ``resize_antialias=True`` reproduces.
    """

    sample_rate: int = 48_000
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 480
    n_mels: int = 64
    f_min: float = 50.0
    f_max: float = 14_000.0
    chunk_seconds: float = 10.0
    recipe: MelRecipe = "slaney"
    amin: float = 1e-10
    resize_antialias: bool = False

    def __post_init__(self) -> None:
        if self.recipe not in MEL_RECIPES:
            raise ValueError(f"MelConfig.recipe: {self.recipe!r} is not one of {MEL_RECIPES}")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(
                f"MelConfig: need 0 <= f_min < f_max <= sample_rate/2, got f_min={self.f_min}, "
                f"f_max={self.f_max}, sample_rate={self.sample_rate}"
            )
        if self.win_length > self.n_fft:
            raise ValueError(f"MelConfig: win_length {self.win_length} exceeds n_fft {self.n_fft}")

    @classmethod
    def for_model(cls, fusion: bool, **overrides: object) -> MelConfig:
        """The recipe a model expects: HTK for fusion models, Slaney otherwise."""
        return cls(recipe="htk" if fusion else "slaney", **overrides)  # type: ignore[arg-type]

    @property
    def chunk_samples(self) -> int:
        """Samples in one model input (480,000 at 48 kHz)."""
        return int(round(self.chunk_seconds * self.sample_rate))

    @property
    def chunk_frames(self) -> int:
        """Mel frames of one model input (1001): a centred STFT gives ``samples // hop + 1`` frames."""
        return self.num_frames(self.chunk_samples)

    def num_frames(self, num_samples: int) -> int:
        """Mel frames of a waveform of ``num_samples`` samples."""
        return num_samples // self.hop_length + 1


@dataclass
class AudioFeatures:
    """The audio tower's input: ``input_features`` [B, C, 1001, 64] float32 (C = 4 with fusion:
    global + 3 local views, else 1) and ``is_longer`` [B] bool (the clip was longer than 10 s)."""

    input_features: Tensor
    is_longer: Tensor

    def to(self, device: torch.device | str) -> AudioFeatures:
        return AudioFeatures(self.input_features.to(device), self.is_longer.to(device))

    def __len__(self) -> int:
        return int(self.input_features.shape[0])


def _mel_filterbank(cfg: MelConfig) -> Tensor:
    """The recipe's filterbank [n_fft // 2 + 1, n_mels] in float32, weight for weight the reference's.

    ``melscale_fbanks(norm="slaney", mel_scale="slaney")`` is librosa's ``filters.mel(htk=False,
    norm="slaney")``, which the reference (via torchlibrosa) computes in float64 and stores as float32;
    torchaudio computes in the default dtype, and in float32 the tiny weights at the triangles' edges
    come out up to 50 % off (3e-4 dB in quiet bins), so the Slaney bank is built under a float64
    default and then cast. ``norm=None, mel_scale="htk"`` is what the reference's torchaudio
    ``MelSpectrogram`` builds, in float32, so the HTK bank is built exactly that way.
    """
    build = functools.partial(
        torchaudio.functional.melscale_fbanks,
        n_freqs=cfg.n_fft // 2 + 1,
        f_min=cfg.f_min,
        f_max=cfg.f_max,
        n_mels=cfg.n_mels,
        sample_rate=cfg.sample_rate,
    )
    if cfg.recipe == "htk":
        return build(norm=None, mel_scale="htk").to(torch.float32)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return build(norm="slaney", mel_scale="slaney").to(torch.float32)
    finally:
        torch.set_default_dtype(previous)


class LogMel(nn.Module):
    """Batched log-mel spectrogram in dB: waveform [B, T] (or [T]) -> [B, frames, n_mels].

    Computes in the input's floating dtype (float64 input -> float64 maths), so numerical checks can
    run without float32 round-off; the float32 filterbank is then applied in float64.
    """

    def __init__(self, config: MelConfig | None = None) -> None:
        super().__init__()
        self.config = config or MelConfig()
        cfg = self.config
        fbank = _mel_filterbank(cfg)
        used = torch.nonzero(fbank.sum(dim=1) > 0).squeeze(1)
        # Only FFT bins under some mel filter matter (about 2..299 of 513 for 50 Hz-14 kHz): slicing
        # them out first saves ~40 % of the power and projection work without changing a value.
        self.bins = (int(used.min()), int(used.max()) + 1)
        window = torch.hann_window(cfg.win_length, periodic=True, dtype=torch.float64)  # cast per call
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("fbank", fbank, persistent=False)  # [n_freqs, n_mels], the reference's layout
        # Each used bin's weights twice: applied to (re^2, im^2) pairs, a matmul sums them into power.
        pairs = fbank[self.bins[0] : self.bins[1]].repeat_interleave(2, dim=0)
        self.register_buffer("fbank_pairs", pairs, persistent=False)  # [2 * used bins, n_mels]

    @property
    def pad(self) -> int:
        """Samples a centred STFT adds (by reflection) on each side of the waveform: n_fft // 2."""
        return self.config.n_fft // 2

    def forward(self, waveform: Tensor) -> Tensor:
        squeeze = waveform.dim() == 1
        if squeeze:
            waveform = waveform.unsqueeze(0)
        if waveform.dim() != 2:
            raise ValueError(f"LogMel: expected a waveform [batch, samples], got shape {tuple(waveform.shape)}")
        if waveform.shape[-1] <= self.pad:
            raise ValueError(
                f"LogMel: waveform of {waveform.shape[-1]} samples is too short for a centred STFT "
                f"(needs more than {self.pad}); fill it first (fill_waveform)"
            )
        if not waveform.is_floating_point():
            waveform = waveform.float()
        padded = F.pad(waveform.unsqueeze(1), (self.pad, self.pad), mode="reflect").squeeze(1)
        db = self.from_padded(padded)
        return db.squeeze(0) if squeeze else db

    def from_padded(self, padded: Tensor) -> Tensor:
        """Log-mel [B, frames, n_mels] of waveforms [B, T + 2 * pad] already reflect-padded by ``pad``
        samples on each side (what ``forward`` does first; callers that assemble a batch buffer
        anyway can write the padding there and skip a copy).

        On CPU the batch goes through in blocks of about ``CPU_BLOCK_SAMPLES`` samples: the STFT's
        intermediates then stay in cache, which is 2-3x faster than one large batch on 1-2 cores.
        """
        if padded.device.type != "cpu":
            return self._logmel_block(padded)
        rows = max(1, CPU_BLOCK_SAMPLES // padded.shape[-1])
        if padded.shape[0] <= rows:
            return self._logmel_block(padded)
        frames = self.config.num_frames(padded.shape[-1] - 2 * self.pad)
        out = torch.empty(padded.shape[0], frames, self.config.n_mels, dtype=padded.dtype)
        for start in range(0, padded.shape[0], rows):
            out[start : start + rows] = self._logmel_block(padded[start : start + rows])
        return out

    def _logmel_block(self, padded: Tensor) -> Tensor:
        cfg = self.config
        dtype = padded.dtype
        spec = torch.stft(
            padded,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            win_length=cfg.win_length,
            window=self.window.to(dtype),
            center=False,
            normalized=False,
            onesided=True,
            return_complex=True,
        ).transpose(1, 2)[..., self.bins[0] : self.bins[1]]  # [B, frames, used bins]
        # |X|^2 = re^2 + im^2 folded into the projection: one dense square, no strided re/im passes.
        squares = torch.view_as_real(spec).square().flatten(-2)  # [B, frames, 2 * used bins]
        mel = torch.matmul(squares, self.fbank_pairs.to(dtype))  # [B, frames, n_mels]
        # ref = 1.0, so the reference's "- 10*log10(max(amin, ref))" term is zero.
        return 10.0 * torch.log10(torch.clamp(mel, min=cfg.amin))


@functools.lru_cache(maxsize=16)
def _cached_logmel(config: MelConfig, device: str) -> LogMel:
    return LogMel(config).to(device)


def logmel(waveform: Tensor, config: MelConfig | None = None) -> Tensor:
    """Log-mel of a batch [B, T] (or one clip [T]) with a cached ``LogMel`` on the waveform's device."""
    return _cached_logmel(config or MelConfig(), str(waveform.device))(waveform)


def _padded_batch(views: list[Tensor], pad: int, quantise: bool, dtype: torch.dtype) -> Tensor:
    """Equal-length views [T] stacked into one buffer [b, T + 2 * pad]: each view in the middle,
    reflect padding (as a centred STFT adds) at both ends, int16-round-tripped in place."""
    length = views[0].shape[-1]
    buf = torch.empty(len(views), length + 2 * pad, dtype=torch.float32, device=views[0].device)
    for j, view in enumerate(views):  # row by row, so each row is still in cache for the next step
        row = buf[j]
        if quantise:
            int16_roundtrip(view, out=row[pad : pad + length])
        else:
            row[pad : pad + length] = view
        row[:pad] = row[pad + 1 : 2 * pad + 1].flip(-1)
        row[pad + length :] = row[length - 1 : length + pad - 1].flip(-1)
    return buf.to(dtype)


def int16_roundtrip(x: Tensor | np.ndarray, out: Tensor | None = None) -> Tensor | np.ndarray:
    """The reference's int16 quantisation: clip to [-1, 1], x32767, cast to int16, /32767 (float32).

    A tensor (any device) gives a tensor, written into the float32 tensor ``out`` when given; a
    numpy array gives a numpy array. Truncating in float32 is the int16 cast (|x * 32767| < 2**24
    is exact), without the two dtype conversions.
    """
    if isinstance(x, np.ndarray):
        return int16_roundtrip(torch.from_numpy(np.asarray(x, dtype=np.float32))).numpy()
    if out is None:
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    torch.clamp(x, -1.0, 1.0, out=out)
    return out.mul_(32767.0).trunc_().div_(32767.0)


def fill_waveform(x: Tensor, length: int, mode: FillMode = "repeatpad") -> Tensor:
    """Fill a clip shorter than ``length`` samples up to ``length``.

    ``repeatpad``: repeat the clip whole as many times as fits, then zero-pad; ``repeat``: repeat and
    cut at ``length``; ``pad``: zero-pad. A clip of exactly ``length`` samples is returned as is.
    """
    n = x.shape[-1]
    if n > length:
        raise ValueError(f"fill_waveform: clip has {n} samples, more than the target {length}; crop it instead")
    if n == 0:
        raise ValueError("fill_waveform: empty clip (0 samples); drop or quarantine it before feature extraction")
    if n == length:
        return x
    if mode == "repeatpad":
        x = x.repeat(length // n)
        return F.pad(x, (0, length - x.shape[-1]))
    if mode == "repeat":
        return x.repeat(length // n + 1)[:length]
    if mode == "pad":
        return F.pad(x, (0, length - n))
    raise ValueError(f"fill mode {mode!r} is not one of {FILL_MODES}")


def _pick(count: int, *, training: bool, generator: torch.Generator | None) -> int:
    """An index into ``count`` choices: uniform at random in training, the middle one at inference."""
    if training:
        return int(torch.randint(count, (1,), generator=generator).item())
    return count // 2


def crop_start(num_samples: int, length: int, *, training: bool, generator: torch.Generator | None = None) -> int:
    """Start of a ``length``-sample crop of a longer clip: random in training, centred at inference."""
    return _pick(num_samples - length + 1, training=training, generator=generator)


def fusion_crop_starts(
    total_frames: int, chunk_frames: int, *, training: bool, generator: torch.Generator | None = None
) -> tuple[int, int, int]:
    """Starts (in frames) of the front, middle and back local views of a long clip's mel.

    The possible starts ``0 .. total_frames - chunk_frames`` are split into three near-equal thirds
    (the first thirds take the remainder, like ``numpy.array_split``); one start is taken from each,
    at random in training and the middle of the third at inference. An empty third uses start 0.
    """
    positions = np.arange(total_frames - chunk_frames + 1)
    starts = []
    for third in np.array_split(positions, 3):
        starts.append(int(third[_pick(len(third), training=training, generator=generator)]) if len(third) else 0)
    return starts[0], starts[1], starts[2]


def resize_frames(mel: Tensor, frames: int, *, antialias: bool = False) -> Tensor:
    """Bilinear resize of a mel [T, n_mels] to [frames, n_mels]; torchvision ``Resize`` semantics on
    tensors (``align_corners=False``; the mel axis keeps its size, so it is unchanged)."""
    out = F.interpolate(
        mel[None, None], size=(frames, mel.shape[-1]), mode="bilinear", align_corners=False, antialias=antialias
    )
    return out[0, 0]


def _as_mono_tensor(index: int, waveform: Tensor | np.ndarray) -> Tensor:
    x = torch.as_tensor(waveform)
    if x.dim() == 2 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 1:
        raise ValueError(
            f"waveform {index}: expected mono audio shaped [samples] or [1, samples], got shape {tuple(x.shape)}; "
            "downmix first (e.g. waveform.mean(0)) or use clap.model.inference.load_clip"
        )
    if x.numel() == 0:
        raise ValueError(f"waveform {index}: empty (0 samples); quarantine it before feature extraction")
    return x.to(torch.float32)


def prepare_audio_features(
    waveforms: Sequence[Tensor | np.ndarray],
    *,
    fusion: bool,
    fill: FillMode = "repeatpad",
    training: bool = False,
    generator: torch.Generator | None = None,
    mel: MelConfig | None = None,
    device: torch.device | str | None = None,
    int16_roundtrip: bool = True,
    compute_dtype: torch.dtype = torch.float32,
) -> AudioFeatures:
    """Turn mono 48 kHz clips of any length into the model's input (see the module docstring).

    ``training`` draws crops at random (from ``generator``, a CPU ``torch.Generator``, when given;
    else from torch's global generator); otherwise crops are
    deterministic (centre crop / middle of each third), so a clip always maps to the same features.
    ``int16_roundtrip`` quantises samples like the reference does before features. ``mel`` defaults
    to the model's recipe (``MelConfig.for_model(fusion)``). ``compute_dtype=torch.float64`` runs the
    DSP in double precision (for numerical checks; the output is float32 either way). All filled or
    cropped 10 s chunks go through one batched ``LogMel`` call; long fusion clips get one call per
    distinct length.
    """
    if fill not in FILL_MODES:
        raise ValueError(f"fill={fill!r} is not one of {FILL_MODES}")
    if len(waveforms) == 0:
        raise ValueError("prepare_audio_features: no waveforms given")
    cfg = mel or MelConfig.for_model(fusion)
    if fusion and cfg.recipe != "htk":
        logger.warning("fusion input with the %r mel recipe; the reference's fusion models use 'htk'", cfg.recipe)
    target = torch.device(device) if device is not None else None
    n_chunk, n_frames, n_ch = cfg.chunk_samples, cfg.chunk_frames, (4 if fusion else 1)

    # Views are grouped by length so each group is one batched STFT: 10 s chunks (filled or cropped;
    # all channels get their mel) and, with fusion, whole long clips (global + local views).
    chunks: dict[int, list[tuple[int, Tensor]]] = {}
    long_clips: dict[int, list[tuple[int, Tensor]]] = {}
    is_longer = torch.zeros(len(waveforms), dtype=torch.bool)
    for i, w in enumerate(waveforms):
        x = _as_mono_tensor(i, w)
        if target is not None:
            x = x.to(target)
        n = x.shape[-1]
        if n <= n_chunk:
            chunks.setdefault(n_chunk, []).append((i, fill_waveform(x, n_chunk, fill)))
        elif fusion and cfg.num_frames(n) == n_frames:
            # At most one hop over 10 s: already 1001 frames, so used whole and not flagged as longer.
            chunks.setdefault(n, []).append((i, x))
        elif fusion:
            long_clips.setdefault(n, []).append((i, x))
            is_longer[i] = True
        else:
            start = crop_start(n, n_chunk, training=training, generator=generator)
            chunks.setdefault(n_chunk, []).append((i, x[start : start + n_chunk]))
            is_longer[i] = True

    out_device = target or torch.as_tensor(waveforms[0]).device
    extractor = _cached_logmel(cfg, str(out_device))

    def mels_of(group: list[tuple[int, Tensor]]) -> Tensor:
        padded = _padded_batch([x for _, x in group], extractor.pad, int16_roundtrip, compute_dtype)
        return extractor.from_padded(padded)  # [b, frames, n_mels]

    features = torch.empty(len(waveforms), n_ch, n_frames, cfg.n_mels, dtype=torch.float32, device=out_device)
    for group in chunks.values():
        features[[i for i, _ in group]] = mels_of(group).float().unsqueeze(1).expand(-1, n_ch, -1, -1)
    for group in long_clips.values():
        for (i, _), m in zip(group, mels_of(group)):
            # float64 source positions: in float32 they drift by ~1e-4 frames, 1e-2 dB at 100 dB edges
            features[i, 0] = resize_frames(m.double(), n_frames, antialias=cfg.resize_antialias).float()
            starts = fusion_crop_starts(m.shape[0], n_frames, training=training, generator=generator)
            for c, s in enumerate(starts, start=1):
                features[i, c] = m[s : s + n_frames]
    return AudioFeatures(input_features=features, is_longer=is_longer.to(out_device))


# -- training crops from a clip's precomputed mel (the cached training path; inference uses the above)
def clip_training_mel(waveform: Tensor | np.ndarray, *, fusion: bool, fill: FillMode = "repeatpad",
                      mel: MelConfig | None = None) -> tuple[Tensor, bool]:
    """The mel [frames, n_mels] (float32) that a clip's training crops are drawn from, and whether
    the clip counts as longer than 10 s. Clips of 10 s or less: the mel of the filled 10 s chunk,
    exactly what ``prepare_audio_features`` computes for them; longer clips: the whole clip's mel,
    from which :func:`training_crop` cuts views in frames (as the reference cuts fusion views)."""
    cfg = mel or MelConfig.for_model(fusion)
    x = _as_mono_tensor(0, waveform)
    n = x.shape[-1]
    longer = n > cfg.chunk_samples and not (fusion and cfg.num_frames(n) == cfg.chunk_frames)
    if n <= cfg.chunk_samples:
        x = fill_waveform(x, cfg.chunk_samples, fill)
    extractor = _cached_logmel(cfg, str(x.device))
    return extractor.from_padded(_padded_batch([x], extractor.pad, True, torch.float32))[0], longer


def fusion_global_view(mel: Tensor, chunk_frames: int = 1001, *, antialias: bool = False) -> Tensor:
    """Channel 0 of a long clip's fusion input: its whole mel resized (bilinear) to 1001 frames."""
    return resize_frames(mel.double(), chunk_frames, antialias=antialias).float()


def training_crop(mel: Tensor, longer: bool, *, fusion: bool, chunk_frames: int = 1001,
                  global_view: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """One training input [C, 1001, n_mels] (float32) from a clip's :func:`clip_training_mel`.

    Not longer: that mel in every channel. Longer, non-fusion: a 1001-frame crop starting at a frame
    drawn uniformly at random (the reference draws the start in samples and computes that crop's
    mel: the same frames but two at each end, whose STFT windows reach past the crop into reflect
    padding there and into the clip's neighbouring samples here). Longer, fusion: ``global_view`` (or :func:`fusion_global_view`) and three
    crops from the front, middle and back thirds of the start positions, as at inference but random.
    """
    mel = mel.float()
    if not longer:
        return mel[:chunk_frames].unsqueeze(0).expand(4 if fusion else 1, -1, -1)
    if not fusion:
        start = crop_start(mel.shape[0], chunk_frames, training=True, generator=generator)
        return mel[start : start + chunk_frames].unsqueeze(0)
    if global_view is None:
        global_view = fusion_global_view(mel, chunk_frames)
    starts = fusion_crop_starts(mel.shape[0], chunk_frames, training=True, generator=generator)
    return torch.stack([global_view.float(), *(mel[s : s + chunk_frames] for s in starts)])
