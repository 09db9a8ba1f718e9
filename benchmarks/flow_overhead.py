"""What orchestration costs: one ``dvc repro`` vs one DVC call per stage vs the Prefect flow ``clap``.

The same small pipeline (a chain of ``--stages`` trivial stages, so that only overhead is measured)
is run three ways, each on a fresh copy, first cold (every stage runs) then again with nothing to do:

  1. ``dvc repro``: one DVC process for the whole pipeline (the baseline);
  2. ``clap.orchestrate``: the stage order from DVC's Python API, then per stage ``Repo.status``
     and, for a changed stage, ``dvc repro --single-item <stage>``, as the flow's tasks do, without Prefect;
  3. the flow ``clap`` called in this process against a local Prefect server (its start-up and a
     warm-up run are excluded), with one task per stage and the metrics artifact.

    python -m benchmarks.flow_overhead [--stages 5] [--repeats 2]

Wall time depends on what else runs on the machine; the ratios to ``dvc repro`` measured in the same
run are the figures to compare. Writes benchmarks/results/flow_overhead.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
logger = logging.getLogger("benchmarks.flow_overhead")

STAGE_SCRIPT = """\
import json, sys
from pathlib import Path
i = int(sys.argv[1])
previous = int(Path(f"data/s{i - 1}.txt").read_text()) if i else 0
Path("data").mkdir(exist_ok=True)
Path(f"data/s{i}.txt").write_text(str(previous + 1))
if i == int(sys.argv[2]) - 1:
    Path("reports").mkdir(exist_ok=True)
    Path("reports/chain.json").write_text(json.dumps({"length": previous + 1}))
"""


def make_chain_repo(root: Path, stages: int) -> Path:
    """A git + DVC project whose pipeline is ``stages`` trivial stages in a chain."""
    root.mkdir(parents=True)
    (root / "stage.py").write_text(STAGE_SCRIPT)
    lines = ["stages:"]
    for i in range(stages):
        lines += [f"  s{i}:", f"    cmd: python stage.py {i} {stages}", "    deps: [stage.py" + (f", data/s{i - 1}.txt]" if i else "]"),
                  f"    outs: [data/s{i}.txt]"]
    lines += ["    metrics:", "      - reports/chain.json: {cache: false}"]
    (root / "dvc.yaml").write_text("\n".join(lines) + "\n")
    env = dict(os.environ, GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@example.invalid",
               GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.invalid")
    for cmd in (["git", "init", "-q", "-b", "main"], [sys.executable, "-m", "dvc", "init", "-q"],
                [sys.executable, "-m", "dvc", "config", "core.analytics", "false"],
                ["git", "add", "-A"], ["git", "commit", "-q", "-m", "chain"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    return root


def cpu_seconds() -> float:
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), cpu_seconds()
    fn()
    return time.perf_counter() - wall, cpu_seconds() - cpu


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    work = Path(tempfile.mkdtemp(prefix="flow-overhead-"))
    home = work / "prefect-home"
    api_url = f"http://127.0.0.1:{free_port()}/api"
    # Prefect reads its settings at import: point it at our own server before importing the flow
    os.environ.update(PREFECT_API_URL=api_url, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                      PREFECT_LOGGING_LEVEL="WARNING")
    from flows.serve import start_local_server, stop_process

    server = start_local_server(api_url, home, timeout=180)
    try:
        from clap.orchestrate import pipeline_stages, repro_stage, run_dvc_checked
        from flows.clap_flow import clap_flow

        def dvc_repro(repo: Path) -> None:
            run_dvc_checked(["repro"], repo)

        def per_stage(repo: Path) -> None:
            for stage in pipeline_stages(repo):
                repro_stage(repo, stage)

        def prefect_flow(repo: Path) -> None:
            state = clap_flow(repo_dir=str(repo), retries=0, return_state=True)
            if not state.is_completed():
                raise RuntimeError(f"flow run ended {state.type}: {state.message}")

        prefect_flow(make_chain_repo(work / "warm-up", args.stages))  # client and server warm-up
        ways = {"dvc repro": dvc_repro, "dvc repro per stage (clap.orchestrate)": per_stage,
                "Prefect flow clap": prefect_flow}
        rows: list[dict[str, Any]] = []
        for name, run in ways.items():
            for attempt in range(args.repeats):
                repo = make_chain_repo(work / f"{len(rows)}-{attempt}-{name.split()[0]}", args.stages)
                cold = timed(lambda: run(repo))
                noop = timed(lambda: run(repo))
                rows.append({"way": name, "attempt": attempt, "cold_wall_s": cold[0], "cold_cpu_s": cold[1],
                             "noop_wall_s": noop[0], "noop_cpu_s": noop[1]})
                logger.info("%s #%d: cold %.1f s, no-op %.1f s", name, attempt, cold[0], noop[0])
    finally:
        stop_process(server)

    best: dict[str, dict[str, float]] = {}
    for row in rows:
        entry = best.setdefault(row["way"], {k: float("inf") for k in row if k.endswith("_s")})
        for key in entry:
            entry[key] = min(entry[key], row[key])
    base = best["dvc repro"]
    table = ["| way | cold wall s | cold CPU s | no-op wall s | no-op CPU s | cold wall / dvc repro | no-op wall / dvc repro |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for way, b in best.items():
        table.append(f"| {way} | {b['cold_wall_s']:.1f} | {b['cold_cpu_s']:.1f} | {b['noop_wall_s']:.1f} | "
                     f"{b['noop_cpu_s']:.1f} | {b['cold_wall_s'] / base['cold_wall_s']:.2f} | "
                     f"{b['noop_wall_s'] / base['noop_wall_s']:.2f} |")
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    result = {"stages": args.stages, "repeats": args.repeats, "cpus": os.cpu_count(), "load_1min": load,
              "best": best, "runs": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "flow_overhead.json").write_text(json.dumps(result, indent=2))
    print(f"{args.stages}-stage chain, best of {args.repeats}, {os.cpu_count()} CPUs, load {load}\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
