"""Encoding of corpus clips into their file formats, reproducibly.

libsndfile gives each OGG stream a random serial number; ``encode_audio`` rewrites it with a given one
(and fixes the page checksums). Float WAV files carry a PEAK chunk stamped with the time of writing;
the stamp is zeroed. MP3 (LAME) and FLAC output is deterministic as it is for given samples.
"""

from __future__ import annotations

import io
import logging
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import soundfile as sf

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioFormat:
    ext: str
    container: str
    subtype: str


FORMATS: dict[str, AudioFormat] = {
    "wav_pcm16": AudioFormat("wav", "WAV", "PCM_16"),
    "wav_float": AudioFormat("wav", "WAV", "FLOAT"),
    "flac": AudioFormat("flac", "FLAC", "PCM_16"),
    "ogg": AudioFormat("ogg", "OGG", "VORBIS"),
    "mp3": AudioFormat("mp3", "MP3", "MPEG_LAYER_III"),
}


_BIT_REVERSED = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def _ogg_crc(page: bytes) -> int:
    """Ogg's page checksum (CRC-32, polynomial 0x04C11DB7, not reflected, no init/xor), computed
    with zlib's reflected CRC-32 on bit-reversed bytes."""
    reflected = zlib.crc32(page.translate(_BIT_REVERSED), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{reflected:032b}"[::-1], 2)


def set_ogg_serial(data: bytes, serial: int) -> bytes:
    """Rewrite the stream serial number of every page of a single-stream Ogg file (and the page
    checksums). libsndfile draws the serial at random; a fixed one makes the file reproducible."""
    out = bytearray(data)
    pos = 0
    while pos < len(out):
        if out[pos : pos + 4] != b"OggS":
            raise ValueError(f"not an Ogg page at byte {pos}")
        segments = out[pos + 26]
        length = 27 + segments + sum(out[pos + 27 : pos + 27 + segments])
        out[pos + 14 : pos + 18] = serial.to_bytes(4, "little")
        out[pos + 22 : pos + 26] = b"\0\0\0\0"
        out[pos + 22 : pos + 26] = _ogg_crc(bytes(out[pos : pos + length])).to_bytes(4, "little")
        pos += length
    return bytes(out)


def encode_audio(samples: np.ndarray, sample_rate: int, fmt: str, serial: int = 0) -> bytes:
    """Encode (frames, channels) float samples in one of ``FORMATS``; OGG gets ``serial``."""
    spec = FORMATS[fmt]
    buf = io.BytesIO()
    sf.write(buf, samples, sample_rate, format=spec.container, subtype=spec.subtype)
    data = buf.getvalue()
    if spec.container == "OGG":
        return set_ogg_serial(data, serial)
    if spec.container == "WAV" and spec.subtype == "FLOAT":
        return _clear_wav_peak_timestamp(data)
    return data


def _clear_wav_peak_timestamp(data: bytes) -> bytes:
    """libsndfile adds a PEAK chunk to float WAV files, stamped with the time of writing; zero the
    stamp so that the same samples always give the same bytes."""
    out = bytearray(data)
    pos = 12  # after "RIFF", size, "WAVE"
    while pos + 8 <= len(out):
        chunk, size = bytes(out[pos : pos + 4]), int.from_bytes(out[pos + 4 : pos + 8], "little")
        if chunk == b"PEAK":
            out[pos + 12 : pos + 16] = b"\0\0\0\0"  # after the chunk header and the version field
            break
        if chunk == b"data":
            break
        pos += 8 + size + (size & 1)
    return bytes(out)


@lru_cache(maxsize=None)
def can_write(fmt: str) -> bool:
    try:
        encode_audio(np.zeros((1600, 1), dtype=np.float32), 16000, fmt)
        return True
    except Exception as exc:  # libsndfile builds without LAME/Vorbis raise various errors
        log.warning("corpus: this libsndfile cannot write %s (%s); using FLAC instead", fmt, exc)
        return False


def writable_formats(formats: dict[str, float]) -> dict[str, float]:
    """The shares with any format this libsndfile cannot write moved over to FLAC."""
    usable: dict[str, float] = {}
    for fmt, share in formats.items():
        target = fmt if can_write(fmt) else "flac"
        usable[target] = usable.get(target, 0.0) + share
    return {fmt: share for fmt, share in usable.items() if share > 0}
