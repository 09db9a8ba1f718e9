"""Which evaluation clips a model may have trained on, so zero-shot leaves them out (and says why).

The overlap is by content: a clip whose sha256 (the ingest hash in the manifest; for native folders
the hash of the file) equals that of any training row of the manifest. ``exclude_ids`` adds clips
known to be in an external model's training data (clip ids, file names, file stems or sha256 hashes;
inline or in a text file, one per line).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clap.data.manifest import TRAIN_SPLITS, iter_manifest
from clap.eval.datasets import EvalClip, content_hash

log = logging.getLogger(__name__)


def read_exclude_ids(value: Sequence[str] | str | None) -> frozenset[str]:
    """``exclude_ids`` as a set of entries: inline list, or a text file (one per line, ``#`` comments)."""
    if value is None:
        return frozenset()
    if isinstance(value, str):
        path = Path(value)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: exclude_ids file not found (give a text file of ids, or a list in params.yaml)")
        lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
        return frozenset(line for line in lines if line)
    return frozenset(str(v).strip() for v in value if str(v).strip())


@dataclass
class TrainingOverlap:
    """Decides which evaluation clips must be left out because a model may have trained on them."""

    train_hashes: dict[str, str] = field(default_factory=dict)  # sha256 -> a training clip id
    known_hashes: dict[str, str] = field(default_factory=dict)  # clip id -> sha256 (ingest's)
    listed: frozenset[str] = frozenset()

    @classmethod
    def build(cls, manifest: str | Path | None, exclude_ids: Sequence[str] | str | None = None) -> "TrainingOverlap":
        """From the manifest's rows (training hashes; every row's hash by id) and ``exclude_ids``."""
        overlap = cls(listed=read_exclude_ids(exclude_ids))
        if manifest is None:
            log.warning("no manifest given: overlap with training data is checked only against exclude_ids")
            return overlap
        for row in iter_manifest(manifest):
            if not row.sha256:
                continue
            overlap.known_hashes[row.id] = row.sha256
            if row.split in TRAIN_SPLITS:
                overlap.train_hashes.setdefault(row.sha256, row.id)
        log.info("overlap check: %d training hashes from %s, %d listed exclusions", len(overlap.train_hashes),
                 manifest, len(overlap.listed))
        return overlap

    def reason(self, clip: EvalClip) -> str | None:
        """Why ``clip`` must be excluded, or None."""
        if not clip.sha256:
            clip.sha256 = self.known_hashes.get(clip.id, "")
        digest = content_hash(clip)
        if self.listed:
            names = {clip.id, clip.id.split("/", 1)[-1], digest}
            if isinstance(clip.audio, (str, Path)):  # a native file: its name may be listed too
                names |= {Path(clip.audio).name, Path(clip.audio).stem}
            hit = sorted(names & self.listed)
            if hit:
                return f"listed in exclude_ids ({hit[0]})"
        if digest and digest in self.train_hashes:
            return f"same audio as training clip {self.train_hashes[digest]} (sha256 {digest[:12]})"
        return None
