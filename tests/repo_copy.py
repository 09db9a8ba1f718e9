"""Copy the project into a temporary git repository, for end-to-end DVC/Prefect tests.

The copy holds the working tree's code and fixtures (so uncommitted code is what gets tested) but
the pipeline's state as committed at HEAD: params.yaml, dvc.lock and reports/. A user's own edits
to params (or the rewritten params.yaml a failed `dvc exp run` leaves behind) never reach a test.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]

#: The pipeline's state: taken from git HEAD, never from the working tree.
COMMITTED_PATHS = ("params.yaml", "dvc.lock", "reports")


def _from_head(rel: str) -> bool:
    return any(rel == path or rel.startswith(f"{path}/") for path in COMMITTED_PATHS)


def tracked_files(root: Path = REPO_ROOT) -> list[Path]:
    """Files git would commit: tracked plus untracked-but-not-ignored."""
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=root, check=True, capture_output=True,
    ).stdout.decode()
    return [Path(p) for p in out.split("\0") if p and (root / p).is_file()]


def committed_text(rel: str, root: Path = REPO_ROOT) -> str:
    """A file as committed at HEAD (``git show HEAD:<rel>``), whatever the working tree holds."""
    proc = subprocess.run(["git", "show", f"HEAD:{rel}"], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise FileNotFoundError(f"{rel}: not committed at HEAD of {root} ({proc.stderr.strip()}); commit it first")
    return proc.stdout


def committed_params(root: Path = REPO_ROOT) -> dict[str, Any]:
    """The default params: params.yaml as committed at HEAD."""
    return yaml.safe_load(committed_text("params.yaml", root))


def extract_committed(dest: Path, root: Path = REPO_ROOT) -> None:
    """Write the :data:`COMMITTED_PATHS` as committed at HEAD into ``dest`` (``git archive``)."""
    present = subprocess.run(["git", "ls-tree", "--name-only", "HEAD", "--", *COMMITTED_PATHS],
                             cwd=root, check=True, capture_output=True, text=True).stdout.split()
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD", "--", *present],
                             cwd=root, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)


def pipeline_env() -> dict[str, str]:
    """Environment for running DVC and the stages from this test process, as an activated venv would.

    pytest runs as ``.venv/bin/pytest`` without the venv being activated, so this interpreter's
    directory goes first on PATH (with VIRTUAL_ENV), the way ``source .venv/bin/activate`` puts it:
    DVC then runs dvc.yaml's ``python -m clap.stages...`` with the project's interpreter. Only for
    tests of what the pipeline, DVC and Prefect do; the README's own commands, activation included,
    run in a clean shell in tests/test_readme_commands.py.
    """
    env = dict(os.environ)
    env["VIRTUAL_ENV"] = str(Path(sys.prefix))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("GIT_AUTHOR_NAME", "test")
    env.setdefault("GIT_AUTHOR_EMAIL", "test@example.invalid")
    env.setdefault("GIT_COMMITTER_NAME", "test")
    env.setdefault("GIT_COMMITTER_EMAIL", "test@example.invalid")
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=pipeline_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed with exit code {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


def deep_update(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def copy_repo(dest: Path, params_overrides: dict[str, Any] | None = None) -> Path:
    """Copy the project into ``dest`` (code from the working tree, params/lock/reports from HEAD), apply
    params overrides, and commit it as a fresh git repo."""
    dest.mkdir(parents=True, exist_ok=True)
    extract_committed(dest)
    for rel in tracked_files():
        if _from_head(rel.as_posix()):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, target)
    if params_overrides:
        params_path = dest / "params.yaml"
        params = yaml.safe_load(params_path.read_text())
        params_path.write_text(yaml.safe_dump(deep_update(params, params_overrides), sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "test copy"], dest)
    return dest


#: A corpus small enough for an end-to-end run in CI.
TINY_CORPUS = {
    "corpus": {
        "captioned": {"train": 16, "val": 6, "test": 6},
        "labelled": {"train": 8},
        "classification": {"clips_per_class": 1, "folds": 1},
        "tagging": {"train": 6, "test": 4},
        "max_duration": 14.0,
        "duplicates": 2,
    },
    "shards": {"samples_per_shard": 8},
}


def tiny_pipeline(params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Params overrides for the whole pipeline on the tiny corpus: a few training steps, and of the
    default fine-tune tasks (``params``, default: the committed ones) the multi-label ones, one step each."""
    tasks = (params or committed_params())["finetune"]["tasks"]
    # a hashed share of a tiny training split may be empty: a larger share of a few more clips
    tasks = [{**task, "val_fraction": 0.5} if "val_fraction" in task else task for task in tasks]
    return deep_update(json.loads(json.dumps(TINY_CORPUS)), {
        "corpus": {"classification": {"clips_per_class": 2, "folds": 2}, "tagging": {"train": 12, "test": 4}},
        "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 4, "num_workers": 1, "warmup_steps": 1},
        "eval_retrieval": {"batch_size": 8},
        "finetune": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 4, "num_workers": 1, "warmup_steps": 1,
                     "tasks": [task for task in tasks if task.get("multi_label")]},
    })
