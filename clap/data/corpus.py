"""The embedded default corpus: real audio files synthesised with numpy, with captions and labels.

Nothing is downloaded. A seed and a few counts (params.yaml, section ``corpus``) decide every file,
so the same params give byte-identical audio and metadata on the same platform and library versions.

Sound classes
    ``SOUND_CLASSES`` (clap.data.corpus_sounds) holds 13 acoustically distinct classes: siren,
    engine, rain, bell, clock tick, whistle, dog bark, drum, water drip, wind, alarm, birds,
    crickets. Each clip draws its own pitch, rate, loudness, stereo position, background noise
    (kind and level) and event position, so no two clips are alike, and the captions
    (clap.data.corpus_captions) say what those draws made audible.

Sets (each one is a manifest ``source``)
    ``builtin_captions``  Clotho/AudioCaps style: 5 different captions per clip, some clips with a
                          second, quieter sound that the captions may mention; splits train/val/test;
                          task ``retrieval``.
    ``builtin_labels``    AudioSet style: 1-3 label keywords per clip (mixtures), no captions; split
                          train; task ``pretrain``.
    ``builtin_esc``       ESC-50 style: one label per 5 s clip, ``clips_per_class`` clips per class,
                          ``fold`` 1..folds, split test; task ``classification``.
    ``builtin_tags``      multi-label: 2-3 classes mixed, no captions; splits train/test; task
                          ``tagging``.

    Durations run from ``min_duration`` to ``max_duration`` (log-uniform below 10 s). A share
    ``long_fraction`` of the captions/labels/tags clips last longer than 10 s, and their described
    event fills at most 40 % of the clip (the rest is background). Sample rates (16-48 kHz), channel
    counts (mono/stereo) and file formats (WAV 16-bit, WAV float, FLAC, OGG Vorbis, MP3; shares in
    ``CorpusConfig.formats``) are spread evenly over each split. ``duplicates`` byte-identical
    copies of evaluation files (captions val/test, ESC) are planted in the train splits under new
    ids, for ingest's overlap exclusion.

Layout under the output folder
    ``<source>/<split>/<clip_id>.<ext>``  the audio files.
    ``metadata.jsonl``  one JSON object per clip, sorted by id, with exactly these keys::

        {"id": "<source>/<clip_id>", "source": str, "split": "train"|"val"|"test",
         "file": "<source>/<split>/<clip_id>.<ext>" (relative to the output folder),
         "captions": [str, ...] (empty for label-only sets), "labels": [str, ...],
         "fold": int | null, "task": "retrieval"|"pretrain"|"classification"|"tagging"}

    ``classes.json``  ``[{"name", "label", "keywords"}, ...]``: the class list; ``label`` is the human
                      label used in ``labels`` (and by zero-shot prompts).
    ``summary.json``  counts, total seconds and bytes, and the planted duplicates as
                      ``[[train_id, eval_id], ...]`` (ground truth for overlap checks).

Determinism
    Every clip is drawn from its own seed, derived from (seed, set, split, index), so a clip does not
    change when another set's size does and worker scheduling cannot change any file. libsndfile
    gives each OGG stream a random serial number; we rewrite it with one derived from the clip's seed
    (and fix the page checksums), which makes OGG files reproducible too. Float WAV files carry a
    PEAK chunk stamped with the time of writing; we zero the stamp. MP3 (LAME) output is
    deterministic as it is. A format the installed libsndfile cannot write falls back to FLAC with a
    warning.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import shutil
import time
import zlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from clap.data.corpus_captions import BACKGROUND_LEVELS, LONG_CLIP_SECONDS, write_captions
from clap.data.corpus_sounds import (
    BACKGROUNDS,
    CLASS_BY_NAME,
    SOUND_CLASSES,
    EventPlan,
    pan_gains,
    render_background,
    render_event,
)
from clap.params import ParamsError, section

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.jsonl"
CLASSES_FILE = "classes.json"
SUMMARY_FILE = "summary.json"

SPLIT_INDEX = {"train": 0, "val": 1, "test": 2}

#: Default share of each file format; uncompressed WAV is kept to a minority to bound the size.
DEFAULT_FORMATS = {"flac": 3.0, "wav_pcm16": 2.0, "ogg": 2.0, "mp3": 2.0, "wav_float": 1.0}


# ----------------------------------------------------------------------------------------------
# Configuration and summary
# ----------------------------------------------------------------------------------------------


@dataclass
class CorpusConfig:
    """Sizes and knobs of the built-in corpus; ``from_params`` reads params.yaml's ``corpus``."""

    seed: int = 3407
    captioned: dict[str, int] = field(default_factory=lambda: {"train": 240, "val": 60, "test": 60})
    labelled: dict[str, int] = field(default_factory=lambda: {"train": 160})
    clips_per_class: int = 10
    folds: int = 5
    tagging: dict[str, int] = field(default_factory=lambda: {"train": 120, "test": 40})
    min_duration: float = 1.0
    max_duration: float = 30.0
    long_fraction: float = 0.2
    duplicates: int = 4
    #: ESC-style clips all last this long (ESC-50's 5 s), clamped to [min_duration, max_duration].
    esc_duration: float = 5.0
    #: Share of captioned clips with a second, quieter sound mixed in.
    mix_fraction: float = 0.3
    stereo_fraction: float = 0.3
    sample_rates: tuple[int, ...] = (16000, 22050, 32000, 44100, 48000)
    #: Format name -> relative share (``FORMATS`` lists the names); a list means equal shares.
    formats: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FORMATS))
    #: Worker processes; 0 = one per CPU core, 1 = generate in this process.
    workers: int = 0

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "CorpusConfig":
        """Build from the whole params dict (section ``corpus``; the top-level ``seed`` is the
        fallback when ``corpus.seed`` is absent). Unknown keys are an error naming them."""
        corpus = section(params, "corpus")
        known = {
            "seed", "captioned", "labelled", "classification", "tagging", "min_duration",
            "max_duration", "long_fraction", "duplicates", "esc_duration", "mix_fraction",
            "stereo_fraction", "sample_rates", "formats", "workers",
        }
        unknown = sorted(set(corpus) - known)
        if unknown:
            raise ParamsError(f"params.yaml: unknown keys in section 'corpus': {unknown} (known: {sorted(known)})")
        default = cls()
        classification = corpus.get("classification") or {}
        unknown = sorted(set(classification) - {"clips_per_class", "folds"})
        if unknown:
            raise ParamsError(f"params.yaml: unknown keys in 'corpus.classification': {unknown} "
                              "(known: ['clips_per_class', 'folds'])")
        config = cls(
            seed=int(corpus.get("seed", params.get("seed", default.seed))),
            captioned=_split_counts(corpus.get("captioned", default.captioned), "captioned"),
            labelled=_split_counts(corpus.get("labelled", default.labelled), "labelled"),
            clips_per_class=int(classification.get("clips_per_class", default.clips_per_class)),
            folds=int(classification.get("folds", default.folds)),
            tagging=_split_counts(corpus.get("tagging", default.tagging), "tagging"),
            min_duration=float(corpus.get("min_duration", default.min_duration)),
            max_duration=float(corpus.get("max_duration", default.max_duration)),
            long_fraction=float(corpus.get("long_fraction", default.long_fraction)),
            duplicates=int(corpus.get("duplicates", default.duplicates)),
            esc_duration=float(corpus.get("esc_duration", default.esc_duration)),
            mix_fraction=float(corpus.get("mix_fraction", default.mix_fraction)),
            stereo_fraction=float(corpus.get("stereo_fraction", default.stereo_fraction)),
            sample_rates=tuple(int(r) for r in corpus.get("sample_rates", default.sample_rates)),
            formats=_format_shares(corpus.get("formats", default.formats)),
            workers=int(corpus.get("workers", default.workers)),
        )
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ParamsError naming the first bad value and what it should be."""

        def bad(key: str, why: str) -> ParamsError:
            return ParamsError(f"params.yaml: corpus.{key} {why}")

        for key in ("captioned", "labelled", "tagging"):
            counts = getattr(self, key)
            for split, count in counts.items():
                if split not in SPLIT_INDEX:
                    raise bad(f"{key}.{split}", f"is not a known split (use one of {sorted(SPLIT_INDEX)})")
                if count < 0:
                    raise bad(f"{key}.{split}", f"must be >= 0, got {count}")
        if self.clips_per_class < 0:
            raise bad("classification.clips_per_class", f"must be >= 0, got {self.clips_per_class}")
        if self.folds < 1:
            raise bad("classification.folds", f"must be >= 1, got {self.folds}")
        if not 0 < self.min_duration < self.max_duration:
            raise bad("min_duration", f"must be > 0 and below max_duration "
                                      f"({self.min_duration} vs {self.max_duration})")
        for key in ("long_fraction", "mix_fraction", "stereo_fraction"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise bad(key, f"must be within [0, 1], got {value}")
        if self.long_fraction > 0 and self.max_duration <= LONG_CLIP_SECONDS + 0.5:
            raise bad("max_duration", f"must exceed {LONG_CLIP_SECONDS + 0.5} s when long_fraction > 0")
        if self.duplicates < 0:
            raise bad("duplicates", f"must be >= 0, got {self.duplicates}")
        if not self.sample_rates or any(r < 16000 or r > 192000 for r in self.sample_rates):
            raise bad("sample_rates", f"must list rates in [16000, 192000], got {list(self.sample_rates)}")
        unknown = [f for f in self.formats if f not in FORMATS]
        if not self.formats or unknown:
            raise bad("formats", f"has unknown formats {unknown} (use any of {sorted(FORMATS)})")
        if any(share < 0 for share in self.formats.values()) or sum(self.formats.values()) <= 0:
            raise bad("formats", f"shares must be >= 0 with a positive sum, got {self.formats}")
        if self.workers < 0:
            raise bad("workers", f"must be >= 0 (0 = one per core), got {self.workers}")


def _format_shares(value: Any) -> dict[str, float]:
    if isinstance(value, dict):
        return {str(name): float(share) for name, share in value.items()}
    if isinstance(value, (list, tuple)):
        return {str(name): 1.0 for name in value}
    raise ParamsError(f"params.yaml: corpus.formats must be a list of formats or a mapping "
                      f"format -> share, got {value!r}")


def _split_counts(value: Any, key: str) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ParamsError(f"params.yaml: corpus.{key} must map split names to clip counts, got {value!r}")
    return {str(split): int(count) for split, count in value.items()}


@dataclass
class CorpusSummary:
    """What ``generate_corpus`` wrote."""

    out_dir: Path
    clips: int
    seconds: float
    bytes: int
    counts: dict[str, dict[str, int]]
    formats: dict[str, int]
    sample_rates: dict[int, int]
    channels: dict[int, int]
    long_clips: int
    duplicates: list[tuple[str, str]]
    elapsed: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The deterministic part (no timing, no absolute path), as written to summary.json."""
        data = asdict(self)
        data.pop("out_dir")
        data.pop("elapsed")
        data["seconds"] = round(self.seconds, 3)
        data["sample_rates"] = {str(k): v for k, v in sorted(self.sample_rates.items())}
        data["channels"] = {str(k): v for k, v in sorted(self.channels.items())}
        data["duplicates"] = [list(pair) for pair in self.duplicates]
        return data


