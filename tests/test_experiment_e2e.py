"""A user's day: the whole pipeline, then `dvc exp run -S fusion=true`, `dvc metrics diff` and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.repo_copy import TINY_CORPUS, copy_repo, deep_update, run

pytestmark = pytest.mark.slow

TINY_PIPELINE = deep_update(json.loads(json.dumps(TINY_CORPUS)), {
    "corpus": {"classification": {"clips_per_class": 2, "folds": 2}},
    "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 4, "num_workers": 1, "warmup_steps": 1},
    "eval_retrieval": {"batch_size": 8},
    "finetune": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 4, "num_workers": 1, "warmup_steps": 1,
                 "tasks": [{"name": "tags", "train_sets": ["builtin_tags/train"], "val_set": "builtin_tags/test",
                            "multi_label": True}]},
})


def test_fusion_experiment_next_to_the_baseline(tmp_path: Path) -> None:
    repo = copy_repo(tmp_path / "clap", TINY_PIPELINE)
    run(["dvc", "repro"], repo, timeout=1500)
    for name in ("train/metrics.json", "eval/retrieval.json", "eval/zeroshot.json", "finetune/metrics.json"):
        assert json.loads((repo / "reports" / name).read_text()), name
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "baseline"], repo)

    run(["dvc", "exp", "run", "-S", "fusion=true", "--name", "fusion"], repo, timeout=1500)
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], repo).stdout)
    # flat, named metrics per stage file; the fusion model trains differently, so its loss differs
    assert "final_loss" in diff.get("reports/train/metrics.json", {}), diff

    run(["python", "-m", "clap.stages.report", "--out", "reports/report.md"], repo)
    report = (repo / "reports/report.md").read_text()
    table = report[report.index("## Experiments"):]
    assert "fusion=True" in table and "fusion=False" in table, table
