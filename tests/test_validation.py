"""GX validation results are tracked in git and by DVC: the same data must give the same bytes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from clap.data.validation import stable_result, validate_dataframe

STAMP = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\d{4}-?\d{2}-?\d{2}T\d{2}:?\d{2}")


def frame() -> pd.DataFrame:
    return pd.DataFrame({"id": ["a", "b", "c", "d"], "seconds": [1.0, 2.5, 40.0, 3.0]})


EXPECTATIONS = [
    {"type": "expect_table_row_count_to_be_between", "min_value": 1},
    {"type": "expect_column_values_to_be_unique", "column": "id"},
    {"type": "expect_column_values_to_be_between", "column": "seconds", "min_value": 0.5, "max_value": 30.0},
]


def test_the_result_json_written_twice_is_byte_identical_and_keeps_the_findings(tmp_path: Path):
    first = validate_dataframe(frame(), "demo", EXPECTATIONS, tmp_path / "one", raise_on_failure=False)
    second = validate_dataframe(frame(), "demo", EXPECTATIONS, tmp_path / "two", raise_on_failure=False)
    assert first.docs_path is not None and first.docs_path.is_file()  # the docs are still built (untracked)
    text = first.result_path.read_text()
    assert text == second.result_path.read_text()
    assert not STAMP.search(text), STAMP.search(text)
    result = json.loads(text)
    assert result["success"] is False
    failed = [r for r in result["results"] if not r["success"]]
    assert [r["expectation_config"]["type"] for r in failed] == ["expect_column_values_to_be_between"]
    assert failed[0]["result"]["partial_unexpected_list"] == [40.0]
    assert first.failures[0].rows == ["c"]


def test_stable_result_drops_only_run_stamps():
    result = {
        "success": True,
        "meta": {
            "run_id": {"run_name": None, "run_time": "2026-11-25T07:36:57.946079+00:00"},
            "validation_time": "2026-11-25T07:36:57.946079+00:00",
            "checkpoint_id": "71396c45-85ad-4ddc-8e89-62d63b2e472b",
            "batch_markers": {"ge_load_time": "20261125T073657.949282Z", "pandas_data_fingerprint": "e7be8215"},
            "great_expectations_version": "1.24.1",
        },
        "results": [{"expectation_config": {"id": "2eda800c-3d4f-4243-96a8-1d6ffbf1e765", "type": "t"},
                     "result": {"observed_value": "2026-01-01T00:00:00"}}],
    }
    assert stable_result(result) == {
        "success": True,
        "meta": {"batch_markers": {"pandas_data_fingerprint": "e7be8215"}, "great_expectations_version": "1.24.1"},
        "results": [{"expectation_config": {"type": "t"}, "result": {"observed_value": "2026-01-01T00:00:00"}}],
    }
    assert result["meta"]["checkpoint_id"]  # the input is left alone
