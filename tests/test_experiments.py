"""The paper's tables as params variants: every row names real params keys and queues in DVC."""

from __future__ import annotations

from pathlib import Path

import pytest

from clap.experiments import check_overrides, load_table, set_args
from tests.repo_copy import REPO_ROOT, copy_repo, run

TABLES = sorted((REPO_ROOT / "experiments").glob("table*.yaml"))


@pytest.mark.parametrize("table", TABLES, ids=lambda p: p.stem)
@pytest.mark.parametrize("variant", ["cpu", "full"])
def test_every_row_overrides_existing_params(table: Path, variant: str) -> None:
    rows = load_table(table, variant)
    assert rows and len({r.name for r in rows}) == len(rows)
    check_overrides([r for r in rows if r.overrides is not None], REPO_ROOT / "params.yaml")


def test_unknown_key_is_named() -> None:
    from clap.experiments import ExperimentRow

    with pytest.raises(ValueError, match="no_such_switch"):
        check_overrides([ExperimentRow("9", "x", {"no_such_switch": 1})], REPO_ROOT / "params.yaml")


def test_set_args_are_what_dvc_expects() -> None:
    assert set_args({"fusion": True, "train_sets": ["a", "b"], "text_encoder": "minilm"}) == [
        "-S", "fusion=true", "-S", 'train_sets=["a", "b"]', "-S", "text_encoder=minilm"]


def test_queue_puts_the_cpu_rows_in_dvcs_queue(tmp_path: Path) -> None:
    repo = copy_repo(tmp_path / "clap")
    run(["python", "-m", "clap.experiments", "queue", "experiments/table3.yaml"], repo)
    status = run(["dvc", "queue", "status"], repo).stdout
    for name in ("table3-captions-only", "table3-plus-labels-template-fusion"):
        assert name in status
    assert "table3-plus-labels-k2c " not in status  # not runnable offline: skipped, not queued
