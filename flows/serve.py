"""Serve the deployment ``clap/full-pipeline``, starting a local Prefect server first if none answers.

    python -m flows.serve            # or: make serve

then, from another shell (with the same PREFECT_API_URL):

    prefect deployment run clap/full-pipeline --watch

PREFECT_API_URL defaults to http://127.0.0.1:4200/api. When nothing answers there and the host is
local, a ``prefect server start`` is launched with its SQLite database under PREFECT_HOME (default
``<repo>/.prefect``) and stopped again when serving ends. Flow runs execute in this process's
working directory, the repository root.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

logger = logging.getLogger("flows.serve")

DEFAULT_API_URL = "http://127.0.0.1:4200/api"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass
class ServeConfig:
    """Where the API is, where a local server keeps its state, and what the runner serves."""

    repo_dir: Path
    api_url: str = DEFAULT_API_URL
    prefect_home: Path | None = None     # default: <repo_dir>/.prefect
    startup_timeout: float = 90.0        # seconds to wait for a server we start to become healthy
    limit: int = 1                       # concurrent flow runs: DVC holds one lock per repository
    start_server: bool = True            # start a local server when none answers

    @property
    def home(self) -> Path:
        return (self.prefect_home or self.repo_dir / ".prefect").resolve()


def api_healthy(api_url: str, timeout: float = 2.0) -> bool:
    """Whether a Prefect API answers ``GET <api_url>/health``."""
    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for_api(api_url: str, timeout: float, process: subprocess.Popen[bytes] | None = None,
                 log_file: Path | None = None) -> None:
    """Poll the health endpoint until it answers; fail early if ``process`` (the server) exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api_healthy(api_url):
            return
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"prefect server exited with {process.returncode} before answering at {api_url}"
                + (f"; see {log_file}" if log_file else "")
            )
        time.sleep(0.5)
    raise TimeoutError(
        f"no Prefect API answered at {api_url} within {timeout:.0f} s"
        + (f"; see {log_file}" if log_file else "")
    )


def start_local_server(api_url: str, home: Path, timeout: float) -> subprocess.Popen[bytes]:
    """``prefect server start`` on the host and port of ``api_url``, its state and log under ``home``."""
    parts = urlsplit(api_url)
    if parts.hostname not in LOCAL_HOSTS:
        raise RuntimeError(
            f"PREFECT_API_URL={api_url}: no Prefect server answers there and it is not local, so none "
            "is started; start the server on that host or point PREFECT_API_URL at a running one"
        )
    port = parts.port or (443 if parts.scheme == "https" else 80)
    home.mkdir(parents=True, exist_ok=True)
    log_file = home / "server.log"
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_API_URL=api_url,
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", parts.hostname, "--port", str(port)]
    logger.info("starting %s (state in %s, log in %s)", " ".join(cmd[2:]), home, log_file)
    with log_file.open("ab") as log:
        server = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_api(api_url, timeout, server, log_file)
    except BaseException:
        stop_process(server)
        raise
    logger.info("Prefect server ready at %s (UI: %s)", api_url, api_url.removesuffix("/api"))
    return server


def stop_process(process: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """Terminate a process we started, killing it if it does not exit within ``grace`` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def serve(config: ServeConfig) -> None:
    """Make sure an API answers, then serve ``clap/full-pipeline`` until interrupted (Ctrl-C, SIGTERM)."""
    # Until Prefect's runner installs its own SIGTERM handler, SIGTERM must still unwind through the
    # `finally` below, or a server started here would outlive this process.
    signal.signal(signal.SIGTERM, _interrupt)
    repo = config.repo_dir.resolve()
    if not (repo / "dvc.yaml").is_file():
        raise FileNotFoundError(f"{repo}: no dvc.yaml here; run from the project's root or pass --repo-dir")
    # Prefect reads its settings when it is first imported, so they are set before the import below.
    os.environ["PREFECT_API_URL"] = config.api_url
    os.environ["PREFECT_HOME"] = str(config.home)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.chdir(repo)  # flow runs inherit it: the default repo_dir

    server = None
    if not api_healthy(config.api_url):
        if not config.start_server:
            raise RuntimeError(f"no Prefect API answers at {config.api_url} (and --no-server was given)")
        server = start_local_server(config.api_url, Path(os.environ["PREFECT_HOME"]), config.startup_timeout)
    else:
        logger.info("using the Prefect server at %s", config.api_url)
    try:
        from flows.clap_flow import DEPLOYMENT_NAME, clap_flow

        clap_flow.serve(
            name=DEPLOYMENT_NAME,
            limit=config.limit,
            parameters={"repo_dir": str(repo)},
            description="The whole CLAP pipeline through DVC; pass overrides to run an experiment.",
            tags=["clap", "dvc"],
        )
    finally:
        if server is not None:
            logger.info("stopping the Prefect server (pid %d)", server.pid)
            stop_process(server)


def parse_args(argv: list[str] | None = None) -> ServeConfig:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo-dir", type=Path, default=Path.cwd(),
                        help="the project's root, where flow runs execute (default: the current directory)")
    parser.add_argument("--api-url", default=os.environ.get("PREFECT_API_URL") or DEFAULT_API_URL,
                        help="Prefect API (default: $PREFECT_API_URL or %(default)s)")
    parser.add_argument("--prefect-home", type=Path, default=None,
                        help="state of a server started here (default: $PREFECT_HOME or <repo>/.prefect)")
    parser.add_argument("--limit", type=int, default=1, help="flow runs at a time (default: %(default)s)")
    parser.add_argument("--startup-timeout", type=float, default=90.0,
                        help="seconds to wait for a started server (default: %(default)s)")
    parser.add_argument("--no-server", action="store_true", help="never start a server; fail if none answers")
    args = parser.parse_args(argv)
    home = args.prefect_home or (Path(os.environ["PREFECT_HOME"]) if os.environ.get("PREFECT_HOME") else None)
    return ServeConfig(
        repo_dir=args.repo_dir, api_url=args.api_url, prefect_home=home,
        startup_timeout=args.startup_timeout, limit=args.limit, start_server=not args.no_server,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)-7s | %(name)s - %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per API request otherwise
    config = parse_args(argv)
    try:
        serve(config)
    except KeyboardInterrupt:
        logger.info("interrupted; stopped serving")
    except (FileNotFoundError, RuntimeError, TimeoutError) as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
