"""Running the DVC pipeline from an orchestrator: stage order, one stage at a time, experiments, metrics.

Everything here drives DVC through its command line (``python -m dvc`` of this interpreter), so DVC's
own cache and lock decide what runs and what is skipped, exactly as when a person types the command.
Nothing in this module depends on Prefect: the flow in ``flows/clap_flow.py`` passes a line callback
that forwards DVC's output to its run logger.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

#: Receives each line of a DVC command's output: (stream name "stdout" | "stderr", line).
LineCallback = Callable[[str, str], None]

#: Defaults for the stage commands' environment, the same as the Makefile's exports.
STAGE_ENV_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_AUTH_MODE": "disabled",
}

#: How many trailing lines of a failed command go into its error message.
ERROR_TAIL_LINES = 25

_NODE_RE = re.compile(r'^\s*"((?:[^"\\]|\\.)+)"\s*;?\s*$')
_EDGE_RE = re.compile(r'^\s*"((?:[^"\\]|\\.)+)"\s*->\s*"((?:[^"\\]|\\.)+)"\s*;?\s*$')
_STATUS_RES = (
    (re.compile(r"^Running stage '(?P<stage>[^']+)':"), "ran"),
    (re.compile(r"^Stage '(?P<stage>[^']+)' didn't change, skipping"), "up to date"),
    (re.compile(r"^Stage '(?P<stage>[^']+)' is cached - skipping run"), "restored from run cache"),
)
_FAILED_RE = re.compile(r"failed to reproduce '(?P<stage>[^']+)'")
_EXP_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class DvcCommandError(RuntimeError):
    """A DVC command exited non-zero; the message ends with the last lines it wrote."""

    def __init__(self, what: str, command: Sequence[str], returncode: int, tail: Sequence[str]) -> None:
        self.what = what
        self.command = list(command)
        self.returncode = returncode
        self.tail = list(tail)
        lines = "\n".join(self.tail) if self.tail else "(no output)"
        super().__init__(f"{what} failed (`dvc {' '.join(self.command)}` exited with {returncode}):\n{lines}")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes despite the custom __init__
        return (type(self), (self.what, self.command, self.returncode, self.tail))


class StageFailed(DvcCommandError):
    """One pipeline stage failed; ``stage`` names it."""

    def __init__(self, stage: str, command: Sequence[str], returncode: int, tail: Sequence[str]) -> None:
        self.stage = stage
        super().__init__(f"stage '{stage}'", command, returncode, tail)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.stage, self.command, self.returncode, self.tail))


@dataclass
class DvcRun:
    """What a finished DVC command left behind: exit code, full stdout, and the tail of each stream."""

    args: list[str]
    returncode: int
    stdout: str
    stdout_tail: list[str]
    stderr_tail: list[str]
    seconds: float

    def error_tail(self, lines: int = ERROR_TAIL_LINES) -> list[str]:
        """The lines that explain a failure: stderr's tail, or stdout's when stderr is empty."""
        return (self.stderr_tail or self.stdout_tail)[-lines:]


#: What DVC did with a stage.
RAN = "ran"
UP_TO_DATE = "up to date"
RESTORED = "restored from run cache"


@dataclass
class StageOutcome:
    """One stage as the orchestrator saw it: ran, found up to date, or restored from DVC's run cache."""

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


def stage_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for DVC and the stage commands.

    This interpreter's directory goes first on PATH, so ``python -m clap.stages...`` in dvc.yaml
    resolves to the same virtual environment as the orchestrator even when it was not activated.
    The offline defaults of the Makefile apply unless the caller set them.
    """
    env = dict(os.environ if base is None else base)
    bin_dir = str(Path(sys.executable).parent)
    path = env.get("PATH", "")
    if path.split(os.pathsep)[0] != bin_dir:
        env["PATH"] = f"{bin_dir}{os.pathsep}{path}" if path else bin_dir
    for key, value in STAGE_ENV_DEFAULTS.items():
        env.setdefault(key, value)
    return env


def _last_segment(raw: bytes) -> str:
    """Decode one output line; of a progress bar redrawn with carriage returns keep the last state."""
    text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
    if "\r" in text:
        parts = [p for p in text.split("\r") if p.strip()]
        text = parts[-1] if parts else ""
    return text


def _pump(stream: IO[bytes], name: str, sink: Callable[[str, str], None]) -> None:
    for raw in iter(stream.readline, b""):
        sink(name, _last_segment(raw))
    stream.close()


def _stop_process_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Stop DVC and the stage command it started (both live in their own process group)."""
    if proc.poll() is not None:
        return
    logger.warning("stopping dvc (pid %d) and its stage command", proc.pid)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_dvc(
    args: Sequence[str],
    repo_dir: str | Path,
    on_line: LineCallback | None = None,
    tail_lines: int = ERROR_TAIL_LINES,
) -> DvcRun:
    """Run ``dvc <args>`` in ``repo_dir``, streaming every output line to ``on_line`` as it comes.

    Never raises for a non-zero exit code (callers decide what a failure means); if the caller is
    interrupted (e.g. the flow run is cancelled), DVC and its stage command are stopped.
    """
    repo = Path(repo_dir)
    if not (repo / ".dvc").is_dir():
        raise FileNotFoundError(f"{repo}: not a DVC repository (no .dvc/ folder); pass the project's root")
    cmd = [sys.executable, "-m", "dvc", *args]
    logger.debug("running %s in %s", " ".join(cmd), repo)
    stdout_lines: list[str] = []
    tails = {"stdout": deque(maxlen=tail_lines), "stderr": deque(maxlen=tail_lines)}
    lock = threading.Lock()

    def sink(name: str, line: str) -> None:
        with lock:
            if name == "stdout":
                stdout_lines.append(line)
            if line.strip():
                tails[name].append(line)
            if on_line is not None:
                on_line(name, line)

    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=repo, env=stage_environment(), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, "stdout", sink), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, "stderr", sink), daemon=True),
    ]
    try:
        for thread in pumps:
            thread.start()
        returncode = proc.wait()
        for thread in pumps:
            # a daemon the stage left behind may hold the pipes open; DVC itself is done
            thread.join(timeout=10)
    finally:
        _stop_process_group(proc)
    return DvcRun(
        args=list(args), returncode=returncode, stdout="\n".join(stdout_lines),
        stdout_tail=list(tails["stdout"]), stderr_tail=list(tails["stderr"]),
        seconds=time.monotonic() - start,
    )


