"""Captions for built-in corpus clips, written from the clip's draws so that they describe what is
audible: the sound (by one of its class's nouns), its loudness, pitch and tempo, where in the clip it
happens, the background, and, in some captions, a second sound mixed in. Five captions of one clip
come from different sentence templates and word picks, like five annotators of Clotho/AudioCaps.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from clap.corpus.sounds import CLASS_BY_NAME, EventPlan, SoundClass

#: Clips longer than this count as "long" (the fusion chunk length of the reference).
LONG_CLIP_SECONDS = 10.0

#: How loud a clip's background noise is: none to speak of, well below the sound, or close to it.
BACKGROUND_LEVELS = ("clean", "light", "heavy")

_LOUD_ADJ = (("faint", "quiet", "soft", "distant"), ("",), ("loud",))
_LOUD_ADV = (("quietly", "softly", "faintly"), ("clearly", ""), ("loudly", "noisily"))
_WHOLE = ("throughout", "the whole time", "throughout the recording", "all the way through")
_WHERE = (
    ("at the beginning", "at the start", "early in the recording", "right at the start"),
    ("in the middle", "halfway through", "midway through the recording"),
    ("towards the end", "near the end", "at the end of the recording", "late in the recording"),
)
_BG_NOUN = {
    "white": ("hiss", "static", "white noise"),
    "brown": ("rumble", "low rumble"),
    "hum": ("electrical hum", "mains hum", "hum"),
}
_BG_TAIL = {
    "clean": ("in a quiet room", "with no background noise", "in silence", ""),
    "light": ("over faint {n}", "with soft {n} in the background", "against light {n}"),
    "heavy": ("over loud {n}", "against a noisy background", "with heavy {n} in the background",
              "through strong {n}"),
}
_BG_HEAD = {
    "clean": ("In a quiet room", "In near silence", "In a silent space"),
    "light": ("Over faint {n}", "With soft {n} in the background"),
    "heavy": ("Over loud {n}", "Against a noisy background", "Through heavy {n}"),
}
_BG_ONLY = {"clean": ("silence", "quiet room tone"), "light": ("faint {n}",), "heavy": ("loud {n}", "background noise")}


def _level(value: float, low: float, high: float) -> int:
    return 0 if value < low else 2 if value > high else 1


def _noun_phrase(rng: np.random.Generator, sound: SoundClass, *adjectives: str) -> tuple[str, str]:
    """(phrase with article if singular, number); adjectives that are empty are skipped."""
    noun, number = sound.subjects[rng.integers(len(sound.subjects))]
    words = " ".join([a for a in adjectives if a] + [noun])
    if number == "a":
        words = ("an " if words[0] in "aeiou" else "a ") + words
    return words, number


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return str(options[rng.integers(len(options))])


class _EventWords:
    """Random word choices for one event, drawn fresh for each caption."""

    def __init__(self, event: EventPlan, duration: float, rng: np.random.Generator) -> None:
        self.sound = CLASS_BY_NAME[event.sound]
        self.rng = rng
        self.loud = _level(event.gain_db, -15.0, -8.0)
        self.pitch = _level(event.pitch, 0.9, 1.11)
        self.rate = _level(event.rate, 0.8, 1.25)
        whole = event.length >= 0.9 * duration
        centre = (event.start + event.length / 2) / duration
        self.partial_long = duration > LONG_CLIP_SECONDS and not whole
        self.where_options = _WHOLE if whole else _WHERE[min(2, int(centre * 3))]

    def subject(self, loud: bool = True, pitch: bool = True) -> tuple[str, str]:
        adjectives = (
            _pick(self.rng, _LOUD_ADJ[self.loud]) if loud else "",
            _pick(self.rng, self.sound.pitch_words[self.pitch]) if pitch else "",
        )
        return _noun_phrase(self.rng, self.sound, *adjectives)

    def verb(self, number: str) -> str:
        singular, plural = self.sound.verbs[self.rng.integers(len(self.sound.verbs))]
        return plural if number == "plural" else singular

    def gerund_phrase(self, loud: bool = True) -> str:
        return self.gerund_phrase_and_number(loud)[0]

    def gerund_phrase_and_number(self, loud: bool = True) -> tuple[str, str]:
        subject, number = self.subject(loud=loud, pitch=self.rng.random() < 0.5)
        return f"{subject} {_pick(self.rng, self.sound.gerunds)}", number

    def rate_word(self) -> str:
        return _pick(self.rng, self.sound.rate_words[self.rate])

    def loud_adverb(self) -> str:
        return _pick(self.rng, _LOUD_ADV[self.loud])

    def where(self, brief: bool = False) -> str:
        """Where the event happens; ``brief`` lets a short event in a long clip be called brief
        (only where no other adverb comes right before)."""
        phrase = _pick(self.rng, self.where_options)
        return f"briefly {phrase}" if brief and self.partial_long and self.rng.random() < 0.5 else phrase


def write_captions(events: Sequence[EventPlan], duration: float, background: str, background_level: str,
                   rng: np.random.Generator, count: int = 5) -> tuple[str, ...]:
    """``count`` different sentences about a clip's first event (and, in some, its second one).

    duration: the clip's length in seconds; background: its noise kind (white|brown|hum);
    background_level: one of BACKGROUND_LEVELS.
    """
    main = _EventWords(events[0], duration, rng)
    other = _EventWords(events[1], duration, rng) if len(events) > 1 else None
    if background_level not in BACKGROUND_LEVELS:
        raise ValueError(f"unknown background level {background_level!r} (use one of {BACKGROUND_LEVELS})")

    def bg(table: dict[str, tuple[str, ...]]) -> str:
        return _pick(rng, table[background_level]).format(n=_pick(rng, _BG_NOUN[background]))

    def second() -> str:
        if other is None:
            return ""
        subject, number = other.subject(pitch=False)
        options = [f"while {subject} {other.verb(number)} in the background", f"as {subject} {other.verb(number)}",
                   f"and {other.gerund_phrase()} can also be heard", f"with {other.gerund_phrase()} {other.where()}"]
        if events[1].start >= events[0].start + events[0].length:
            options.append(f"followed by {other.gerund_phrase()}")
        return _pick(rng, options)

    def sentence_subject_verb() -> str:
        subject, number = main.subject()
        return f"{subject} {main.verb(number)} {main.rate_word()} {main.where()} {bg(_BG_TAIL)}"

    def sentence_sound_of() -> str:
        return f"the sound of {main.gerund_phrase()} {main.rate_word()} {main.where()} {bg(_BG_TAIL)}"

    def sentence_background_first() -> str:
        subject, number = main.subject(loud=False)
        return f"{bg(_BG_HEAD)}, {subject} {main.verb(number)} {main.loud_adverb()} {main.where()}"

    def sentence_heard() -> str:
        subject, _ = main.subject()
        return f"{subject} can be heard {main.where(brief=True)} {bg(_BG_TAIL)}"

    def sentence_there_is() -> str:
        phrase, number = main.gerund_phrase_and_number()
        verb = "are" if number == "plural" else "is"
        return f"there {verb} {phrase} {main.rate_word()} {main.where()}"

    def sentence_recording() -> str:
        manner = main.loud_adverb() if rng.random() < 0.5 else main.rate_word()
        return f"a recording of {main.gerund_phrase(loud=False)} {manner} {main.where()}"

    def sentence_mostly_background() -> str:
        return f"mostly {bg(_BG_ONLY)}, with {main.gerund_phrase()} {main.where(brief=True)}"

    templates: list[Callable[[], str]] = [sentence_subject_verb, sentence_sound_of, sentence_background_first,
                                          sentence_heard, sentence_there_is, sentence_recording]
    if main.partial_long:
        templates.append(sentence_mostly_background)
    captions: list[str] = []
    for attempt in range(60):
        if attempt % len(templates) == 0:
            templates = [templates[i] for i in rng.permutation(len(templates))]
        text = templates[attempt % len(templates)]()
        # Most captions of a two-sound clip name the second sound too (at least two of the five).
        if other is not None and (len(captions) < 2 or rng.random() < 0.5):
            text = f"{text}, {second()}"
        text = _tidy(text)
        if text not in captions:
            captions.append(text)
        if len(captions) == count:
            return tuple(captions)
    raise RuntimeError(f"could not write {count} different captions for {[e.sound for e in events]}")


def _tidy(text: str) -> str:
    text = " ".join(text.split()).replace(" ,", ",").rstrip(", ")
    return text[0].upper() + text[1:] + "."
