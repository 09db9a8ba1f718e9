"""The Prefect flow `clap` and its deployment `full-pipeline`, against a real Prefect server and DVC.

Quick tests drive clap.orchestrate on a small DVC project of their own; the end-to-end tests serve
the deployment from a copy of this repository (tiny corpus, data stages) and run it with
`prefect deployment run --watch`, as a user would.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from clap.orchestrate import (
    RAN,
    UP_TO_DATE,
    PipelineError,
    StageFailed,
    StageOutcome,
    pipeline_stages,
    render_metrics_markdown,
    repro_stage,
    run_experiment,
)
from clap.overrides import set_args
from tests.prefect_server import (
    PrefectServer,
    flow_run_id_from_output,
    free_port,
    prefect_server,
    run_cli,
    serving,
)
from tests.repo_copy import REPO_ROOT, TINY_CORPUS, copy_repo, run

# --- a small DVC pipeline with the shape of the real one ------------------------------------------

TOY_STAGE = textwrap.dedent('''\
    """Toy stage: reads params.yaml, writes its outs; a missing source folder fails like ingest does."""
    import json, sys
    from pathlib import Path
    import yaml

    stage = sys.argv[1]
    params = yaml.safe_load(Path("params.yaml").read_text())
    print(f"{stage}: starting", flush=True)
    print(f"{stage}: progress on stderr", file=sys.stderr, flush=True)
    Path("data").mkdir(exist_ok=True)
    if stage == "prepare":
        Path("data/prepared.txt").write_text(str(params["prepare"]["n"]))
    elif stage == "square":
        source = Path(params["square"]["source"])
        if not source.is_dir():
            print(f"{source}: source folder not found (check params.yaml: square.source)", file=sys.stderr)
            sys.exit(1)
        n = int(Path("data/prepared.txt").read_text())
        Path("data/squared.txt").write_text(str(n * n * params["scale"]))
    elif stage == "side":
        Path("data/side.txt").write_text("side")
    elif stage == "report":
        Path("reports/toy").mkdir(parents=True, exist_ok=True)
        value = int(Path("data/squared.txt").read_text())
        metrics = {"value": value, "retrieval": {"R@1": value / 100}}
        Path("reports/toy/metrics.json").write_text(json.dumps(metrics))
''')

TOY_DVC = {
    "stages": {
        "prepare": {"cmd": "python toy_stage.py prepare", "deps": ["toy_stage.py"],
                    "params": ["prepare"], "outs": ["data/prepared.txt"]},
        "square": {"cmd": "python toy_stage.py square", "deps": ["data/prepared.txt", "toy_stage.py"],
                   "params": ["scale", "square"], "outs": ["data/squared.txt"]},
        "side": {"cmd": "python toy_stage.py side", "deps": ["toy_stage.py"], "outs": ["data/side.txt"]},
        "report": {"cmd": "python toy_stage.py report", "deps": ["data/squared.txt", "data/side.txt"],
                   "metrics": [{"reports/toy/metrics.json": {"cache": False}}]},
    }
}
TOY_PARAMS = {"scale": 2, "prepare": {"n": 3}, "square": {"source": "."}}
TOY_STAGES = ["prepare", "square", "side", "report"]
DATA_STAGES = ["corpus", "ingest", "normalize", "k2c_model", "captions", "shards"]


def write_toy_pipeline(root: Path) -> None:
    (root / "toy_stage.py").write_text(TOY_STAGE)
    (root / "dvc.yaml").write_text(yaml.safe_dump(TOY_DVC, sort_keys=False))
    (root / "params.yaml").write_text(yaml.safe_dump(TOY_PARAMS, sort_keys=False))


def commit_all(root: Path, message: str) -> None:
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "--allow-empty", "-m", message], root)


def set_params(root: Path, **changes: object) -> str:
    """Change top-level params in params.yaml; returns the old text to restore."""
    path = root / "params.yaml"
    old = path.read_text()
    params = yaml.safe_load(old)
    params.update(changes)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return old


@pytest.fixture(scope="module")
def toy_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    run(["git", "init", "-q", "-b", "main"], root)
    run([sys.executable, "-m", "dvc", "init", "-q"], root)
    write_toy_pipeline(root)
    commit_all(root, "toy pipeline")
    return root


# --- quick tests of the orchestration helpers -------------------------------------------------------

def test_pipeline_stages_come_from_dvc(toy_repo: Path) -> None:
    # DVC's own plan, from another DVC project's directory (this one): targets anchor at the toy repo
    assert Path.cwd() != toy_repo
    assert pipeline_stages(toy_repo) == TOY_STAGES
    # a target brings what it depends on, nothing else, whichever way it is named
    assert pipeline_stages(toy_repo, ["square"]) == ["prepare", "square"]
    assert pipeline_stages(toy_repo, ["dvc.yaml:report", "side"]) == TOY_STAGES
    with pytest.raises(PipelineError, match="no-such-stage"):
        pipeline_stages(toy_repo, ["no-such-stage"])
    with pytest.raises(FileNotFoundError, match="not a DVC repository"):
        pipeline_stages(toy_repo / "data")


def test_stages_in_a_cycle_are_named(tmp_path: Path) -> None:
    run(["git", "init", "-q", "-b", "main"], tmp_path)
    run([sys.executable, "-m", "dvc", "init", "-q"], tmp_path)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "a": {"cmd": "echo", "deps": ["b.txt"], "outs": ["a.txt"]},
        "b": {"cmd": "echo", "deps": ["a.txt"], "outs": ["b.txt"]},
    }}))
    with pytest.raises(PipelineError, match="cycle"):
        pipeline_stages(tmp_path)


def test_repro_stage_streams_output_and_lets_dvc_skip(toy_repo: Path) -> None:
    lines: list[tuple[str, str]] = []
    first = repro_stage(toy_repo, "prepare", on_line=lambda stream, line: lines.append((stream, line)))
    assert first.status == RAN
    assert ("stdout", "prepare: starting") in lines
    assert ("stderr", "prepare: progress on stderr") in lines
    assert (toy_repo / "data/prepared.txt").read_text() == "3"
    assert repro_stage(toy_repo, "prepare").status == UP_TO_DATE


def test_failing_stage_raises_with_its_own_message(toy_repo: Path) -> None:
    old = set_params(toy_repo, square={"source": "data/raw/missing"})
    try:
        with pytest.raises(StageFailed) as failure:
            repro_stage(toy_repo, "square")
    finally:
        (toy_repo / "params.yaml").write_text(old)
    assert failure.value.stage == "square"
    message = str(failure.value)
    assert "data/raw/missing: source folder not found (check params.yaml: square.source)" in message
    assert "stage 'square' failed" in message


def test_overrides_become_dvc_set_params() -> None:
    args = set_args({"fusion": True, "train": {"epochs": 2, "lr": 1e-4}, "text_encoder": "bert-base-uncased"})
    assert args == ["-S", "fusion=true", "-S", "train.epochs=2", "-S", "train.lr=0.0001",
                    "-S", "text_encoder=bert-base-uncased"]
    with pytest.raises(ValueError, match="not a params key"):
        set_args({"a=b": 1})


def test_experiment_outcome_comes_from_its_dvc_lock(toy_repo: Path) -> None:
    """What an experiment re-ran is read off the dvc.lock DVC committed for it, not off its output."""
    for stage in TOY_STAGES:
        repro_stage(toy_repo, stage)
    commit_all(toy_repo, "toy baseline")
    outcome = run_experiment(toy_repo, {"scale": 3}, "scale-3")
    assert [(s.stage, s.status) for s in outcome.stages] == [
        ("prepare", UP_TO_DATE), ("square", RAN), ("side", UP_TO_DATE), ("report", RAN)]
    assert yaml.safe_load((toy_repo / "params.yaml").read_text())["scale"] == 2  # --temp: workspace untouched
    shown = json.loads(run([sys.executable, "-m", "dvc", "exp", "show", "--json"], toy_repo).stdout)
    assert "scale-3" in json.dumps(shown)


def test_metrics_markdown_tables() -> None:
    show = {"": {"data": {
        "reports/eval/retrieval.json": {"data": {"clotho": {"t2a": {"R@1": 0.18234, "mAP@10": 0.3}}}},
        "reports/train/metrics.json": {"error": {"type": "FileNotFoundError", "msg": "no such file"}},
    }}}
    stages = [StageOutcome("ingest", UP_TO_DATE, 1.2), StageOutcome("train", RAN, 61.0)]
    markdown = render_metrics_markdown(show, stages)
    assert "| ingest | up to date | 1.2 |" in markdown
    assert "| reports/eval/retrieval.json | clotho.t2a.R@1 | 0.1823 |" in markdown
    assert "`reports/train/metrics.json`: no such file" in markdown

    diff = {"params": {"params.yaml": {"fusion": {"old": False, "new": True}}},
            "metrics": {"reports/eval/retrieval.json": {"clotho.t2a.R@1": {"old": 0.18, "new": 0.2, "diff": 0.02}}}}
    markdown = render_metrics_markdown(show, stages, experiment="fusion-on", diff=diff)
    assert "# CLAP pipeline: experiment `fusion-on`" in markdown
    assert "| params.yaml | fusion | false | true | - |" in markdown
    assert "| reports/eval/retrieval.json | clotho.t2a.R@1 | 0.18 | 0.2 | 0.02 |" in markdown


# --- end to end: a real server, the served deployment, `prefect deployment run --watch` -----------

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    with prefect_server(tmp_path_factory.mktemp("prefect-home")) as running:
        yield running


@pytest.fixture(scope="module")
def served_repo(server: PrefectServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of this repository on the tiny corpus, its deployment served against ``server``."""
    root = copy_repo(tmp_path_factory.mktemp("served") / "clap", TINY_CORPUS)
    with serving(server, root, root.parent / "serve.log"):
        yield root