def run_dvc_checked(args: Sequence[str], repo_dir: str | Path, what: str | None = None) -> DvcRun:
    """Run a DVC command quietly; a non-zero exit raises :class:`DvcCommandError` with its tail."""
    result = run_dvc(args, repo_dir)
    if result.returncode != 0:
        raise DvcCommandError(what or f"dvc {args[0]}", args, result.returncode, result.error_tail())
    return result


# --- stage order ---------------------------------------------------------------------------------

def _unquote(name: str) -> str:
    return name.replace('\\"', '"').replace("\\\\", "\\")


def parse_dag_dot(dot: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Nodes (in the order DVC printed them) and ``upstream -> downstream`` edges of ``dvc dag --dot``."""
    nodes: list[str] = []
    edges: list[tuple[str, str]] = []
    for line in dot.splitlines():
        if match := _EDGE_RE.match(line):
            edge = (_unquote(match.group(1)), _unquote(match.group(2)))
            edges.append(edge)
            for node in edge:
                if node not in nodes:
                    nodes.append(node)
        elif match := _NODE_RE.match(line):
            node = _unquote(match.group(1))
            if node not in nodes:
                nodes.append(node)
    return nodes, edges


def order_stages(nodes: Sequence[str], edges: Iterable[tuple[str, str]]) -> list[str]:
    """Dependency order; among stages that are ready together, the order DVC listed them in."""
    rank = {node: i for i, node in enumerate(nodes)}
    upstream: dict[str, set[str]] = {node: set() for node in nodes}
    for src, dst in edges:
        upstream.setdefault(dst, set()).add(src)
        upstream.setdefault(src, set())
        rank.setdefault(src, len(rank))
        rank.setdefault(dst, len(rank))
    ordered: list[str] = []
    done: set[str] = set()
    while len(ordered) < len(upstream):
        ready = [n for n in upstream if n not in done and upstream[n] <= done]
        if not ready:
            cycle = sorted(n for n in upstream if n not in done)
            raise ValueError(f"dvc.yaml: the stages {cycle} depend on each other in a cycle")
        node = min(ready, key=rank.__getitem__)
        ordered.append(node)
        done.add(node)
    return ordered


def pipeline_stages(repo_dir: str | Path, targets: Sequence[str] | None = None) -> list[str]:
    """The stages to run for ``targets`` (each with everything upstream of it), in dependency order.

    ``None`` or an empty list means the whole pipeline. Unknown targets fail with DVC's own message.
    """
    nodes: list[str] = []
    edges: list[tuple[str, str]] = []
    for target in list(targets or []) or [None]:
        args = ["dag", "--dot"] + ([target] if target else [])
        what = f"listing the pipeline's stages{f' for {target!r}' if target else ''}"
        target_nodes, target_edges = parse_dag_dot(run_dvc_checked(args, repo_dir, what).stdout)
        nodes += [n for n in target_nodes if n not in nodes]
        edges += [e for e in target_edges if e not in edges]
    if not nodes:
        raise ValueError(f"{repo_dir}: dvc.yaml defines no stages")
    return order_stages(nodes, edges)


# --- running -------------------------------------------------------------------------------------

def stage_statuses(stdout: str) -> dict[str, str]:
    """What ``dvc repro``/``dvc exp run`` did with each stage, read off its output, in order."""
    statuses: dict[str, str] = {}
    for line in stdout.splitlines():
        for pattern, status in _STATUS_RES:
            if match := pattern.match(line):
                statuses[match.group("stage")] = status
                break
    return statuses


def repro_stage(repo_dir: str | Path, stage: str, on_line: LineCallback | None = None) -> StageOutcome:
    """``dvc repro --single-item <stage>``: DVC runs it, or skips it when nothing it depends on changed.

    Raises :class:`StageFailed` whose message ends with the last lines the stage wrote to stderr.
    """
    args = ["repro", "--single-item", stage]
    result = run_dvc(args, repo_dir, on_line)
    if result.returncode != 0:
        raise StageFailed(stage, args, result.returncode, result.error_tail())
    # without any of DVC's stage lines (quiet mode) the stage counts as run: the safe reading
    status = stage_statuses(result.stdout).get(stage, RAN)
    return StageOutcome(stage=stage, status=status, seconds=result.seconds)


def flatten_overrides(overrides: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"epochs": 2}, "fusion": True}`` -> ``{"train.epochs": 2, "fusion": True}``."""
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_overrides(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def override_args(overrides: Mapping[str, Any]) -> list[str]:
    """``-S key=value`` arguments for ``dvc exp run``; values are written as JSON, which DVC reads as YAML."""
    args: list[str] = []
    for key, value in flatten_overrides(overrides).items():
        if not key or "=" in key:
            raise ValueError(f"overrides: {key!r} is not a params key (use dotted names like 'train.epochs')")
        args += ["-S", f"{key}={json.dumps(value)}"]
    return args


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
    Raises :class:`StageFailed` naming the stage that failed when DVC says which.
    """
    if not overrides:
        raise ValueError("run_experiment: no overrides given; use repro_stage for the baseline")
    args = ["exp", "run", "--temp", *override_args(overrides), "--name", check_experiment_name(name)]
    args += list(targets or [])
    result = run_dvc(args, repo_dir, on_line)
    if result.returncode != 0:
        failed = next((m.group("stage") for line in reversed(result.stderr_tail)
                       if (m := _FAILED_RE.search(line))), None)
        if failed is not None:
            raise StageFailed(failed, args, result.returncode, result.error_tail())
        raise DvcCommandError(f"experiment '{name}'", args, result.returncode, result.error_tail())
    stages = [StageOutcome(stage, status) for stage, status in stage_statuses(result.stdout).items()]
    return ExperimentOutcome(name=name, stages=stages, seconds=result.seconds)


# --- metrics -------------------------------------------------------------------------------------

def metrics_show(repo_dir: str | Path) -> dict[str, Any]:
    """``dvc metrics show --json`` of the workspace, parsed."""
    return json.loads(run_dvc_checked(["metrics", "show", "--json"], repo_dir, "reading metrics").stdout or "{}")


def experiment_diff(repo_dir: str | Path, name: str, baseline: str = "HEAD") -> dict[str, Any]:
    """``dvc exp diff <baseline> <name> --all --json``: params and metrics, changed or not."""
    args = ["exp", "diff", baseline, name, "--all", "--json"]
    return json.loads(run_dvc_checked(args, repo_dir, f"comparing experiment '{name}'").stdout or "{}")


def flatten_metrics(values: Any, prefix: str = "") -> dict[str, Any]:
    """Nested metric dicts -> dotted names (``{"t2a": {"R@1": 0.1}}`` -> ``{"t2a.R@1": 0.1}``)."""
    if not isinstance(values, Mapping):
        return {prefix: values} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in values.items():
        flat.update(flatten_metrics(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


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
            files[path] = flatten_metrics(entry.get("data", {}))
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
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


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
        lines += _table(["stage", "result", "seconds"],
                        [(s.stage, s.status, round(s.seconds, 1) if s.seconds else "-") for s in stages])
        lines.append("")
    if diff is not None:
        for kind, heading in (("params", "Params"), ("metrics", "Metrics")):
            rows = [
                (path, name, change.get("old"), change.get("new"), change.get("diff"))
                for path, entries in sorted((diff.get(kind) or {}).items())
                for name, change in sorted(entries.items())
            ]
            lines += [f"## {heading}: baseline vs `{experiment}`", ""]
            lines += _table(["file", "name", "baseline", "experiment", "change"], rows) if rows else ["(none)"]
            lines.append("")
        return "\n".join(lines).rstrip() + "\n"
    files, errors = workspace_metrics(show)
    rows = [(path, name, value) for path, values in sorted(files.items()) for name, value in values.items()]
    lines += ["## Metrics", ""]
    lines += _table(["file", "metric", "value"], rows) if rows else ["(no metrics yet)"]
    if errors:
        lines += ["", "Not produced (yet):", ""]
        lines += [f"- `{path}`: {message}" for path, message in sorted(errors.items())]
    return "\n".join(lines).rstrip() + "\n"