# ----------------------------------------------------------------------------------------------
# Clip plans: every random draw made up front, so metadata never depends on the workers
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipPlan:
    """One file to write, and the metadata row that describes it."""

    source: str
    split: str
    clip_id: str
    task: str
    fold: int | None
    duration: float
    sample_rate: int
    channels: int
    fmt: str
    background: str  # one of BACKGROUNDS
    background_level: str  # one of BACKGROUND_LEVELS (how captions describe it)
    background_db: float  # RMS level, dBFS
    events: tuple[EventPlan, ...]
    seed_key: tuple[int, ...]
    captions: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.source}/{self.clip_id}"

    @property
    def file(self) -> str:
        return f"{self.source}/{self.split}/{self.clip_id}.{FORMATS[self.fmt].ext}"

    def metadata(self) -> dict[str, Any]:
        return {
            "id": self.id, "source": self.source, "split": self.split, "file": self.file,
            "captions": list(self.captions), "labels": list(self.labels), "fold": self.fold,
            "task": self.task,
        }


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

_SETS = {  # source -> (set index for seeds, task)
    "builtin_captions": (0, "retrieval"),
    "builtin_labels": (1, "pretrain"),
    "builtin_esc": (2, "classification"),
    "builtin_tags": (3, "tagging"),
}


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def _spread(rng: np.random.Generator, options: Sequence[Any], count: int,
            shares: Sequence[float] | None = None) -> list[Any]:
    """``count`` picks in random order that use each option in proportion to its share (equal
    shares by default), as closely as whole numbers allow."""
    weights = np.ones(len(options)) if shares is None else np.asarray(shares, dtype=float)
    ideal = count * weights / weights.sum()
    whole = np.floor(ideal).astype(int)
    for i in np.argsort(-(ideal - whole), kind="stable")[: count - whole.sum()]:
        whole[i] += 1  # largest remainders get the leftover picks
    picks = [option for option, k in zip(options, whole, strict=True) for _ in range(k)]
    return [picks[i] for i in rng.permutation(count)]


