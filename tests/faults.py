"""Failures injected into training through run_training's ``step_hooks`` (the production loop only
calls the hooks it is given). Module-level and picklable: Ray workers import this module by name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FailOnce:
    """Raise once, on worker ``rank`` just before step ``step``; ``marker`` (a file) records that it did,
    so the restarted worker group runs past that step."""

    step: int
    rank: int
    marker: str

    def __call__(self, step: int, rank: int) -> None:
        marker = Path(self.marker)
        if step == self.step and rank == self.rank and not marker.exists():
            marker.write_text(f"failed once at step {step}\n")
            raise RuntimeError(f"injected failure at step {step} on rank {rank}")