def deployment_run(server: PrefectServer, repo: Path, **params: object) -> tuple[subprocess.CompletedProcess[str], dict]:
    """``prefect deployment run clap/full-pipeline --watch`` with JSON params; the CLI's result and the run."""
    args = ["deployment", "run", "clap/full-pipeline", "--watch", "--watch-interval", "1"]
    for name, value in params.items():
        args += ["--param", f"{name}={json.dumps(value)}"]
    result = run_cli(server, args, repo)
    flow_run = server.flow_run(flow_run_id_from_output(result.stdout + result.stderr))
    return result, flow_run


@pytest.fixture(scope="module")
def baseline_run(server: PrefectServer, served_repo: Path) -> dict:
    """The data stages through the deployment; the results are committed, as the baseline."""
    result, flow_run = deployment_run(server, served_repo, stages=["shards"])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    commit_all(served_repo, "baseline results")
    return flow_run


@pytest.mark.slow
def test_deployment_runs_every_stage_as_a_task(server: PrefectServer, served_repo: Path, baseline_run: dict) -> None:
    assert baseline_run["state"]["type"] == "COMPLETED"
    assert Path(baseline_run["parameters"]["repo_dir"]).resolve() == served_repo.resolve()
    tasks = {t["name"]: t for t in server.task_runs(baseline_run["id"])}
    assert set(tasks) == {*DATA_STAGES, "metrics-artifact"}  # nothing past the target `shards`
    assert all(t["state"]["type"] == "COMPLETED" for t in tasks.values())
    for upstream, downstream in zip(DATA_STAGES, DATA_STAGES[1:]):
        assert tasks[upstream]["end_time"] <= tasks[downstream]["start_time"], (upstream, downstream)

    assert (served_repo / "data/shards/index.json").is_file()
    normalized = json.loads((served_repo / "reports/data/normalize.json").read_text())
    logs = "\n".join(server.logs(baseline_run["id"]))
    assert "> python -m clap.stages.normalize" in logs  # DVC's and the stage's output is in the run log

    [artifact] = server.artifacts("clap-metrics", baseline_run["id"])
    assert artifact["type"] == "markdown"
    assert f"| reports/data/normalize.json | written | {normalized['written']} |" in artifact["data"]
    assert "| normalize | ran |" in artifact["data"]


