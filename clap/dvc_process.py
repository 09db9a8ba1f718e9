"""DVC's command line in a child process: ``python -m dvc`` of this interpreter, output streamed.

Every line DVC and the stage command write goes to a callback as it comes (the Prefect flow forwards
it to the task's log); the tail of each stream is kept for the error message of a failed command.
DVC and the stage it starts run in their own process group, stopped when the caller is interrupted.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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


def dvc_root(repo_dir: str | Path) -> Path:
    """The project's root as an absolute path; a folder without ``.dvc/`` is an error naming it."""
    root = Path(repo_dir).resolve()
    if not (root / ".dvc").is_dir():
        raise FileNotFoundError(f"{root}: not a DVC repository (no .dvc/ folder); pass the project's root")
    return root


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
    repo = dvc_root(repo_dir)
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


