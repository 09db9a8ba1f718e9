"""Great Expectations validation of a pandas DataFrame: one generic helper for every data stage.

A stage builds a DataFrame (one row per clip, with whatever derived columns its checks need) and a
list of expectations, then calls :func:`validate_dataframe`. The helper runs them through GX 1.x
(an ephemeral context, a pandas data source, a whole-dataframe batch, a checkpoint), writes

    <report_dir>/<suite_name>.json     the GX validation result, without GX's run times and random
                                       ids (``stable_result``): the same data gives the same bytes
    <report_dir>/docs/index.html       GX data docs for the run (HTML)

and raises :class:`DataValidationError` naming each failed expectation when any fails.

The data docs name their pages after the run time and embed ids, and GX has no switch to leave them
out, so they differ on every run: they are a local view for people (git-ignored, not a DVC output),
while the result JSON is the record that git and dvc.lock track.

GX takes seconds to import and start, so the module creates one data context per process and
reuses it for every call.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:  # pragma: no cover - typing only; GX is imported lazily (it is slow)
    import pandas as pd
    from great_expectations.expectations import Expectation

log = logging.getLogger(__name__)

# GX logs its own start-up at INFO (a hundred lines per import); keep stage logs readable unless
# the user has set a level for it.
if logging.getLogger("great_expectations").level == logging.NOTSET:
    logging.getLogger("great_expectations").setLevel(logging.WARNING)

#: How many unexpected values / row ids a failure message shows per expectation.
MAX_EXAMPLES = 5

_CONTEXT: Any = None

#: Keys of a GX result's ``meta`` that change on every run (times, random ids).
VOLATILE_META_KEYS = ("checkpoint_id", "validation_id", "validation_time", "run_id")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_TIMESTAMP = re.compile(r"^\d{4}-?\d{2}-?\d{2}T\d{2}:?\d{2}:?\d{2}")


class DataValidationError(ValueError):
    """Some expectations failed; ``report`` holds the details, the message lists them."""

    def __init__(self, report: "ValidationReport") -> None:
        self.report = report
        super().__init__(report.describe_failures())


@dataclass
class ExpectationFailure:
    """One failed expectation, summarised for people."""

    expectation_type: str
    column: str | None
    unexpected_count: int | None
    examples: list[Any] = field(default_factory=list)  # a few unexpected values
    rows: list[str] = field(default_factory=list)  # the index column of a few unexpected rows
    exception: str | None = None  # set when the expectation could not be evaluated at all
    observed: Any = None  # the observed value of table/aggregate expectations (row count, mean...)

    def describe(self) -> str:
        target = f" on column '{self.column}'" if self.column else ""
        if self.exception:
            return f"{self.expectation_type}{target}: could not be evaluated ({self.exception})"
        parts = [f"{self.expectation_type}{target}"]
        if self.unexpected_count is not None:
            parts.append(f"{self.unexpected_count} unexpected")
        elif self.observed is not None:
            parts.append(f"observed {self.observed!r}")
        if self.examples:
            parts.append("values " + ", ".join(repr(v) for v in self.examples))
        if self.rows:
            parts.append("rows " + ", ".join(self.rows))
        return ": ".join(parts[:2]) + ("; " + "; ".join(parts[2:]) if len(parts) > 2 else "")


@dataclass
class ValidationReport:
    """The outcome of one suite run over one DataFrame."""

    suite_name: str
    success: bool
    evaluated: int
    failures: list[ExpectationFailure]
    result_path: Path
    docs_path: Path | None

    def describe_failures(self) -> str:
        head = (
            f"suite '{self.suite_name}': {len(self.failures)} of {self.evaluated} expectations failed "
            f"(result: {self.result_path}"
            + (f", docs: {self.docs_path}" if self.docs_path else "")
            + ")"
        )
        return "\n".join([head] + [f"  - {f.describe()}" for f in self.failures])


def _drop_run_stamps(meta: dict[str, Any]) -> None:
    """Remove, at any depth of ``meta``, values that are timestamps or UUIDs (e.g. ge_load_time)."""
    for key in list(meta):
        value = meta[key]
        if isinstance(value, dict):
            _drop_run_stamps(value)
        elif isinstance(value, str) and (_UUID.match(value) or _TIMESTAMP.match(value)):
            del meta[key]


def stable_result(result: Mapping[str, Any]) -> dict[str, Any]:
    """A GX validation result (``to_json_dict()``) without what changes from run to run: the run
    id and times, the checkpoint/validation ids, batch load times and each expectation's random id.
    What was checked and what was found (types, kwargs, observed values, success) all stay."""
    stable = copy.deepcopy(dict(result))
    meta = stable.get("meta")
    if isinstance(meta, dict):
        for key in VOLATILE_META_KEYS:
            meta.pop(key, None)
        _drop_run_stamps(meta)
    for item in stable.get("results") or []:
        config = item.get("expectation_config") if isinstance(item, dict) else None
        if isinstance(config, dict):
            config.pop("id", None)
    return stable


def _gx_context() -> Any:
    """The process's one ephemeral GX context (analytics and progress bars off: offline, quiet logs)."""
    global _CONTEXT
    if _CONTEXT is None:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        _CONTEXT = context
    return _CONTEXT


