"""The Prefect flow ``clap``: the DVC pipeline as one task per stage, its metrics as an artifact.

DVC does the work and decides what is up to date; Prefect adds a schedule-able, observable run with
retries. Served as the deployment ``clap/full-pipeline`` by ``python -m flows.serve``.

Two modes:

- baseline (no ``overrides``): every stage of ``stages`` (default: the whole ``dvc.yaml``) plus what
  it depends on runs as its own task, named after the stage, in the order DVC plans: a stage that
  ``dvc status`` reports changed runs through ``dvc repro --single-item <stage>``, an up-to-date one
  is left alone. The workspace's ``reports/`` is updated and the artifact ``clap-metrics`` shows
  ``dvc metrics show``.
- experiment (``overrides`` given, e.g. ``{"fusion": true}``): one task ``experiment`` runs
  ``dvc exp run --temp -S fusion=true --name <experiment_name>``. ``--temp`` keeps the workspace
  (and later baseline runs) untouched; the artifact shows ``dvc exp diff HEAD <name>``: params and
  metrics of the baseline next to the experiment's. ``dvc exp apply <name>`` brings it into the
  workspace.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from clap.orchestrate import (
    LineCallback,
    StageOutcome,
    check_experiment_name,
    experiment_diff,
    metrics_show,
    pipeline_stages,
    render_metrics_markdown,
    repro_stage,
    run_experiment,
)

FLOW_NAME = "clap"
DEPLOYMENT_NAME = "full-pipeline"
ARTIFACT_KEY = "clap-metrics"


def _forward_to(logger: logging.Logger | logging.LoggerAdapter) -> LineCallback:
    """Send each line DVC and the stage print to the task's run log, at a level read off the line."""

    def forward(stream: str, line: str) -> None:
        if not line.strip():
            return
        head = line.lstrip()[:8].upper()
        if head.startswith("ERROR"):
            logger.error(line)
        elif head.startswith("WARNING"):
            logger.warning(line)
        else:
            logger.info(line)

    return forward


@task(name="stage", cache_policy=NO_CACHE, persist_result=False)
def dvc_stage(repo_dir: str, stage: str) -> StageOutcome:
    """One DVC stage: reproduced when DVC reports it changed (deps, params, command or outs)."""
    logger = get_run_logger()
    outcome = repro_stage(repo_dir, stage, on_line=_forward_to(logger))
    logger.info("stage '%s': %s (%.1f s)", stage, outcome.status, outcome.seconds)
    return outcome


@task(name="experiment", task_run_name="experiment", cache_policy=NO_CACHE, persist_result=False)
def dvc_experiment(repo_dir: str, overrides: dict[str, Any], name: str, targets: list[str]) -> list[StageOutcome]:
    """``dvc exp run --temp`` with the overrides; DVC runs the changed stages in its own order."""
    logger = get_run_logger()
    result = run_experiment(repo_dir, overrides, name, targets, on_line=_forward_to(logger))
    logger.info("experiment '%s' finished in %.1f s; ran: %s", name, result.seconds, ", ".join(result.ran) or "none")
    return result.stages


@task(name="metrics-artifact", task_run_name="metrics-artifact", cache_policy=NO_CACHE, persist_result=False)
def publish_metrics(repo_dir: str, stages: list[StageOutcome], experiment: str | None) -> str:
    """Publish the metrics table (or the experiment's diff) as the markdown artifact ``clap-metrics``."""
    show = metrics_show(repo_dir)
    diff = experiment_diff(repo_dir, experiment) if experiment else None
    markdown = render_metrics_markdown(show, stages, experiment=experiment, diff=diff)
    description = f"experiment {experiment} vs HEAD" if experiment else f"metrics of {repo_dir}"
    create_markdown_artifact(markdown=markdown, key=ARTIFACT_KEY, description=description)
    return markdown


def _experiment_name(requested: str | None) -> str:
    # the flow run's generated name (e.g. "witty-sloth") ties the DVC experiment to the Prefect run
    name = requested or flow_run.get_name() or time.strftime("clap-%Y%m%d-%H%M%S")
    return check_experiment_name(name)  # before any task: a bad name is no transient failure


@flow(name=FLOW_NAME, description=__doc__.split("\n\n")[0], validate_parameters=True)
def clap_flow(
    stages: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    experiment_name: str | None = None,
    repo_dir: str | None = None,
    retries: int = 1,
    retry_delay_seconds: float = 30.0,
) -> dict[str, Any]:
    """Run the CLAP pipeline with DVC.

    Args:
        stages: targets to run, each with everything upstream of it (like ``dvc repro <target>``);
            empty or None runs the whole pipeline.
        overrides: params to change for this run only (``{"fusion": true, "train.epochs": 2}``);
            when given, the run is a DVC experiment instead of a baseline repro.
        experiment_name: name of the DVC experiment (default: the flow run's name).
        repo_dir: the project's root (default: the serving process's working directory).
        retries: how many times a failed stage (or experiment) is retried, for transient failures.
        retry_delay_seconds: wait before each retry.
    """
    logger = get_run_logger()
    repo = str(Path(repo_dir or Path.cwd()).resolve())
    targets = list(stages or [])
    if overrides:
        name = _experiment_name(experiment_name)
        logger.info("experiment '%s' in %s with overrides %s", name, repo, overrides)
        run = dvc_experiment.with_options(retries=retries, retry_delay_seconds=retry_delay_seconds)
        outcomes = run(repo, dict(overrides), name, targets)
    else:
        name = None
        order = pipeline_stages(repo, targets)
        logger.info("running %d stage(s) in %s: %s", len(order), repo, " -> ".join(order))
        outcomes = []
        for stage in order:
            run = dvc_stage.with_options(
                name=stage, task_run_name=stage, retries=retries, retry_delay_seconds=retry_delay_seconds,
            )
            outcomes.append(run(repo, stage))
    publish_metrics(repo, outcomes, name)
    return {
        "repo_dir": repo,
        "experiment": name,
        "stages": [o.as_dict() for o in outcomes],
        "artifact": ARTIFACT_KEY,
    }
