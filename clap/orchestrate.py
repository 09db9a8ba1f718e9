"""Running the DVC pipeline from an orchestrator: stage order, one stage at a time, experiments, metrics.

What to run and what happened come from DVC's Python API (``dvc.repo.Repo``), never from DVC's
human-readable output: the order is DVC's own plan over its stage graph (what ``dvc repro`` runs),
whether a stage is up to date is ``Repo.status``, and what an experiment re-ran is read off the
dvc.lock that DVC committed for it. The work itself runs as DVC's command line (``python -m dvc`` of
this interpreter) in a child process, so DVC's cache and lock decide exactly as when a person types
the command, the output streams to a callback line by line, and stopping the orchestrator stops DVC
and the stage it started. Nothing here depends on Prefect: the flow in ``flows/clap_flow.py``
passes a line callback that forwards DVC's output to its run logger.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from clap.dvc_process import (  # noqa: F401  (re-exported: the flow and the benchmarks use them from here)
    ERROR_TAIL_LINES,
    DvcCommandError,
    DvcRun,
    LineCallback,
    StageFailed,
    dvc_root,
    run_dvc,
    run_dvc_checked,
    stage_environment,
)
from clap.overrides import flatten, set_args
from clap.report.writer import markdown_table

if TYPE_CHECKING:
    from dvc.repo import Repo
    from dvc.stage import Stage

PROJECT_FILE = "dvc.yaml"
_EXP_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class PipelineError(ValueError):
    """The pipeline cannot be planned: an unknown target, no stages, a cycle (DVC's own message)."""


#: What DVC did with a stage: reproduced it (ran its command, or restored its outputs from DVC's run
#: cache), or found it up to date (nothing it depends on changed).
RAN = "ran"
UP_TO_DATE = "up to date"


@dataclass
class StageOutcome:
    """One stage as the orchestrator saw it: ran, or found up to date."""

    stage: str
    status: str
    seconds: float = 0.0

    @property
    def ran(self) -> bool:
        return self.status == RAN

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "status": self.status, "seconds": round(self.seconds, 2)}