def _event_span(rng: np.random.Generator, duration: float, long_clip: bool,
                min_share: float = 0.45) -> tuple[float, float]:
    """(start, length) in seconds. In a long clip the event fills at most 40 % of it."""
    if long_clip:
        length = rng.uniform(1.5, min(6.0, 0.4 * duration))
    elif rng.random() < 0.45:
        length = duration
    else:
        length = rng.uniform(min_share, 0.9) * duration
    return float(rng.uniform(0.0, duration - length)), float(length)


def _draw_event(rng: np.random.Generator, sound: str, span: tuple[float, float], gain_db: float) -> EventPlan:
    return EventPlan(
        sound=sound, start=round(span[0], 4), length=round(span[1], 4), gain_db=round(gain_db, 2),
        pitch=round(_log_uniform(rng, 0.75, 1.33), 4), rate=round(_log_uniform(rng, 0.6, 1.6), 4),
        pan=round(float(rng.uniform(-0.6, 0.6)), 3),
    )


class _SplitPlanner:
    """Draws the per-split spreads (formats, rates, long clips) and the per-clip basics."""

    def __init__(self, config: CorpusConfig, source: str, split: str, count: int, long_fraction: float) -> None:
        self.config, self.source, self.split = config, source, split
        self.set_index, self.task = _SETS[source]
        rng = _rng(config.seed, self.set_index, SPLIT_INDEX[split])
        formats = _writable_formats(config.formats)
        self.formats = _spread(rng, list(formats), count, list(formats.values()))
        self.rates = _spread(rng, config.sample_rates, count)
        self.sounds = _spread(rng, [c.name for c in SOUND_CLASSES], count)
        n_long = round(long_fraction * count)
        self.long = _spread(rng, [True] * n_long + [False] * (count - n_long), count) if count else []

    def clip_rng(self, index: int, purpose: int) -> np.random.Generator:
        return _rng(self.config.seed, self.set_index, SPLIT_INDEX[self.split], index, purpose)

    def duration(self, rng: np.random.Generator, index: int) -> float:
        cfg = self.config
        if self.long[index]:
            return round(_log_uniform(rng, max(LONG_CLIP_SECONDS + 0.5, cfg.min_duration), cfg.max_duration), 3)
        return round(_log_uniform(rng, cfg.min_duration, min(LONG_CLIP_SECONDS, cfg.max_duration)), 3)

    def clip(self, index: int, rng: np.random.Generator, duration: float, events: list[EventPlan],
             fold: int | None = None) -> ClipPlan:
        level = str(rng.choice(BACKGROUND_LEVELS, p=[0.35, 0.4, 0.25]))
        # Noise sits a drawn distance below the loudest event's peak, so the event stays audible
        # ("faint ... against a noisy background" is hard, not inaudible).
        loudest = max(event.gain_db for event in events)
        below = {"clean": None, "light": rng.uniform(30.0, 40.0), "heavy": rng.uniform(16.0, 24.0)}[level]
        background_db = -72.0 if below is None else min(-24.0, loudest - below)
        return ClipPlan(
            source=self.source, split=self.split, clip_id=f"{self.split}_{index:04d}", task=self.task,
            fold=fold, duration=duration, sample_rate=int(self.rates[index]),
            channels=2 if rng.random() < self.config.stereo_fraction else 1, fmt=self.formats[index],
            background=str(rng.choice(BACKGROUNDS)), background_level=level,
            background_db=round(float(background_db), 2),
            events=tuple(events), seed_key=(self.set_index, SPLIT_INDEX[self.split], index, 1),
        )


