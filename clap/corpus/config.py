"""The corpus's sizes and knobs (params.yaml, section ``corpus``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clap.corpus.captions import LONG_CLIP_SECONDS
from clap.corpus.encode import FORMATS
from clap.params import ParamsError, check_keys, load_section, section

SPLIT_INDEX = {"train": 0, "val": 1, "test": 2}

#: Default share of each file format; uncompressed WAV is kept to a minority to bound the size.
DEFAULT_FORMATS = {"flac": 3.0, "wav_pcm16": 2.0, "ogg": 2.0, "mp3": 2.0, "wav_float": 1.0}


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
        """Build from the whole params dict (section ``corpus`` only: the top-level ``seed`` is the
        training seed, so a seed sweep never regenerates the data). Unknown keys are an error naming them."""
        corpus = section(params, "corpus")
        classification = corpus.get("classification") or {}
        check_keys(classification, ("clips_per_class", "folds"), "params.yaml corpus.classification")
        config = load_section(
            params, "corpus", cls, required=True, fixed=classification, fixed_at="corpus.classification",
            ignore=("classification",),
            parsers={"formats": _format_shares},
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