def _as_expectation(spec: "Expectation | Mapping[str, Any]") -> "Expectation":
    """Accept GX expectation objects, or plain dicts ``{"type": "expect_...", **kwargs}``.

    Dicts let a caller describe its suite without importing GX itself.
    """
    from great_expectations.expectations import Expectation
    from great_expectations.expectations.registry import get_expectation_impl

    if isinstance(spec, Expectation):
        # GX binds an expectation to the suite it is added to; copy so callers may reuse theirs
        return spec.copy(deep=True)
    if isinstance(spec, Mapping):
        kwargs = dict(spec)
        kind = kwargs.pop("type", None)
        if not kind:
            raise ValueError(f"expectation {spec!r}: missing 'type' (e.g. 'expect_column_values_to_be_unique')")
        return get_expectation_impl(kind)(**kwargs)
    raise TypeError(f"expectation {spec!r}: expected a GX Expectation or a mapping with a 'type' key")


def _exception_message(info: Any) -> str | None:
    """GX reports errors flat (``{"raised_exception": ...}``) or per metric (``{metric_id: {...}}``)."""
    if not isinstance(info, Mapping):
        return None
    if "raised_exception" in info:
        return str(info.get("exception_message")) if info.get("raised_exception") else None
    messages = {_exception_message(v) for v in info.values()} - {None}
    return "; ".join(sorted(messages)) or None  # type: ignore[arg-type]


def _summarise(result: Any, index_column: str | None) -> ExpectationFailure:
    config = result.expectation_config
    details = result.result or {}
    exception = _exception_message(result.exception_info)
    rows: list[str] = []
    if index_column:
        for item in details.get("partial_unexpected_index_list") or []:
            if isinstance(item, Mapping) and index_column in item:
                rows.append(str(item[index_column]))
    examples = list(details.get("partial_unexpected_list") or [])
    return ExpectationFailure(
        expectation_type=config.type,
        column=config.kwargs.get("column"),
        unexpected_count=details.get("unexpected_count"),
        examples=examples[:MAX_EXAMPLES],
        rows=rows[:MAX_EXAMPLES],
        exception=exception,
        observed=details.get("observed_value"),
    )


def _docs_site(context: Any, site_name: str, directory: Path) -> None:
    if site_name in context.get_site_names():
        context.delete_data_docs_site(site_name)
    context.add_data_docs_site(
        site_name=site_name,
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(directory)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )


def validate_dataframe(
    df: "pd.DataFrame",
    suite_name: str,
    expectations: Sequence["Expectation | Mapping[str, Any]"],
    report_dir: str | Path,
    *,
    index_column: str | None = "id",
    build_docs: bool = True,
    raise_on_failure: bool = True,
) -> ValidationReport:
    """Run ``expectations`` over ``df`` as the GX suite ``suite_name``; write result JSON and data docs.

    ``index_column`` (when ``df`` has it) names the rows of unexpected values in failure messages.
    Raises :class:`DataValidationError` listing each failed expectation unless ``raise_on_failure``
    is false; the result and docs are written either way so a failure can be inspected.
    """
    import great_expectations as gx

    if not expectations:
        raise ValueError(f"suite '{suite_name}': no expectations given")
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    context = _gx_context()

    source = context.data_sources.add_or_update_pandas(name=f"{suite_name}_frames")
    asset = source.add_dataframe_asset(name=suite_name)
    batch = asset.add_batch_definition_whole_dataframe(name="whole_frame")
    suite = context.suites.add_or_update(gx.ExpectationSuite(name=suite_name))
    for spec in expectations:
        suite.add_expectation(_as_expectation(spec))
    definition = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=suite_name, data=batch, suite=suite)
    )

    actions = []
    docs_dir = report_dir / "docs"
    if build_docs:
        # the folder holds this suite's docs only; clear it so stale runs' pages do not pile up
        shutil.rmtree(docs_dir, ignore_errors=True)
        site_name = f"{suite_name}_docs"
        _docs_site(context, site_name, docs_dir.resolve())
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="update_docs", site_names=[site_name]))
    use_index = index_column is not None and index_column in df.columns
    result_format: dict[str, Any] = {"result_format": "SUMMARY"}
    if use_index:
        result_format["unexpected_index_column_names"] = [index_column]
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=suite_name,
            validation_definitions=[definition],
            actions=actions,
            result_format=result_format,
        )
    )
    log.info("validating %d rows against suite '%s' (%d expectations)", len(df), suite_name, len(expectations))
    outcome = checkpoint.run(batch_parameters={"dataframe": df})
    validation = next(iter(outcome.run_results.values()))

    result_path = report_dir / f"{suite_name}.json"
    stable = stable_result(validation.to_json_dict())
    result_path.write_text(json.dumps(stable, indent=2, sort_keys=True, default=str) + "\n")
    failures = [_summarise(r, index_column if use_index else None) for r in validation.results if not r.success]
    report = ValidationReport(
        suite_name=suite_name,
        success=bool(validation.success),
        evaluated=len(validation.results),
        failures=failures,
        result_path=result_path,
        docs_path=(docs_dir / "index.html") if build_docs else None,
    )
    if report.success:
        log.info("suite '%s': all %d expectations passed (%s)", suite_name, report.evaluated, result_path)
    else:
        # the details travel in the exception (or the report); the caller decides how to show them
        log.warning(
            "suite '%s': %d of %d expectations failed (%s)", suite_name, len(failures), report.evaluated, result_path
        )
        if raise_on_failure:
            raise DataValidationError(report)
    return report