@pytest.mark.slow
def test_overrides_run_a_dvc_experiment_next_to_the_baseline(server: PrefectServer, served_repo: Path,
                                                             baseline_run: dict) -> None:
    params_before = (served_repo / "params.yaml").read_text()
    written = json.loads((served_repo / "reports/data/normalize.json").read_text())["written"]
    result, flow_run = deployment_run(
        server, served_repo, stages=["captions"], overrides={"captions": {"template": "a recording of {labels}"}},
        experiment_name="recording-template", retries=0,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert flow_run["state"]["type"] == "COMPLETED"
    assert {t["name"] for t in server.task_runs(flow_run["id"])} == {"experiment", "metrics-artifact"}
    [artifact] = server.artifacts("clap-metrics", flow_run["id"])
    assert "| params.yaml | captions.template | the sound of {labels} | a recording of {labels} |" in artifact["data"]
    assert f"| reports/data/normalize.json | written | {written} | {written} | 0 |" in artifact["data"]
    # the workspace keeps the baseline: a later plain run is not silently the experiment
    assert (served_repo / "params.yaml").read_text() == params_before
    shown = run([sys.executable, "-m", "dvc", "exp", "show", "--json"], served_repo).stdout
    assert "recording-template" in shown


@pytest.mark.slow
def test_failing_stage_fails_the_run_with_its_message(server: PrefectServer, served_repo: Path, baseline_run: dict) -> None:
    old = set_params(served_repo, sources=[{"name": "builtin", "kind": "builtin", "path": "data/raw/missing"}])
    try:
        result, flow_run = deployment_run(server, served_repo, stages=["shards"], retries=1, retry_delay_seconds=0)
    finally:
        (served_repo / "params.yaml").write_text(old)
        run(["git", "checkout", "--", "."], served_repo)  # DVC removed the failed stage's outs
        run([sys.executable, "-m", "dvc", "checkout", "-q", "ingest"], served_repo)
    assert result.returncode != 0
    assert flow_run["state"]["type"] == "FAILED"
    message = flow_run["state"]["message"]
    assert "stage 'ingest' failed" in message
    assert "data/raw/missing" in message and "not found" in message  # the stage's own words
    tasks = {t["name"]: t for t in server.task_runs(flow_run["id"])}
    assert tasks["ingest"]["state"]["type"] == "FAILED"
    assert tasks["ingest"]["run_count"] == 2  # retried once, as the flow parameter asked
    assert "normalize" not in tasks  # nothing runs after a failed stage
    # the stage before it was up to date: DVC's cache decided, the task only asked
    assert "stage 'corpus': up to date" in "\n".join(server.logs(flow_run["id"]))


@pytest.mark.slow
def test_serve_starts_a_local_server_when_none_answers(tmp_path: Path) -> None:
    """`python -m flows.serve` alone: starts a server (state in <repo>/.prefect), serves, stops both."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "dvc.yaml").write_text("stages: {}\n")
    probe = PrefectServer(api_url=f"http://127.0.0.1:{free_port()}/api", home=repo / ".prefect")
    env = probe.env()
    del env["PREFECT_HOME"]  # the default: <repo>/.prefect
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "flows.serve", "--repo-dir", str(repo)], cwd=REPO_ROOT,
            env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        deployment = probe.wait_for_deployment("clap", "full-pipeline", 150, serve, log)
        assert deployment["parameters"]["repo_dir"] == str(repo.resolve())
        assert (repo / ".prefect/prefect.db").is_file()
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)
    # a clean stop; Prefect's runner may hand the interrupt back as SIGINT once it has cleaned up
    assert serve.returncode in (0, -signal.SIGINT), log.read_text()[-3000:]
    assert "stopping the Prefect server" in log.read_text()
    # the server it started is gone with it
    with pytest.raises(httpx.ConnectError):
        probe.get("health")
