"""Sound classes of the built-in corpus and the rendering of sound events.

Each class is a ``SoundClass``: a synthesiser (clap.corpus.synth) plus the words captions may use
for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clap.corpus import portable, synth
from clap.corpus.synth import BACKGROUNDS, render_background

__all__ = ["BACKGROUNDS", "CLASS_BY_NAME", "SOUND_CLASSES", "EventPlan", "SoundClass", "class_labels",
           "pan_gains", "render_background", "render_event"]


@dataclass(frozen=True)
class SoundClass:
    """One class: how it sounds (``synth``) and the words captions may use for it.

    subjects: noun phrases with their grammatical number: ``a`` (singular, takes a/an), ``mass``
    (no article, singular verb) or ``plural``. verbs: (singular form, plural form) pairs.
    pitch_words / rate_words: adjectives / adverbs for the low|mid|high and slow|mid|fast draws.
    """

    name: str
    label: str
    keywords: tuple[str, ...]
    subjects: tuple[tuple[str, str], ...]
    verbs: tuple[tuple[str, str], ...]
    gerunds: tuple[str, ...]
    pitch_words: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]
    rate_words: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]
    synth: synth.Synth


_SLOW_FAST = (("slowly", "lazily"), ("steadily", "repeatedly"), ("rapidly", "quickly"))

SOUND_CLASSES: tuple[SoundClass, ...] = (
    SoundClass(
        "siren", "siren", ("siren",),
        (("siren", "a"), ("emergency siren", "a"), ("police siren", "a"), ("ambulance siren", "a")),
        (("wails", "wail"), ("blares", "blare"), ("sweeps up and down", "sweep up and down")),
        ("wailing", "blaring", "sounding"),
        (("low", "deep"), ("",), ("high-pitched", "shrill")),
        (("slowly", "in long slow sweeps"), ("steadily",), ("rapidly", "in fast sweeps")),
        synth.siren,
    ),
    SoundClass(
        "engine", "engine humming", ("engine", "motor"),
        (("engine", "a"), ("car engine", "a"), ("motor", "a"), ("diesel engine", "a")),
        (("hums", "hum"), ("idles", "idle"), ("rumbles", "rumble"), ("runs", "run")),
        ("humming", "idling", "running", "rumbling"),
        (("deep", "low"), ("",), ("high-revving", "whining")),
        (("smoothly", "evenly"), ("steadily",), ("roughly", "with a rapid throb")),
        synth.engine,
    ),
    SoundClass(
        "rain", "rain", ("rain",),
        (("rain", "mass"), ("rainfall", "mass"), ("rain shower", "a")),
        (("falls", "fall"), ("patters", "patter"), ("pours down", "pour down")),
        ("falling", "pattering", "pouring down"),
        (("dull", "muffled"), ("",), ("crisp", "bright")),
        (("gently", "lightly"), ("steadily",), ("heavily", "hard")),
        synth.rain,
    ),
    SoundClass(
        "bell", "church bell", ("bell",),
        (("bell", "a"), ("church bell", "a"), ("bell tower", "a"), ("large bell", "a")),
        (("rings", "ring"), ("tolls", "toll"), ("chimes", "chime")),
        ("ringing", "tolling", "chiming"),
        (("deep", "low"), ("",), ("high", "bright")),
        (("slowly",), ("repeatedly", "steadily"), ("rapidly", "quickly")),
        synth.bell,
    ),
    SoundClass(
        "clock_tick", "clock ticking", ("clock",),
        (("clock", "a"), ("wall clock", "a"), ("mechanical clock", "a"), ("old clock", "a")),
        (("ticks", "tick"), ("ticks away", "tick away"), ("tick-tocks", "tick-tock")),
        ("ticking", "ticking away", "tick-tocking"),
        (("dull", "heavy"), ("",), ("sharp", "crisp")),
        _SLOW_FAST,
        synth.clock_tick,
    ),
    SoundClass(
        "whistle", "whistle", ("whistle",),
        (("whistle", "a"), ("referee's whistle", "a"), ("tin whistle", "a"), ("steam whistle", "a")),
        (("blows", "blow"), ("sounds", "sound"), ("toots", "toot")),
        ("blowing", "sounding", "tooting"),
        (("low", "low-toned"), ("",), ("shrill", "high-pitched")),
        (("in long blasts", "slowly"), ("in steady blasts", "repeatedly"), ("in short blasts", "rapidly")),
        synth.whistle,
    ),
    SoundClass(
        "dog_bark", "dog barking", ("dog", "hound"),
        (("dog", "a"), ("guard dog", "a"), ("neighbour's dog", "a"), ("hound", "a")),
        (("barks", "bark"), ("woofs", "woof"), ("yelps", "yelp")),
        ("barking", "woofing", "yelping"),
        (("big", "deep-voiced"), ("",), ("small", "high-pitched")),
        (("now and then", "slowly"), ("repeatedly",), ("rapidly", "excitedly")),
        synth.dog_bark,
    ),
    SoundClass(
        "drum", "drum", ("drum",),
        (("drum", "a"), ("bass drum", "a"), ("kick drum", "a"), ("drums", "plural")),
        (("thumps", "thump"), ("beats", "beat"), ("booms", "boom")),
        ("thumping", "beating", "booming"),
        (("deep", "low"), ("",), ("tight", "high-tuned")),
        (("slowly", "in a slow rhythm"), ("steadily", "in a steady rhythm"), ("rapidly", "in a fast rhythm")),
        synth.drum,
    ),
    SoundClass(
        "water_drip", "water dripping", ("water", "tap", "faucet", "drip", "drop"),
        (("water", "mass"), ("leaky tap", "a"), ("water drops", "plural"), ("faucet", "a")),
        (("drips", "drip"), ("plinks", "plink")),
        ("dripping", "plinking"),
        (("low", "dull"), ("",), ("high", "bright")),
        (("slowly", "every so often"), ("steadily",), ("rapidly", "quickly")),
        synth.water_drip,
    ),
    SoundClass(
        "wind", "wind", ("wind", "breeze"),
        (("wind", "mass"), ("breeze", "a"), ("gusty wind", "mass")),
        (("blows", "blow"), ("howls", "howl"), ("gusts", "gust"), ("whooshes", "whoosh")),
        ("blowing", "howling", "gusting"),
        (("low", "rumbling"), ("",), ("thin", "airy")),
        (("slowly", "gently"), ("steadily",), ("in quick gusts", "restlessly")),
        synth.wind,
    ),
    SoundClass(
        "alarm", "alarm beeping", ("alarm",),
        (("alarm", "a"), ("alarm clock", "a"), ("smoke alarm", "a"), ("electronic alarm", "a")),
        (("beeps", "beep"), ("bleeps", "bleep"), ("goes off", "go off")),
        ("beeping", "bleeping", "going off"),
        (("low", "low-pitched"), ("",), ("shrill", "high-pitched")),
        (("slowly",), ("steadily", "repeatedly"), ("rapidly", "insistently")),
        synth.alarm,
    ),
    SoundClass(
        "birds", "birds chirping", ("bird",),
        (("birds", "plural"), ("bird", "a"), ("songbird", "a"), ("small birds", "plural")),
        (("chirps", "chirp"), ("tweets", "tweet"), ("sings", "sing")),
        ("chirping", "tweeting", "singing"),
        (("low", "low-voiced"), ("",), ("high", "piercing")),
        (("slowly", "now and then"), ("steadily",), ("rapidly", "busily")),
        synth.birds,
    ),
    SoundClass(
        "crickets", "crickets chirping", ("cricket", "insect"),
        (("crickets", "plural"), ("cricket", "a"), ("insects", "plural")),
        (("chirps", "chirp"), ("trills", "trill"), ("chirrups", "chirrup")),
        ("chirping", "trilling", "chirruping"),
        (("low", "deep-toned"), ("",), ("high-pitched", "piercing")),
        (("slowly", "lazily"), ("steadily",), ("rapidly", "busily")),
        synth.crickets,
    ),
)

CLASS_BY_NAME: dict[str, SoundClass] = {c.name: c for c in SOUND_CLASSES}


def class_labels() -> list[str]:
    """Human labels of all classes, in class order (what zero-shot prompts use)."""
    return [c.label for c in SOUND_CLASSES]


# ----------------------------------------------------------------------------------------------
# Events
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventPlan:
    """One sound in a clip: its class, where it sits (seconds) and how it sounds."""

    sound: str
    start: float
    length: float
    gain_db: float  # peak level, dBFS
    pitch: float
    rate: float
    pan: float  # -1 left .. 1 right (stereo files only)


def render_event(event: EventPlan, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` mono samples of the event's sound at its peak level, with short fades at both ends."""
    sound = CLASS_BY_NAME[event.sound].synth(n, sr, rng, event.pitch, event.rate)
    sound = sound / (np.abs(sound).max() + 1e-12)
    fade = min(int(0.1 * sr), n // 5)
    if fade > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
        sound[:fade] *= ramp
        sound[n - fade :] *= ramp[::-1]
    return sound * portable.db_to_gain(event.gain_db)


def pan_gains(pan: float, channels: int) -> np.ndarray:
    """Per-channel gains: constant-power panning for stereo (unity in the centre), 1 for mono."""
    if channels == 1:
        return np.ones(1)
    angle = (pan + 1.0) * np.pi / 4.0
    return np.array([np.cos(angle), np.sin(angle)]) * np.sqrt(2.0)