@dataclass
class ExperimentOutcome:
    """A finished ``dvc exp run``: its name and what DVC did with each stage, in order."""

    name: str
    stages: list[StageOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ran(self) -> list[str]:
        return [s.stage for s in self.stages if s.ran]


# --- DVC's view of the pipeline (Python API) -----------------------------------------------------

@contextmanager
def open_repo(repo_dir: str | Path) -> Iterator[Repo]:
    """``dvc.repo.Repo`` of the project, closed (and its locks released) on exit."""
    from dvc.repo import Repo

    with Repo(str(dvc_root(repo_dir))) as repo:
        yield repo


def _absolute_target(root: Path, target: str) -> str:
    """A ``dvc repro`` target (``train``, ``sub/dvc.yaml:x``, ``data.dvc``) anchored at ``root``.

    DVC resolves targets against the current directory; the orchestrator's may be another one.
    """
    from dvc.utils import parse_target

    path, name = parse_target(target)
    path = path or PROJECT_FILE
    full = path if os.path.isabs(path) else str(root / path)
    return f"{full}:{name}" if name else full


def _stage_name(root: Path, stage: Stage) -> str:
    """The name ``dvc repro`` takes from the project's root: ``train``, ``sub/dvc.yaml:x``, ``data.dvc``."""
    dvcfile = Path(stage.path).resolve().relative_to(root).as_posix()
    name = getattr(stage, "name", None)
    if not name:
        return dvcfile
    return name if dvcfile == PROJECT_FILE else f"{dvcfile}:{name}"


def _collect(repo: Repo, root: Path, targets: Sequence[str]) -> list[Stage]:
    from dvc.exceptions import DvcException

    stages: list[Stage] = []
    for target in targets:
        try:
            found = repo.stage.collect(_absolute_target(root, target))
        except DvcException as exc:
            raise PipelineError(f"{root}: target {target!r}: {exc}") from exc
        stages += [stage for stage in found if stage not in stages]
    return stages


def pipeline_stages(repo_dir: str | Path, targets: Sequence[str] | None = None) -> list[str]:
    """The stages to run for ``targets`` (each with everything upstream of it), in the order
    ``dvc repro`` runs them (DVC's own plan over its stage graph).

    ``None`` or an empty list means the whole pipeline (every stage of dvc.yaml).
    """
    from dvc.exceptions import DvcException
    from dvc.repo.reproduce import get_active_graph, plan_repro

    root = dvc_root(repo_dir)
    with open_repo(root) as repo:
        stages = _collect(repo, root, list(targets or []) or [PROJECT_FILE])
        try:
            graph = get_active_graph(repo.index.graph)
        except DvcException as exc:  # e.g. stages that depend on each other in a cycle
            raise PipelineError(f"{root}: {exc}") from exc
        names = [_stage_name(root, stage) for stage in plan_repro(graph, stages)]
    if not names:
        raise PipelineError(f"{root}: {PROJECT_FILE} defines no stages")
    return names


def stage_changed(repo_dir: str | Path, stage: str) -> bool:
    """Whether ``dvc repro --single-item <stage>`` has anything to do (``Repo.status`` of the stage:
    a changed dep, param, command or output); False means it is up to date."""
    root = dvc_root(repo_dir)
    with open_repo(root) as repo:
        _collect(repo, root, [stage])  # an unknown stage is a PipelineError, not "up to date"
        return bool(repo.status(targets=[_absolute_target(root, stage)]))


def _lock_key(stage: str) -> tuple[str, str]:
    """(lock file, entry) of a pipeline stage name: ``train`` -> (dvc.lock, train)."""
    dvcfile, _, name = stage.rpartition(":")
    folder = os.path.dirname(dvcfile)
    return (f"{folder}/dvc.lock" if folder else "dvc.lock"), name


def _lock_entries(read: Callable[[str], str | None], stages: Iterable[str]) -> dict[str, Any]:
    """Each stage's dvc.lock entry (deps, params and outs with their hashes), None when it has none."""
    files: dict[str, dict[str, Any]] = {}
    entries: dict[str, Any] = {}
    for stage in stages:
        lock, name = _lock_key(stage)
        if lock not in files:
            text = read(lock)
            files[lock] = (yaml.safe_load(text) or {}).get("stages", {}) if text else {}
        entries[stage] = files[lock].get(name)
    return entries


def _read_workspace(root: Path) -> Callable[[str], str | None]:
    return lambda rel: (root / rel).read_text() if (root / rel).is_file() else None


def experiment_lock_entries(repo_dir: str | Path, name: str, stages: Iterable[str]) -> dict[str, Any]:
    """The dvc.lock entries DVC committed for experiment ``name`` (baseline: the current HEAD)."""
    from dvc.repo.experiments.utils import resolve_name

    root = dvc_root(repo_dir)
    with open_repo(root) as repo:
        ref = resolve_name(repo.scm, name).get(name)
        if ref is None:
            raise PipelineError(f"{root}: no experiment named {name!r} (dvc exp show lists them)")
        fs = repo.scm.get_fs(repo.scm.get_ref(str(ref)))
        return _lock_entries(lambda rel: fs.read_text(rel) if fs.isfile(rel) else None, stages)


# --- running -------------------------------------------------------------------------------------

def repro_stage(repo_dir: str | Path, stage: str, on_line: LineCallback | None = None) -> StageOutcome:
    """``dvc repro --single-item <stage>`` when DVC reports it changed; an up-to-date stage is left alone.

    Raises :class:`StageFailed` whose message ends with the last lines the stage wrote to stderr.
    """
    start = time.monotonic()
    if not stage_changed(repo_dir, stage):
        return StageOutcome(stage=stage, status=UP_TO_DATE, seconds=time.monotonic() - start)
    args = ["repro", "--single-item", stage]
    result = run_dvc(args, repo_dir, on_line)
    if result.returncode != 0:
        raise StageFailed(stage, args, result.returncode, result.error_tail())
    return StageOutcome(stage=stage, status=RAN, seconds=time.monotonic() - start)


def check_experiment_name(name: str) -> str:
    """DVC stores experiments as git refs: names are letters, digits, '.', '_' and '-'."""
    if not _EXP_NAME_RE.match(name) or ".." in name or name.endswith((".", ".lock")):
        raise ValueError(
            f"experiment name {name!r}: use letters, digits, '.', '_' and '-' (it becomes a git ref)"
        )
    return name


def run_experiment(
    repo_dir: str | Path,
    overrides: Mapping[str, Any],
    name: str,
    targets: Sequence[str] | None = None,
    on_line: LineCallback | None = None,
) -> ExperimentOutcome:
    """``dvc exp run --temp -S k=v ... --name <name> [targets]``.

    ``--temp`` runs the experiment in a temporary copy under ``.dvc/tmp/exps`` (from HEAD plus the
    workspace's changes to tracked files), so the workspace, and every later baseline run, keeps its
    own params. The result is saved as a DVC experiment: ``dvc exp show``, ``dvc exp apply <name>``.
    A stage counts as run when its entry in the experiment's dvc.lock differs from the workspace's.
    """
    if not overrides:
        raise ValueError("run_experiment: no overrides given; use repro_stage for the baseline")
    args = ["exp", "run", "--temp", *set_args(overrides), "--name", check_experiment_name(name)]
    args += list(targets or [])
    root = dvc_root(repo_dir)
    order = pipeline_stages(root, targets)  # an unknown target fails here, before the run
    before = _lock_entries(_read_workspace(root), order)
    result = run_dvc(args, root, on_line)
    if result.returncode != 0:
        raise DvcCommandError(f"experiment '{name}'", args, result.returncode, result.error_tail())
    after = experiment_lock_entries(root, name, order)
    stages = [StageOutcome(stage, RAN if after[stage] != before[stage] else UP_TO_DATE) for stage in order]
    return ExperimentOutcome(name=name, stages=stages, seconds=result.seconds)


# --- metrics -------------------------------------------------------------------------------------

def metrics_show(repo_dir: str | Path) -> dict[str, Any]:
    """``dvc metrics show --json`` of the workspace, parsed."""
    return json.loads(run_dvc_checked(["metrics", "show", "--json"], repo_dir, "reading metrics").stdout or "{}")


def experiment_diff(repo_dir: str | Path, name: str, baseline: str = "HEAD") -> dict[str, Any]:
    """``dvc exp diff <baseline> <name> --all --json``: params and metrics, changed or not."""
    args = ["exp", "diff", baseline, name, "--all", "--json"]
    return json.loads(run_dvc_checked(args, repo_dir, f"comparing experiment '{name}'").stdout or "{}")


def workspace_metrics(show: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Split ``dvc metrics show --json`` into ``{file: {metric: value}}`` and ``{file: error}``."""
    if not show:
        return {}, {}
    revision = show.get("", show.get("workspace", next(iter(show.values()))))
    files: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    for path, entry in (revision.get("data") or {}).items():
        if "error" in entry:
            error = entry["error"]
            errors[path] = error.get("msg", str(error)) if isinstance(error, Mapping) else str(error)
        else:
            files[path] = flatten(entry.get("data") or {})
    return files, errors


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    return str(value)  # markdown_table escapes '|' and line breaks


def render_metrics_markdown(
    show: Mapping[str, Any],
    stages: Sequence[StageOutcome] = (),
    experiment: str | None = None,
    diff: Mapping[str, Any] | None = None,
    title: str = "CLAP pipeline",
) -> str:
    """The markdown the flow publishes: stage outcomes, then metrics, or for an experiment its diff.

    ``show`` is ``dvc metrics show --json``; ``diff`` is ``dvc exp diff --json`` (keys ``metrics``
    and ``params``, each ``{file: {name: {old, new, diff}}}``).
    """
    lines = [f"# {title}" + (f": experiment `{experiment}`" if experiment else ""), ""]
    if stages:
        lines += ["## Stages", ""]
        lines += markdown_table(["stage", "result", "seconds"],
                                [(s.stage, s.status, round(s.seconds, 1) if s.seconds else "-") for s in stages], _cell)
        lines.append("")
    if diff is not None:
        for kind, heading in (("params", "Params"), ("metrics", "Metrics")):
            rows = [
                (path, name, change.get("old"), change.get("new"), change.get("diff"))
                for path, entries in sorted((diff.get(kind) or {}).items())
                for name, change in sorted(entries.items())
            ]
            lines += [f"## {heading}: baseline vs `{experiment}`", ""]
            lines += markdown_table(["file", "name", "baseline", "experiment", "change"], rows, _cell) if rows else ["(none)"]
            lines.append("")
        return "\n".join(lines).rstrip() + "\n"
    files, errors = workspace_metrics(show)
    rows = [(path, name, value) for path, values in sorted(files.items()) for name, value in values.items()]
    lines += ["## Metrics", ""]
    lines += markdown_table(["file", "metric", "value"], rows, _cell) if rows else ["(no metrics yet)"]
    if errors:
        lines += ["", "Not produced (yet):", ""]
        lines += [f"- `{path}`: {message}" for path, message in sorted(errors.items())]
    return "\n".join(lines).rstrip() + "\n"
