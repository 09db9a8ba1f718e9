"""Clip plans: every random draw of the corpus made up front, so metadata never depends on the workers.

Every clip is drawn from its own seed, derived from (seed, set, split, index), so a clip does not
change when another set's size does.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from clap.corpus.captions import BACKGROUND_LEVELS, LONG_CLIP_SECONDS, write_captions
from clap.corpus.config import SPLIT_INDEX, CorpusConfig
from clap.corpus.encode import FORMATS, writable_formats
from clap.corpus.sounds import BACKGROUNDS, CLASS_BY_NAME, SOUND_CLASSES, EventPlan

log = logging.getLogger(__name__)


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


_SETS = {  # source -> (set index for seeds, task)
    "builtin_captions": (0, "retrieval"),
    "builtin_labels": (1, "pretrain"),
    "builtin_esc": (2, "classification"),
    "builtin_tags": (3, "tagging"),
}


def seeded_rng(seed: int, *key: int) -> np.random.Generator:
    """The generator for one purpose of one clip, independent of every other (seed, key)."""
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
        rng = seeded_rng(config.seed, self.set_index, SPLIT_INDEX[split])
        formats = writable_formats(config.formats)
        self.formats = _spread(rng, list(formats), count, list(formats.values()))
        self.rates = _spread(rng, config.sample_rates, count)
        self.sounds = _spread(rng, [c.name for c in SOUND_CLASSES], count)
        n_long = round(long_fraction * count)
        self.long = _spread(rng, [True] * n_long + [False] * (count - n_long), count) if count else []

    def clip_rng(self, index: int, purpose: int) -> np.random.Generator:
        return seeded_rng(self.config.seed, self.set_index, SPLIT_INDEX[self.split], index, purpose)

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
    rng = seeded_rng(config.seed, 9, 0)
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
        captions = _captions(copy, seeded_rng(config.seed, 9, 1, k)) if target == "builtin_captions" else ()
        pairs.append((_with_text(copy, captions, labels), original))
    return pairs
