"""The paper's table rows as named DVC experiments: queue a table's rows and run them.

    python -m clap.experiments list experiments/table3.yaml
    python -m clap.experiments queue experiments/table3.yaml [--full] [--set key=value ...] [--run]

Each row of experiments/<table>.yaml has a `full` variant (the paper's configuration, for GPUs and
real data) and a `cpu` twin (the same comparison on the embedded corpus, runnable on a laptop).
A row may list `requires`: params keys that only the user can give (e.g. `captions.k2c_model`, a
local model folder); the row is runnable once its variant or `--set` gives every one of them.
A variant of `null` is never runnable.
`queue` turns the chosen variant of every row into `dvc exp run --queue --name <table>-<row> -S ...`
(with `--seeds 3407,1,2`: one run per seed, `-S seed=N`, named `<table>-<row>-s<N>`);
`--targets eval_retrieval eval_zeroshot` reproduces only those stages and what they need (the sweep
skips fine-tuning); `--run` then starts DVC's queue (`dvc queue start`) and waits for it. Compare with `dvc exp show`
and `make report`.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from clap.overrides import dotted_keys, set_args, set_values


@dataclass
class ExperimentRow:
    table: str
    name: str
    overrides: dict[str, Any] | None
    requires: tuple[str, ...] = ()

    @property
    def experiment_name(self) -> str:
        return f"table{self.table}-{self.name}"

    def missing(self) -> list[str]:
        """The ``requires`` keys the overrides do not give yet (all of them when there is no variant)."""
        return [key for key in self.requires if self.overrides is None or self.overrides.get(key) is None]

    @property
    def runnable(self) -> bool:
        return self.overrides is not None and not self.missing()

    def with_extra(self, extra: dict[str, Any]) -> ExperimentRow:
        """The row with ``--set`` overrides on top of its own; a row without a variant stays so."""
        if self.overrides is None:
            return self
        return ExperimentRow(self.table, self.name, {**self.overrides, **extra}, self.requires)

    def with_seed(self, seed: int) -> ExperimentRow:
        """The row for one seed: ``-S seed=<seed>`` (the train stage's seed), named ``<row>-s<seed>``."""
        overrides = None if self.overrides is None else {**self.overrides, "seed": seed}
        return ExperimentRow(self.table, f"{self.name}-s{seed}", overrides, self.requires)


def parse_seeds(text: str) -> list[int]:
    """``--seeds 3407,1,2`` -> [3407, 1, 2]."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 3407,1,2") from exc


def load_table(path: Path, variant: str) -> list[ExperimentRow]:
    spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, dict) or "rows" not in spec:
        raise ValueError(f"{path}: expected a mapping with 'table' and 'rows'")
    rows = []
    for row in spec["rows"]:
        if variant not in row:
            raise ValueError(f"{path}: row '{row.get('name')}' has no '{variant}' variant")
        requires = row.get("requires") or []
        if not isinstance(requires, list) or not all(isinstance(key, str) for key in requires):
            raise ValueError(f"{path}: row '{row.get('name')}': 'requires' must be a list of params keys")
        rows.append(ExperimentRow(str(spec["table"]), row["name"], row[variant], tuple(requires)))
    return rows


def check_overrides(rows: list[ExperimentRow], params: Path | Mapping[str, Any]) -> None:
    """`dvc exp run -S` only overrides keys that exist in params.yaml: say which do not, up front.

    ``params`` is the params file or its parsed content.
    """
    where = str(params) if isinstance(params, Path) else "params.yaml"
    known = dotted_keys(yaml.safe_load(params.read_text()) if isinstance(params, Path) else params)
    for row in rows:
        unknown = sorted((set(row.overrides or {}) | set(row.requires)) - known)
        if unknown:
            raise ValueError(f"experiment {row.experiment_name}: {unknown} are not keys of {where}")


def skip_reason(row: ExperimentRow) -> str:
    if row.overrides is None:
        return "no variant runnable here (see the table file)"
    return "needs " + ", ".join(f"--set {key}=..." for key in row.missing())


def queue_rows(rows: list[ExperimentRow], repo: Path, targets: Sequence[str] = ()) -> list[str]:
    """``dvc exp run --queue`` (DVC's Python API) for every runnable row (overrides already merged); the
    others are named.
    ``targets``: the stages to reproduce (with what they need); default the whole pipeline."""
    from dvc.repo import Repo

    queued = []
    with Repo(str(repo)) as dvc_repo:  # one DVC session for all rows: no interpreter start per row
        for row in rows:
            if not row.runnable:
                print(f"skip {row.experiment_name}: {skip_reason(row)}", file=sys.stderr)
                continue
            values = set_values(row.overrides or {})
            print(shlex.join(["dvc", "exp", "run", "--queue", "--name", row.experiment_name,
                              *set_args(row.overrides or {}), *targets]), flush=True)
            dvc_repo.experiments.run(targets=list(targets), params=values, queue=True, name=row.experiment_name)
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
    parser.add_argument("--seeds", type=parse_seeds, default=None, metavar="N,N,...",
                        help="every row once per seed (-S seed=N), named <table>-<row>-s<N>")
    parser.add_argument("--targets", nargs="+", default=[], metavar="STAGE",
                        help="reproduce only these stages and what they need (default: the whole pipeline)")
    parser.add_argument("--repo", type=Path, default=Path("."))
    args = parser.parse_args(argv)

    rows = load_table(args.table, "full" if args.full else "cpu")
    extra = {key: yaml.safe_load(value) for key, _, value in (s.partition("=") for s in args.sets)}
    rows = [row.with_extra(extra) for row in rows]
    if args.seeds:
        rows = [row.with_seed(seed) for row in rows for seed in args.seeds]
    check_overrides([r for r in rows if r.overrides is not None], args.repo / "params.yaml")
    if args.command == "list":
        for row in rows:
            print(row.experiment_name, shlex.join(set_args(row.overrides or {})) if row.runnable
                  else f"(not runnable: {skip_reason(row)})")
        return 0
    queue_rows(rows, args.repo, args.targets)
    if args.run:
        subprocess.run(["dvc", "queue", "start", "-j", "1"], cwd=args.repo, check=True)
        while "Queued" in (status := subprocess.run(["dvc", "queue", "status"], cwd=args.repo, capture_output=True,
                                                    text=True).stdout) or "Running" in status:
            time.sleep(10)
        print(status)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
