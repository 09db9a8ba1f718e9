"""End to end: `dvc repro` of the data stages in a temporary copy of the repository."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from clap.data.manifest import read_manifest
from tests.repo_copy import TINY_CORPUS, copy_repo, run

DATA_STAGES = ["corpus", "ingest", "normalize", "captions", "shards"]

pytestmark = pytest.mark.slow


def _ran_stages(output: str) -> set[str]:
    return {stage for stage in DATA_STAGES if f"Running stage '{stage}'" in output}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = copy_repo(tmp_path_factory.mktemp("repo") / "clap", TINY_CORPUS)
    result = run(["dvc", "repro", "shards"], root)
    assert _ran_stages(result.stdout) == set(DATA_STAGES), result.stdout
    return root


def test_data_stages_build_validated_shards(repo: Path) -> None:
    manifest = read_manifest(repo / "data/manifest/captions.jsonl")
    assert manifest, "captions manifest is empty"
    assert all(row.sample_rate == 48000 and row.channels == 1 for row in manifest)
    # label-only rows got template captions
    labelled = [r for r in manifest if r.labels and not r.captions]
    assert labelled and all(r.augmented.get("template") for r in labelled)

    ingest = json.loads((repo / "reports/data/ingest.json").read_text())
    assert ingest["overlap"]["dropped"] >= 1, "planted duplicates were not excluded from training"

    index = json.loads((repo / "data/shards/index.json").read_text())
    assert index
    tars = sorted((repo / "data/shards").rglob("*.tar"))
    assert tars
    sizes = json.loads((tars[0].parent / "sizes.json").read_text())
    assert sizes[tars[0].name] >= 1
    with tarfile.open(tars[0]) as tar:
        names = tar.getnames()
    assert any(n.endswith(".flac") for n in names) and any(n.endswith(".json") for n in names)
    total = sum(sum(json.loads(p.read_text()).values()) for p in (repo / "data/shards").rglob("sizes.json"))
    assert total == len(manifest)


def test_second_repro_does_nothing(repo: Path) -> None:
    result = run(["dvc", "repro", "shards"], repo)
    assert _ran_stages(result.stdout) == set(), result.stdout
    status = run(["dvc", "status", "shards"], repo)
    assert "changed" not in status.stdout, status.stdout


def test_caption_param_reruns_only_captions_and_shards(repo: Path) -> None:
    # edit params.yaml like a user would
    params = repo / "params.yaml"
    text = params.read_text()
    assert "the sound of {labels}" in text
    params.write_text(text.replace("the sound of {labels}", "a recording of {labels}"))
    result = run(["dvc", "repro", "shards"], repo)
    assert _ran_stages(result.stdout) == {"captions", "shards"}, result.stdout
    manifest = read_manifest(repo / "data/manifest/captions.jsonl")
    templated = [c for r in manifest for c in r.augmented.get("template", [])]
    assert templated and all(c.startswith("a recording of ") for c in templated)


def test_renamed_zero_shot_set_reproduces_with_its_report_folders(repo: Path) -> None:
    """eval_zeroshot's outputs do not depend on set names: renaming the set in params (as a user adding
    a set would) re-runs the stage cleanly. A tiny random model stands in for the train stage's."""
    import yaml

    from tests.tiny_clap import save_tiny_model

    save_tiny_model(repo / "data/models/clap", fusion=False)
    (repo / "reports/eval/zeroshot/builtin_esc").mkdir(parents=True, exist_ok=True)  # left by an old run
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["eval_zeroshot"]["sets"] = [{"name": "esc_renamed", "shards": "builtin_esc/test"}]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro", "--single-item", "eval_zeroshot"], repo)
    metrics = json.loads((repo / "reports/eval/zeroshot.json").read_text())
    assert metrics["esc_renamed.complete"] is True and metrics["esc_renamed.classes_expected"] == 13
    assert (repo / "reports/eval/zeroshot_plots/esc_renamed/confusion.png").is_file()
    assert (repo / "reports/eval/zeroshot/esc_renamed/dropped.csv").is_file()
    assert not (repo / "reports/eval/zeroshot/builtin_esc").exists()  # the old set's folder is gone
    assert "esc_renamed.top1" in run(["dvc", "metrics", "show"], repo).stdout
