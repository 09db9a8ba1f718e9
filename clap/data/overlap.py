"""Train/eval overlap: a training clip that is also in an evaluation set is dropped from training.

The paper excludes overlaps by source. A clip's keys say where it came from and what it holds:

* ``same_file``: the sha256 of its file bytes (ingest);
* ``freesound_id``: the Freesound sound id its native layout carries (ESC-50 and UrbanSound8K file
  names and metadata, Clotho's ``clotho_metadata_*.csv``, a ``freesound_id`` field elsewhere);
* ``youtube_id``: the YouTube video id (AudioCaps ``youtube_id``, AudioSet-style names
  ``Y<id>``, a ``youtube_id`` field elsewhere); a whole video counts, whatever the segment;
* ``same_audio``: the sha256 of the decoded 48 kHz mono int16 samples (normalize), which catches a
  clip re-encoded losslessly (the same audio as WAV and as FLAC). A lossy re-encode or a different
  source sample rate changes the samples and is not caught by this key.

Every train row sharing a key with a val/test row (any source) is dropped; each match is one line
of the overlaps CSV (:data:`OVERLAP_COLUMNS`): the dropped row's ``id, source, split, path``, the
reason ``code`` and sentence, and the evaluation clip it matched.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from clap.data.manifest import EVAL_SPLITS, TRAIN_SPLITS, ManifestRow

#: Reason codes, in the order a row's keys are checked.
OVERLAP_CODES = ("same_file", "same_audio", "freesound_id", "youtube_id")
OVERLAP_COLUMNS = ("id", "source", "split", "path", "code", "reason", "eval_id", "eval_source", "eval_split", "key")

_YOUTUBE_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")
_FREESOUND_LINK = re.compile(r"/sounds/(\d+)")

#: A row's keys: ``(code, key)`` pairs.
KeyFn = Callable[[ManifestRow], Iterable[tuple[str, str]]]


def freesound_key(value: object) -> str | None:
    """``freesound:<id>`` from an id (``"12345"``, ``12345``) or a Freesound sound URL; None if neither."""
    text = str(value or "").strip()
    if text.isdigit():
        return f"freesound:{int(text)}"
    link = _FREESOUND_LINK.search(text)
    return f"freesound:{int(link.group(1))}" if link else None


def youtube_key(value: object) -> str | None:
    """``youtube:<id>`` from an 11-character video id, also AudioSet's ``Y<id>`` file stems; else None."""
    text = str(value or "").strip()
    if len(text) == 12 and text.startswith("Y") and _YOUTUBE_ID.match(text[1:]):
        text = text[1:]
    return f"youtube:{text}" if _YOUTUBE_ID.match(text) else None


def esc50_freesound_id(filename: str) -> str | None:
    """The Freesound id in an ESC-50 name ``{fold}-{freesound id}-{take}-{target}.wav``."""
    parts = Path(filename).stem.split("-")
    return parts[1] if len(parts) == 4 and parts[1].isdigit() else None


def record_origins(record: dict, extra: Iterable[str | None] = ()) -> tuple[str, ...]:
    """Origin keys from the usual fields of a metadata record (``freesound_id``, ``youtube_id``...)."""
    keys = [key for key in extra if key]
    for name in ("freesound_id", "fsid", "sound_id"):
        keys.append(freesound_key(record.get(name)))
    for name in ("youtube_id", "ytid", "video_id"):
        keys.append(youtube_key(record.get(name)))
    return tuple(dict.fromkeys(k for k in keys if k))


@dataclass(frozen=True)
class OverlapMatch:
    """A training row (dropped) and the evaluation row it shares ``key`` with."""

    train: ManifestRow
    eval: ManifestRow
    code: str
    key: str

    def reason(self) -> str:
        what = {
            "same_file": "the same file bytes as",
            "same_audio": "the same decoded audio (48 kHz int16 samples) as",
            "freesound_id": f"the same Freesound sound ({self.key.partition(':')[2]}) as",
            "youtube_id": f"the same YouTube video ({self.key.partition(':')[2]}) as",
        }.get(self.code, f"the same {self.code} as")
        return f"{what} evaluation clip {self.eval.id} ({self.eval.split})"

    def to_record(self) -> dict[str, str]:
        row = self.train
        return {
            "id": row.id, "source": row.source, "split": row.split, "path": row.path, "code": self.code,
            "reason": self.reason(), "eval_id": self.eval.id, "eval_source": self.eval.source,
            "eval_split": self.eval.split, "key": self.key,
        }


def find_overlaps(rows: Iterable[ManifestRow], keys: KeyFn) -> list[OverlapMatch]:
    """Every (train row, eval row, key) pair that shares a key, ordered by train id, code, eval id."""
    rows = list(rows)
    eval_rows: dict[tuple[str, str], list[ManifestRow]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: r.id):
        if row.split in EVAL_SPLITS:
            for code, key in keys(row):
                eval_rows[(code, key)].append(row)
    matches = []
    for row in sorted(rows, key=lambda r: r.id):
        if row.split not in TRAIN_SPLITS:
            continue
        for code, key in sorted(set(keys(row)), key=lambda ck: (_code_order(ck[0]), ck[1])):
            matches += [OverlapMatch(row, other, code, key) for other in eval_rows.get((code, key), [])]
    return matches


def _code_order(code: str) -> int:
    return OVERLAP_CODES.index(code) if code in OVERLAP_CODES else len(OVERLAP_CODES)


def dropped_ids(matches: Iterable[OverlapMatch]) -> set[str]:
    return {m.train.id for m in matches}


def write_overlaps(matches: Iterable[OverlapMatch], path: Path) -> int:
    """The overlaps CSV (:data:`OVERLAP_COLUMNS`), header only when nothing matched; returns the count."""
    records = [m.to_record() for m in matches]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=OVERLAP_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
    tmp.replace(path)
    return len(records)
