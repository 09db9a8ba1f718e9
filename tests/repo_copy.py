"""Copy the working tree into a temporary git repository, for end-to-end DVC/Prefect tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


def tracked_files(root: Path = REPO_ROOT) -> list[Path]:
    """Files git would commit: tracked plus untracked-but-not-ignored."""
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=root, check=True, capture_output=True,
    ).stdout.decode()
    return [Path(p) for p in out.split("\0") if p and (root / p).is_file()]


def pipeline_env() -> dict[str, str]:
    """Environment for running the pipeline's commands with this interpreter's venv first on PATH."""
    env = dict(os.environ)
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
    """Copy the project into ``dest``, apply params overrides, and commit it as a fresh git repo."""
    dest.mkdir(parents=True, exist_ok=True)
    for rel in tracked_files():
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
