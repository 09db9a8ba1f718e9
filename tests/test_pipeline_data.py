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