def _distinct_sounds(rng: np.random.Generator, k: int, first: str | None = None) -> list[str]:
    names = [c.name for c in SOUND_CLASSES]
    picked = [first] if first else []
    rest = [name for name in rng.permutation(names) if name not in picked]
    return picked + [str(name) for name in rest[: k - len(picked)]]


def _plan_captioned(config: CorpusConfig, split: str, count: int) -> list[ClipPlan]:
    planner = _SplitPlanner(config, "builtin_captions", split, count, config.long_fraction)
    plans = []
    for i in range(count):
        rng = planner.clip_rng(i, 0)
        duration = planner.duration(rng, i)
        gain = rng.uniform(-20.0, -3.0)
        events = [_draw_event(rng, planner.sounds[i], _event_span(rng, duration, planner.long[i]), gain)]
        if rng.random() < config.mix_fraction:
            second = _distinct_sounds(rng, 2, planner.sounds[i])[1]
            span = _event_span(rng, duration, planner.long[i], min_share=0.25)
            events.append(_draw_event(rng, second, span, max(-32.0, gain - rng.uniform(4.0, 10.0))))
        plan = planner.clip(i, rng, duration, events)
        captions = _captions(plan, planner.clip_rng(i, 2))
        labels = tuple(dict.fromkeys(CLASS_BY_NAME[e.sound].label for e in events))
        plans.append(_with_text(plan, captions, labels))
    return plans


