"""A result follows its inputs: after a full repro, a changed caption template makes `dvc repro`
train a new CLAP model from the new captions, and fine-tune a new model from that one (never a
finished Ray run handed back under an old name)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from tests.repo_copy import copy_repo, run, tiny_pipeline

pytestmark = pytest.mark.slow


def tree_digest(folder: Path) -> str:
    """sha256 over every file of a model folder (relative path + bytes)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_changed_template_retrains_clap_and_finetune(tmp_path: Path) -> None:
    repo = copy_repo(tmp_path / "clap", tiny_pipeline())
    run(["dvc", "repro", "finetune"], repo, timeout=1500)
    clap_before = tree_digest(repo / "data/models/clap")
    finetune_before = tree_digest(repo / "data/models/finetune")

    params_path = repo / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["captions"]["template"] = "a recording of {labels}"
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    second = run(["dvc", "repro", "finetune"], repo, timeout=1500)

    output = second.stdout + second.stderr
    for stage in ("captions", "shards", "train", "finetune"):
        assert f"Running stage '{stage}'" in output, (stage, output[-3000:])
    assert "resumed from" not in output, output[-3000:]
    assert tree_digest(repo / "data/models/clap") != clap_before
    assert tree_digest(repo / "data/models/finetune") != finetune_before
    runs = [p.name for p in (repo / "data/ray").iterdir() if p.name.startswith("clap-")]
    assert len(runs) == 1, runs  # the finished first run was pruned (keep_runs: 1), not reused
