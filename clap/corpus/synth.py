"""Synthesisers of the built-in corpus's sound classes and backgrounds, in numpy.

Synthesisers take ``(n, sample_rate, rng, pitch, rate)`` and return ``n`` float64 samples; ``pitch``
and ``rate`` are factors around 1 (about 0.75-1.33 and 0.6-1.6) that move the sound's frequencies
and its tempo. The classes differ in spectrum (40 Hz drones to 5 kHz chirps) and in time structure
(steady, swept, periodic clicks, bursts), so that a small model can tell them apart.

exp, log, power and tanh come from clap.corpus.portable, so the samples have the same bits on every
machine (numpy's own pick their SIMD code by CPU).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from scipy.fft import next_fast_len

from clap.corpus import portable

# ----------------------------------------------------------------------------------------------
# Signal building blocks
# ----------------------------------------------------------------------------------------------

Synth = Callable[[int, int, np.random.Generator, float, float], np.ndarray]


def _times(n: int, sr: int) -> np.ndarray:
    return np.arange(n) / sr


def _phase(freq: np.ndarray, sr: int) -> np.ndarray:
    """Instantaneous phase of a tone whose frequency changes sample by sample."""
    return 2.0 * np.pi * np.cumsum(freq) / sr


def _harmonics(phase: np.ndarray, top_freq: float, sr: int, amps: Sequence[float]) -> np.ndarray:
    """Sum of harmonics ``amps[k-1] * sin(k * phase)``, leaving out those that would alias."""
    out = np.zeros_like(phase)
    for k, amp in enumerate(amps, start=1):
        if k * top_freq < 0.45 * sr:
            out += amp * np.sin(k * phase)
    return out


def _band_gain(freqs: np.ndarray, low: float | None, high: float | None, order: int = 2) -> np.ndarray:
    """Butterworth-like magnitude response of a band (or low/high) pass."""
    f = np.maximum(freqs, 1e-3)
    gain = np.ones_like(f)
    if low is not None:
        gain /= np.sqrt(1.0 + portable.int_power(low / f, 2 * order))
    if high is not None:
        gain /= np.sqrt(1.0 + portable.int_power(f / high, 2 * order))
    return gain


def _shaped_noise(n: int, sr: int, rng: np.random.Generator, gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """White noise filtered in the frequency domain by ``gain(freqs)``, scaled to unit RMS."""
    size = next_fast_len(n, real=True)  # prime lengths would make the FFT slow
    spectrum = np.fft.rfft(rng.standard_normal(size))
    y = np.fft.irfft(spectrum * gain(np.fft.rfftfreq(size, 1.0 / sr)), size)[:n]
    return y / (np.sqrt(np.mean(y**2)) + 1e-12)


def _slow_curve(n: int, sr: int, rng: np.random.Generator, cutoff: float) -> np.ndarray:
    """A smooth random curve (unit RMS) changing no faster than ``cutoff`` Hz."""
    return _shaped_noise(n, sr, rng, lambda f: 1.0 / (1.0 + portable.int_power(f / cutoff, 4)))


def _clamp_freq(freq: float, sr: int, limit: float = 0.42) -> float:
    return min(freq, limit * sr)


def _scatter(buf: np.ndarray, snippet: np.ndarray, starts: Sequence[int], gains: Sequence[float]) -> None:
    """Add ``gain * snippet`` into ``buf`` at each start, cutting at the end of ``buf``."""
    n = len(buf)
    for start, gain in zip(starts, gains, strict=True):
        if 0 <= start < n:
            m = min(len(snippet), n - start)
            buf[start : start + m] += gain * snippet[:m]


def _gate(n: int, sr: int, segments: Sequence[tuple[float, float]], ramp: float) -> np.ndarray:
    """An on/off envelope: 1 inside each (start, end) segment in seconds, raised-cosine edges."""
    env = np.zeros(n)
    r = max(1, int(ramp * sr))
    for start, end in segments:
        a, b = int(start * sr), min(n, int(end * sr))
        if b <= a:
            continue
        env[a:b] = 1.0
        k = min(r, (b - a) // 2)
        if k > 0:
            edge = 0.5 - 0.5 * np.cos(np.pi * np.arange(k) / k)
            env[a : a + k] *= edge
            env[b - k : b] *= edge[::-1]
    return env


def _decay(n: int, sr: int, tau: float, attack: float = 0.002) -> np.ndarray:
    t = _times(n, sr)
    return portable.exp(-t / tau) * np.minimum(1.0, t / attack)


def _beat_times(total: float, interval: float, rng: np.random.Generator, jitter: float = 0.0) -> np.ndarray:
    """Regular onsets every ``interval`` seconds from a random phase, with optional jitter."""
    first = rng.uniform(0.0, min(interval, 0.25 * total) * 0.5)
    times = np.arange(first, total, interval)
    if jitter:
        times = times + rng.normal(0.0, jitter, len(times))
    return np.clip(times, 0.0, None)


# ----------------------------------------------------------------------------------------------
# Sound classes: one synthesiser each
# ----------------------------------------------------------------------------------------------


def siren(n: int, sr: int, rng: np.random.Generator, pitch: float, rate: float) -> np.ndarray:
    low, high = 650.0 * pitch, 1450.0 * pitch
    t = _times(n, sr)
    sweep = 0.5 - 0.5 * np.cos(2 * np.pi * t * rate / 3.2 + rng.uniform(0, 2 * np.pi))
    phase = _phase(low + (high - low) * sweep, sr)
    return _harmonics(phase, high, sr, (1.0, 0.35, 0.15))


def engine(n: int, sr: int, rng: np.random.Generator, pitch: float, rate: float) -> np.ndarray:
    f0 = 48.0 * pitch
    freq = f0 * (1.0 + 0.015 * _slow_curve(n, sr, rng, 0.5))
    phase = _phase(freq, sr)
    drone = np.zeros(n)
    for k in range(1, 21):
        if k * f0 * 1.1 < 0.45 * sr:
            drone += np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / float(portable.power(k, 0.7))
    throb = (0.55 + 0.45 * np.sin(2 * np.pi * 7.0 * rate * _times(n, sr) + rng.uniform(0, 2 * np.pi))) ** 2
    rumble = _shaped_noise(n, sr, rng, lambda f: _band_gain(f, None, 250.0))
    return drone * throb + 0.25 * rumble


def rain(n: int, sr: int, rng: np.random.Generator, pitch: float, rate: float) -> np.ndarray:
    low, high = 600.0 * pitch, _clamp_freq(6000.0 * pitch, sr)
    out = 0.35 * _shaped_noise(n, sr, rng, lambda f: _band_gain(f, low, high))
    drop_len = int(0.025 * sr)
    kernels = []
    for _ in range(4):
        freq = _clamp_freq(rng.uniform(1800.0, 4500.0) * pitch, sr)
        ring = np.sin(2 * np.pi * freq * _times(drop_len, sr))
        kernels.append(ring * _decay(drop_len, sr, rng.uniform(0.002, 0.005), 0.0005))
    count = rng.poisson(28.0 * rate * n / sr)
    starts = rng.integers(0, n, count)
    gains = rng.lognormal(0.0, 0.5, count)
    which = rng.integers(0, len(kernels), count)
    for k, kernel in enumerate(kernels):
        _scatter(out, kernel, starts[which == k], gains[which == k])
    return out


_BELL_PARTIALS = (  # (frequency ratio, amplitude, decay seconds): inharmonic, like a church bell
    (0.5, 0.5, 3.5), (1.0, 1.0, 2.2), (1.19, 0.6, 1.8), (1.56, 0.45, 1.3), (2.0, 0.5, 1.0),
    (2.51, 0.3, 0.8), (2.66, 0.25, 0.6), (3.01, 0.2, 0.5), (4.16, 0.12, 0.3),
)


def bell(n: int, sr: int, rng: np.random.Generator, pitch: float, rate: float) -> np.ndarray:
    f0 = 440.0 * pitch
    m = min(n, int(4.0 * sr))
    t = _times(m, sr)
    strike = np.zeros(m)
    for ratio, amp, tau in _BELL_PARTIALS:
        if ratio * f0 < 0.45 * sr:
            strike += amp * np.sin(2 * np.pi * ratio * f0 * t + rng.uniform(0, 2 * np.pi)) * portable.exp(-t / tau)
    strike *= np.minimum(1.0, t / 0.003)
    out = np.zeros(n)
    onsets = _beat_times(n / sr, 2.2 / rate, rng)
    _scatter(out, strike, (onsets * sr).astype(int), rng.uniform(0.85, 1.0, len(onsets)))
    return out


def clock_tick(n: int, sr: int, rng: np.random.Generator, pitch: float, rate: float) -> np.ndarray:
    m = int(0.04 * sr)
    click = np.diff(rng.standard_normal(m + 1)) * _decay(m, sr, 0.001, 0.0002)
    templates = []
    for shift in (1.0, 0.8):  # tick, tock
        t = _times(m, sr)
        ping = np.sin(2 * np.pi * _clamp_freq(3000.0 * pitch * shift, sr) * t) * _decay(m, sr, 0.006, 0.0003)
        body = np.sin(2 * np.pi * 1200.0 * pitch * shift * t) * _decay(m, sr, 0.01, 0.0003)
        templates.append(0.4 * click + ping + 0.5 * body)
    out = np.zeros(n)
    onsets = (_beat_times(n / sr, 0.5 / rate, rng, jitter=0.001) * sr).astype(int)
    for k, template in enumerate(templates):
        _scatter(out, template, onsets[k::2], np.ones(len(onsets[k::2])))
    return out


def whistle(n: int, sr: int, rng: np.random.Generator, pitch: float, rate: float) -> np.ndarray:
    f = _clamp_freq(3000.0 * pitch, sr, 0.38)
    t = _times(n, sr)
    phase = _phase(f * (1.0 + 0.015 * np.sin(2 * np.pi * 6.0 * t)), sr)  # vibrato
    tone = _harmonics(phase, f * 1.02, sr, (1.0, 0.08))
    trill = 1.0 - 0.3 * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(22.0, 30.0) * t))  # the rolling pea
    breath = _shaped_noise(n, sr, rng, lambda fr: _band_gain(fr, 0.8 * f, min(1.25 * f, 0.45 * sr), 4))
    blasts, start, total = [], 0.0, n / sr
    while start < total:
        end = start + rng.uniform(0.35, 1.1) / rate
        blasts.append((start, end))
        start = end + rng.uniform(0.12, 0.35) / rate
    return (tone * trill + 0.12 * breath) * _gate(n, sr, blasts, 0.015)


def dog_bark(n: int, sr: int, rng: np.random.Generator, pitch: float, rate: float) -> np.ndarray:
    formants = [(650.0, 120.0, 1.0), (1250.0, 200.0, 0.6), (2400.0, 300.0, 0.3)]
    scale = math.sqrt(pitch)

    def formant_gain(f: np.ndarray) -> np.ndarray:
        g = np.full_like(f, 0.02)
        for fc, bw, amp in formants:
            g += amp / (1.0 + ((f - fc * scale) / bw) ** 2)
        return g

    barks = []
    for _ in range(3):
        m = int(rng.uniform(0.12, 0.22) * sr)
        t = _times(m, sr)
        f0 = 420.0 * pitch * (1.0 + 0.25 * portable.exp(-t / 0.03)) * (1.0 - 0.25 * t / t[-1])
        source = _harmonics(_phase(f0, sr), float(f0.max()), sr, [1.0 / k for k in range(1, 30)])
        source += 0.25 * rng.standard_normal(m)
        voiced = np.fft.irfft(np.fft.rfft(source) * formant_gain(np.fft.rfftfreq(m, 1.0 / sr)), m)
        envelope = _decay(m, sr, t[-1] / 3.0, 0.008) * (1.0 + 0.3 * np.sin(2 * np.pi * 70.0 * t))
        barks.append(voiced * envelope / (np.abs(voiced).max() + 1e-12))
    out = np.zeros(n)
    start, total = rng.uniform(0.0, 0.1), n / sr
    while start < total:
        for _ in range(rng.integers(1, 5)):
            bark = barks[rng.integers(0, len(barks))]
            _scatter(out, bark, [int(start * sr)], [rng.uniform(0.7, 1.0)])
            start += rng.uniform(0.24, 0.32) / rate
        start += rng.uniform(0.6, 1.4) / rate
    return out


def drum(n: int, sr: int, rng: np.random.Generator, pitch: float, rate: float) -> np.ndarray:
    m = min(n, int(0.6 * sr))
    t = _times(m, sr)
    body = np.sin(_phase(65.0 * pitch * (1.0 + 1.2 * portable.exp(-t / 0.025)), sr)) * _decay(m, sr, 0.22, 0.001)
    skin = _shaped_noise(m, sr, rng, lambda f: _band_gain(f, 150.0, 2500.0)) * _decay(m, sr, 0.035, 0.001)
    hit = body + 0.35 * skin
    onsets = _beat_times(n / sr, 60.0 / (105.0 * rate), rng, jitter=0.004)
    gains = np.where(np.arange(len(onsets)) % 4 == 0, 1.0, rng.uniform(0.55, 0.8, len(onsets)))
    keep = (rng.random(len(onsets)) > 0.15) | (np.arange(len(onsets)) == 0)
    out = np.zeros(n)
    _scatter(out, hit, (onsets[keep] * sr).astype(int), gains[keep])
    return out


def water_drip(n: int, sr: int, rng: np.random.Generator, pitch: float, rate: float) -> np.ndarray:
    m = int(0.08 * sr)
    t = _times(m, sr)
    out = np.zeros(n)
    start, total = rng.uniform(0.0, 0.2), n / sr
    while start < total:
        f_start = 650.0 * pitch * rng.uniform(0.85, 1.15)
        f_end = _clamp_freq(f_start * rng.uniform(2.2, 3.0), sr)
        freq = f_start * portable.power(f_end / f_start, np.minimum(1.0, t / 0.025))  # a rising "plink"
        blip = np.sin(_phase(freq, sr)) * _decay(m, sr, 0.012, 0.0015)
        echo = int(0.035 * sr)
        blip[echo:] += 0.25 * blip[:-echo]
        _scatter(out, blip, [int(start * sr)], [rng.uniform(0.6, 1.0)])
        start += 0.75 / rate * rng.uniform(0.6, 1.4)
    return out


def wind(n: int, sr: int, rng: np.random.Generator, pitch: float, rate: float) -> np.ndarray:
    gust = 0.5 + 0.5 * portable.tanh(1.2 * _slow_curve(n, sr, rng, 0.25 * rate))
    low = _shaped_noise(n, sr, rng, lambda f: _band_gain(f, None, 300.0 * pitch))
    whoosh = _shaped_noise(n, sr, rng, lambda f: _band_gain(f, 500.0 * pitch, 1600.0 * pitch))
    return low * (0.35 + 0.65 * gust) + 0.6 * whoosh * gust**2


def alarm(n: int, sr: int, rng: np.random.Generator, pitch: float, rate: float) -> np.ndarray:
    f = _clamp_freq(2000.0 * pitch, sr, 0.4)
    square = _harmonics(_phase(np.full(n, f), sr), f, sr, [1.0 / k if k % 2 else 0.0 for k in range(1, 16)])
    beep, gap, pause = 0.1 / rate, 0.07 / rate, 0.5 / rate
    segments, start, total = [], rng.uniform(0.0, 0.1), n / sr
    while start < total:
        for _ in range(4):
            segments.append((start, start + beep))
            start += beep + gap
        start += pause
    return square * _gate(n, sr, segments, 0.003)


def birds(n: int, sr: int, rng: np.random.Generator, pitch: float, rate: float) -> np.ndarray:
    out = np.zeros(n)
    total = n / sr
    for voice in range(rng.integers(1, 3)):
        p = pitch * (1.0 if voice == 0 else rng.uniform(0.8, 1.2))
        high, low = _clamp_freq(5000.0 * p, sr), _clamp_freq(2600.0 * p, sr)
        start = rng.uniform(0.0, 0.4)
        while start < total:
            for _ in range(rng.integers(3, 8)):
                m = int(rng.uniform(0.05, 0.11) * sr)
                frac = np.linspace(0.0, 1.0, m)
                if rng.random() < 0.3:
                    frac = frac[::-1]
                freq = high * portable.power(low / high, frac)  # a fast sweep
                chirp = _harmonics(_phase(freq, sr), high, sr, (1.0, 0.2)) * np.hanning(m)
                _scatter(out, chirp, [int(start * sr)], [rng.uniform(0.6, 1.0)])
                start += m / sr + rng.uniform(0.03, 0.08)
            start += rng.uniform(0.9, 1.8) / rate
    return out


def crickets(n: int, sr: int, rng: np.random.Generator, pitch: float, rate: float) -> np.ndarray:
    out = np.zeros(n)
    m = int(0.014 * sr)
    total = n / sr
    for _ in range(rng.integers(1, 4)):
        freq = _clamp_freq(4400.0 * pitch * rng.uniform(0.95, 1.05), sr)
        pulse = np.sin(2 * np.pi * freq * _times(m, sr)) * np.hanning(m)
        gain = rng.uniform(0.5, 1.0)
        pulses_per_chirp = int(rng.integers(3, 6))
        starts = []
        for chirp in _beat_times(total, 0.5 / rate, rng, jitter=0.01):
            starts.extend(chirp + np.arange(pulses_per_chirp) / 32.0)
        _scatter(out, pulse, (np.asarray(starts) * sr).astype(int), np.full(len(starts), gain))
    return out


# ----------------------------------------------------------------------------------------------
# Backgrounds
# ----------------------------------------------------------------------------------------------

BACKGROUNDS = ("white", "brown", "hum")


def render_background(kind: str, level_db: float, n: int, sr: int, channels: int,
                      rng: np.random.Generator) -> np.ndarray:
    """(channels, n) background noise at ``level_db`` dBFS RMS: ``white`` (hiss), ``brown`` (rumble)
    or ``hum`` (mains hum); noise is partly decorrelated between channels."""
    if kind not in BACKGROUNDS:
        raise ValueError(f"unknown background {kind!r} (use one of {BACKGROUNDS})")
    if kind == "hum":
        mains = 50.0 if rng.random() < 0.5 else 60.0
        tone = _harmonics(_phase(np.full(n, mains), sr), mains, sr, (1.0, 0.5, 0.3, 0.2))
        noise = [tone / np.sqrt(np.mean(tone**2)) + 0.3 * rng.standard_normal(n) for _ in range(channels)]
    else:
        tilt = (lambda f: np.ones_like(f)) if kind == "white" else (lambda f: 1.0 / np.maximum(f, 20.0))
        common = _shaped_noise(n, sr, rng, tilt)
        noise = [0.8 * common + 0.6 * _shaped_noise(n, sr, rng, tilt) for _ in range(channels)]
    out = np.stack(noise[:channels])
    return out * (portable.db_to_gain(level_db) / (np.sqrt(np.mean(out**2)) + 1e-12))