def _plan_mixture(config: CorpusConfig, source: str, split: str, count: int, sizes: Sequence[int],
                  weights: Sequence[float], min_share: float) -> list[ClipPlan]:
    """Label-only clips with 1-3 (labels) or 2-3 (tags) classes mixed."""
    planner = _SplitPlanner(config, source, split, count, config.long_fraction)
    plans = []
    for i in range(count):
        rng = planner.clip_rng(i, 0)
        duration = planner.duration(rng, i)
        k = int(rng.choice(sizes, p=weights))
        events = [
            _draw_event(rng, sound, _event_span(rng, duration, planner.long[i], min_share), rng.uniform(-18.0, -4.0))
            for sound in _distinct_sounds(rng, k)
        ]
        plan = planner.clip(i, rng, duration, events)
        plans.append(_with_text(plan, (), tuple(CLASS_BY_NAME[e.sound].label for e in events)))
    return plans


def _plan_esc(config: CorpusConfig) -> list[ClipPlan]:
    count = config.clips_per_class * len(SOUND_CLASSES)
    planner = _SplitPlanner(config, "builtin_esc", "test", count, 0.0)
    duration = min(max(config.esc_duration, config.min_duration), config.max_duration)
    plans = []
    for c, sound in enumerate(SOUND_CLASSES):
        for j in range(config.clips_per_class):
            i = c * config.clips_per_class + j
            rng = planner.clip_rng(i, 0)
            event = _draw_event(rng, sound.name, _event_span(rng, duration, False, 0.6), rng.uniform(-18.0, -3.0))
            plan = planner.clip(i, rng, duration, [event], fold=j % config.folds + 1)
            plans.append(_with_text(plan, (), (sound.label,)))
    return plans


def _captions(plan: ClipPlan, rng: np.random.Generator) -> tuple[str, ...]:
    return write_captions(plan.events, plan.duration, plan.background, plan.background_level, rng)


def _with_text(plan: ClipPlan, captions: Sequence[str], labels: Sequence[str]) -> ClipPlan:
    return replace(plan, captions=tuple(captions), labels=tuple(labels))


