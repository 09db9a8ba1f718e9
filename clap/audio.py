"""The one audio loader: decode any file soundfile/libsndfile reads (WAV, FLAC, OGG, MP3...)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

#: The pipeline's working sample rate (the reference's).
SAMPLE_RATE = 48_000


class AudioDecodeError(ValueError):
    """A file could not be decoded as audio; the message names the file and the cause."""


def load_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Return ``(samples, sample_rate)``; samples are float32 shaped ``(channels, frames)``."""
    path = Path(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types (LibsndfileError, RuntimeError, TypeError)
        raise AudioDecodeError(f"{path}: not a readable audio file ({type(exc).__name__}: {exc})") from exc
    return np.ascontiguousarray(data.T), int(sr)


def audio_info(path: str | Path) -> tuple[float, int, int]:
    """``(duration_seconds, sample_rate, channels)`` from the header, without decoding."""
    path = Path(path)
    try:
        info = sf.info(str(path))
    except Exception as exc:
        raise AudioDecodeError(f"{path}: not a readable audio file ({type(exc).__name__}: {exc})") from exc
    duration = info.frames / info.samplerate if info.samplerate else 0.0
    return float(duration), int(info.samplerate), int(info.channels)

