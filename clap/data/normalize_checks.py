"""The normalize stage's Great Expectations suite, checked on the written files' headers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from clap.audio import audio_info

if TYPE_CHECKING:
    from clap.data.normalize import ClipResult, NormalizeConfig


def validation_frame(results: Iterable[ClipResult]) -> "Any":
    """One row per written clip, read back from the FLAC headers, for the GX suite."""
    import pandas as pd

    records = []
    for r in results:
        if not r.ok:
            continue
        assert r.row is not None
        path = Path(r.row.path)
        exists = path.is_file()
        duration, sr, channels = audio_info(path) if exists else (float("nan"), 0, 0)
        records.append(
            {
                "id": r.id,
                "path": str(path),
                "file_exists": exists,
                "sample_rate": sr,
                "channels": channels,
                "duration": duration,
                "manifest_duration": r.row.duration,
                "finite": r.finite,
            }
        )
    columns = ["id", "path", "file_exists", "sample_rate", "channels", "duration", "manifest_duration", "finite"]
    return pd.DataFrame.from_records(records, columns=columns)


def normalize_expectations(cfg: NormalizeConfig) -> list:
    """The GX suite for the normalised set (checked on the written files' headers)."""
    import great_expectations.expectations as gxe

    # resampling may add up to one output sample to a clip that sat exactly on a limit
    slack = 1.0 / cfg.sample_rate
    return [
        gxe.ExpectColumnValuesToBeUnique(column="id"),
        gxe.ExpectColumnValuesToBeInSet(column="file_exists", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="sample_rate", value_set=[cfg.sample_rate]),
        gxe.ExpectColumnValuesToBeInSet(column="channels", value_set=[1]),
        gxe.ExpectColumnValuesToBeBetween(
            column="duration", min_value=max(0.0, (cfg.min_duration or 0.0) - slack), strict_min=not cfg.min_duration,
            max_value=cfg.max_duration + slack
        ),
        gxe.ExpectColumnValuesToBeInSet(column="finite", value_set=[True]),
    ]