def plan_corpus(config: CorpusConfig) -> tuple[list[ClipPlan], list[tuple[ClipPlan, ClipPlan]]]:
    """All clips to render, and the (copy, original) pairs of planted duplicates."""
    plans: list[ClipPlan] = []
    for split, count in config.captioned.items():
        plans += _plan_captioned(config, split, count)
    for split, count in config.labelled.items():
        plans += _plan_mixture(config, "builtin_labels", split, count, (1, 2, 3), (0.5, 0.3, 0.2), 0.3)
    plans += _plan_esc(config)
    for split, count in config.tagging.items():
        plans += _plan_mixture(config, "builtin_tags", split, count, (2, 3), (0.6, 0.4), 0.5)
    return plans, _plan_duplicates(config, plans)


def _plan_duplicates(config: CorpusConfig, plans: list[ClipPlan]) -> list[tuple[ClipPlan, ClipPlan]]:
    """Copies of evaluation clips under new ids in train splits (captions/train, labels/train)."""
    if config.duplicates == 0:
        return []
    originals = [p for p in plans if p.split != "train" and p.source in ("builtin_captions", "builtin_esc")]
    train_sizes = {"builtin_captions": config.captioned, "builtin_labels": config.labelled}
    targets = [source for source, sizes in train_sizes.items() if "train" in sizes]
    if not originals or not targets:
        log.warning("corpus: cannot plant %d duplicates (needs an eval split and a train split); planting none",
                    config.duplicates)
        return []
    if config.duplicates > len(originals):
        log.warning("corpus: only %d eval clips to duplicate, %d asked", len(originals), config.duplicates)
    rng = _rng(config.seed, 9, 0)
    picks = sorted(rng.choice(len(originals), size=min(config.duplicates, len(originals)), replace=False))
    next_index = {source: train_sizes[source]["train"] for source in targets}
    pairs = []
    for k, pick in enumerate(picks):
        original, target = originals[int(pick)], targets[k % len(targets)]
        index = next_index[target]
        next_index[target] += 1
        copy = replace(original, source=target, split="train", clip_id=f"train_{index:04d}",
                       task=_SETS[target][1], fold=None)
        labels = tuple(dict.fromkeys(CLASS_BY_NAME[e.sound].label for e in original.events))
        captions = _captions(copy, _rng(config.seed, 9, 1, k)) if target == "builtin_captions" else ()
        pairs.append((_with_text(copy, captions, labels), original))
    return pairs


# ----------------------------------------------------------------------------------------------
# Rendering and writing
# ----------------------------------------------------------------------------------------------


def render_clip(plan: ClipPlan, seed: int) -> np.ndarray:
    """The clip's samples, float32 shaped (frames, channels), peak below 1."""
    rng = _rng(seed, *plan.seed_key)
    sr = plan.sample_rate
    n = max(1, round(plan.duration * sr))
    audio = render_background(plan.background, plan.background_db, n, sr, plan.channels, rng)
    for event in plan.events:
        start = min(n - 1, round(event.start * sr))
        length = max(1, min(n - start, round(event.length * sr)))
        sound = render_event(event, length, sr, rng)
        audio[:, start : start + length] += pan_gains(event.pan, plan.channels)[:, None] * sound
    peak = np.abs(audio).max()
    if peak > 0.98:
        audio *= 0.98 / peak
    return np.ascontiguousarray(audio.T, dtype=np.float32)


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
def _can_write(fmt: str) -> bool:
    try:
        encode_audio(np.zeros((1600, 1), dtype=np.float32), 16000, fmt)
        return True
    except Exception as exc:  # libsndfile builds without LAME/Vorbis raise various errors
        log.warning("corpus: this libsndfile cannot write %s (%s); using FLAC instead", fmt, exc)
        return False


def _writable_formats(formats: dict[str, float]) -> dict[str, float]:
    """The shares with any format this libsndfile cannot write moved over to FLAC."""
    usable: dict[str, float] = {}
    for fmt, share in formats.items():
        target = fmt if _can_write(fmt) else "flac"
        usable[target] = usable.get(target, 0.0) + share
    return {fmt: share for fmt, share in usable.items() if share > 0}


