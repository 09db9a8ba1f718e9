"""A real Prefect server (and served deployments) for tests: start, query its REST API, stop.

The server runs as ``prefect server start`` on a free port of 127.0.0.1 with its SQLite database in a
temporary PREFECT_HOME; every subprocess a test starts gets ``env`` so that its CLI calls talk to
that server instead of starting a throwaway one.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from flows.serve import start_local_server, stop_process
from tests.repo_copy import pipeline_env

TERMINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PrefectServer:
    """A running server: its API URL, its home, and the environment that points clients at it."""

    api_url: str
    home: Path
    process: subprocess.Popen[bytes] | None = None
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.api_url.rstrip("/") + "/", timeout=30)

    @property
    def log_file(self) -> Path:
        return self.home / "server.log"

    def env(self, **extra: str) -> dict[str, str]:
        """The pipeline's environment plus the Prefect settings of this server."""
        env = pipeline_env()
        env.update(
            PREFECT_API_URL=self.api_url,
            PREFECT_HOME=str(self.home),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_RUNNER_POLL_FREQUENCY="1",   # the runner picks up a new run within a second
            PREFECT_CLI_COLORS="false",
            PREFECT_CLI_WRAP_LINES="false",
        )
        env.update(extra)
        return env

    # --- REST API ---------------------------------------------------------------------------------

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.client.post(path, json=body or {})
        response.raise_for_status()
        return response.json()

    def get(self, path: str) -> httpx.Response:
        return self.client.get(path)

    def flow_run(self, flow_run_id: str) -> dict[str, Any]:
        response = self.get(f"flow_runs/{flow_run_id}")
        response.raise_for_status()
        return response.json()

    def flow_runs(self, deployment_id: str | None = None) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"sort": "EXPECTED_START_TIME_DESC"}
        if deployment_id:
            body["deployments"] = {"id": {"any_": [deployment_id]}}
        return self.post("flow_runs/filter", body)

    def task_runs(self, flow_run_id: str) -> list[dict[str, Any]]:
        return self.post("task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})

    def artifacts(self, key: str, flow_run_id: str | None = None) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC"}
        if flow_run_id:
            body["artifacts"]["flow_run_id"] = {"any_": [flow_run_id]}
        return self.post("artifacts/filter", body)

    def logs(self, flow_run_id: str) -> list[str]:
        rows = self.post("logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "TIMESTAMP_ASC"})
        return [row["message"] for row in rows]

    def deployment(self, flow_name: str, deployment_name: str) -> dict[str, Any] | None:
        try:
            response = self.get(f"deployments/name/{flow_name}/{deployment_name}")
        except httpx.TransportError:  # the server is not up (yet)
            return None
        return response.json() if response.status_code == 200 else None

    def wait_for_deployment(self, flow_name: str, deployment_name: str, timeout: float,
                            process: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> dict[str, Any]:
        """Wait until a runner has registered the deployment (and is therefore polling for runs)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (deployment := self.deployment(flow_name, deployment_name)) is not None:
                return deployment
            if process is not None and process.poll() is not None:
                tail = log.read_text()[-4000:] if log and log.exists() else ""
                raise RuntimeError(f"serving process exited with {process.returncode}:\n{tail}")
            time.sleep(0.5)
        raise TimeoutError(f"deployment {flow_name}/{deployment_name} not registered within {timeout:.0f} s")


@contextmanager
def prefect_server(home: Path, timeout: float = 120.0) -> Iterator[PrefectServer]:
    """Start ``prefect server start`` on a free local port with ``home`` as PREFECT_HOME; stop it after."""
    api_url = f"http://127.0.0.1:{free_port()}/api"
    process = start_local_server(api_url, home, timeout)
    server = PrefectServer(api_url=api_url, home=home, process=process)
    try:
        yield server
    finally:
        server.client.close()
        stop_process(process)


@contextmanager
def serving(server: PrefectServer, repo: Path, log: Path, timeout: float = 120.0,
            args: tuple[str, ...] = ()) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``python -m flows.serve`` in ``repo`` against ``server`` until the block ends (then SIGTERM)."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "flows.serve", "--no-server", *args], cwd=repo, env=server.env(),
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        server.wait_for_deployment("clap", "full-pipeline", timeout, process, log)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # the runner shuts down gracefully on SIGTERM
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stop_process(process, grace=5)


def run_cli(server: PrefectServer, args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """A ``prefect`` CLI call against ``server`` (never a throwaway one: PREFECT_API_URL is set)."""
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args], cwd=cwd, env=server.env(),
        capture_output=True, text=True, timeout=timeout,
    )


def flow_run_id_from_output(output: str) -> str:
    """The UUID that ``prefect deployment run`` prints for the run it created."""
    for line in output.splitlines():
        if "UUID:" in line:
            return line.split("UUID:", 1)[1].strip()
    raise AssertionError(f"no flow run UUID in the CLI output:\n{output}")
