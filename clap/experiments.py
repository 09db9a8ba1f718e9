"""The paper's table rows as named DVC experiments: queue a table's rows and run them.

    python -m clap.experiments list experiments/table3.yaml
    python -m clap.experiments queue experiments/table3.yaml [--full] [--set key=value ...] [--run]

Each row of experiments/<table>.yaml has a `full` variant (the paper's configuration, for GPUs and
real data) and a `cpu` twin (the same comparison on the embedded corpus, runnable on a laptop).
`queue` turns the chosen variant of every row into `dvc exp run --queue --name <table>-<row> -S ...`;
`--run` then starts DVC's queue (`dvc queue start`) and waits for it. Compare with `dvc exp show`
and `make report`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass
class ExperimentRow:
    table: str
    name: str
    overrides: dict[str, Any] | None

    @property
    def experiment_name(self) -> str:
        return f"table{self.table}-{self.name}"


def load_table(path: Path, variant: str) -> list[ExperimentRow]:
    spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, dict) or "rows" not in spec:
        raise ValueError(f"{path}: expected a mapping with 'table' and 'rows'")
    rows = []
    for row in spec["rows"]:
        if variant not in row:
            raise ValueError(f"{path}: row '{row.get('name')}' has no '{variant}' variant")
        rows.append(ExperimentRow(str(spec["table"]), row["name"], row[variant]))
    return rows


def _flatten(params: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, value in params.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= _flatten(value, f"{prefix}{key}.")
    return keys


def check_overrides(rows: list[ExperimentRow], params_path: Path) -> None:
    """`dvc exp run -S` only overrides keys that exist in params.yaml: say which do not, up front."""
    known = _flatten(yaml.safe_load(params_path.read_text()))
    for row in rows:
        unknown = sorted(set(row.overrides or {}) - known)
        if unknown:
            raise ValueError(f"experiment {row.experiment_name}: {unknown} are not keys of {params_path}")


def set_args(overrides: dict[str, Any]) -> list[str]:
    """``{"fusion": True, "train_sets": ["a"]}`` -> ``["-S", "fusion=true", "-S", 'train_sets=["a"]']``."""
    args = []
    for key, value in overrides.items():
        args += ["-S", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    return args


def queue_rows(rows: list[ExperimentRow], extra: dict[str, Any], repo: Path) -> list[str]:
    queued = []
    for row in rows:
        if row.overrides is None:
            print(f"skip {row.experiment_name}: no variant runnable here (see the table file)", file=sys.stderr)
            continue
        cmd = ["dvc", "exp", "run", "--queue", "--name", row.experiment_name, *set_args({**row.overrides, **extra})]
        print(" ".join(cmd))
        subprocess.run(cmd, cwd=repo, check=True)
        queued.append(row.experiment_name)
    return queued


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["list", "queue"])
    parser.add_argument("table", type=Path)
    parser.add_argument("--full", action="store_true", help="the paper-size variant instead of the CPU twin")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra override for every row (yaml value)")
    parser.add_argument("--run", action="store_true", help="start the DVC queue and wait for it")
    parser.add_argument("--repo", type=Path, default=Path("."))
    args = parser.parse_args(argv)

    rows = load_table(args.table, "full" if args.full else "cpu")
    extra = {key: yaml.safe_load(value) for key, _, value in (s.partition("=") for s in args.sets)}
    runnable = [ExperimentRow(r.table, r.name, {**r.overrides, **extra}) if r.overrides is not None else r for r in rows]
    check_overrides([r for r in runnable if r.overrides is not None], args.repo / "params.yaml")
    if args.command == "list":
        for row in runnable:
            print(row.experiment_name, " ".join(set_args(row.overrides)) if row.overrides else "(not runnable here)")
        return 0
    queue_rows(rows, extra, args.repo)
    if args.run:
        subprocess.run(["dvc", "queue", "start", "-j", "1"], cwd=args.repo, check=True)
        while "Queued" in (status := subprocess.run(["dvc", "queue", "status"], cwd=args.repo, capture_output=True,
                                                    text=True).stdout) or "Running" in status:
            time.sleep(10)
        print(status)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