def _write_clip(job: tuple[ClipPlan, int, str]) -> tuple[str, int, float]:
    """Worker: render and write one clip; returns (relative file, bytes, seconds)."""
    plan, seed, out_dir = job
    path = Path(out_dir) / plan.file
    try:
        samples = render_clip(plan, seed)
        serial = int(_rng(seed, *plan.seed_key[:-1], 3).integers(1, 2**31))
        data = encode_audio(samples, plan.sample_rate, plan.fmt, serial)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}"
        raise RuntimeError(f"{path}: could not write clip {plan.id} as {plan.fmt} ({why})") from exc
    return plan.file, len(data), len(samples) / plan.sample_rate


def _worker_count(config: CorpusConfig, jobs: int) -> int:
    workers = config.workers or os.cpu_count() or 1
    return max(1, min(workers, jobs))


def generate_corpus(out_dir: Path, config: CorpusConfig, progress: bool = True) -> CorpusSummary:
    """Write the corpus into ``out_dir`` (which must be empty or absent) and return its summary.

    With more than one worker, clips are written by processes started with ``spawn`` (safe next to
    threads that torch, Ray or Prefect may hold); a script calling this therefore needs the usual
    ``if __name__ == "__main__":`` guard.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    config.validate()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir}: output folder is not empty (remove it or pass an empty folder)")
    out_dir.mkdir(parents=True, exist_ok=True)
    plans, duplicates = plan_corpus(config)
    jobs = [(plan, config.seed, str(out_dir)) for plan in plans]
    workers = _worker_count(config, len(jobs))
    log.info("corpus: writing %d clips to %s with %d worker(s)", len(plans), out_dir, workers)
    results: list[tuple[str, int, float]] = []
    with tqdm(total=len(jobs), desc="corpus", unit="clip", disable=not progress) as bar:
        if workers == 1:
            for job in jobs:
                results.append(_write_clip(job))
                bar.update()
        else:
            # spawn, not fork: the caller may hold threads (torch, ray) that fork would copy badly.
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                for result in pool.map(_write_clip, jobs, chunksize=4):
                    results.append(result)
                    bar.update()
    sizes = {file: (nbytes, seconds) for file, nbytes, seconds in results}
    for copy, original in duplicates:
        shutil.copyfile(out_dir / original.file, out_dir / copy.file)
        sizes[copy.file] = sizes[original.file]
    rows = sorted(plans + [copy for copy, _ in duplicates], key=lambda p: p.id)
    _write_metadata(out_dir, rows)
    summary = CorpusSummary(
        out_dir=out_dir,
        clips=len(rows),
        seconds=sum(sizes[p.file][1] for p in rows),
        bytes=sum(sizes[p.file][0] for p in rows),
        counts=_counts(rows),
        formats=dict(sorted(Counter(p.fmt for p in rows).items())),
        sample_rates=dict(sorted(Counter(p.sample_rate for p in rows).items())),
        channels=dict(sorted(Counter(p.channels for p in rows).items())),
        long_clips=sum(p.duration > LONG_CLIP_SECONDS for p in rows),
        duplicates=[(copy.id, original.id) for copy, original in duplicates],
        elapsed=time.perf_counter() - started,
    )
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary


def _counts(rows: Sequence[ClipPlan]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        counts.setdefault(row.source, {}).setdefault(row.split, 0)
        counts[row.source][row.split] += 1
    return counts


def _write_metadata(out_dir: Path, rows: Sequence[ClipPlan]) -> None:
    with (out_dir / METADATA_FILE).open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row.metadata(), ensure_ascii=False) + "\n")
    classes = [{"name": c.name, "label": c.label, "keywords": list(c.keywords)} for c in SOUND_CLASSES]
    (out_dir / CLASSES_FILE).write_text(json.dumps(classes, indent=2) + "\n")


def read_metadata(out_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``<out_dir>/metadata.jsonl``; a missing file says which stage writes it."""
    path = Path(out_dir) / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: corpus metadata not found (run: python -m clap.stages.corpus)")
    with path.open() as fh:
        return [json.loads(line) for line in fh if line.strip()]
