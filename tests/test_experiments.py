"""The paper's tables as params variants: every row names real params keys and queues in DVC."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from clap.experiments import ExperimentRow, check_overrides, load_table, main, set_args, set_values
from tests.repo_copy import REPO_ROOT, committed_params, copy_repo, run

TABLES = sorted((REPO_ROOT / "experiments").glob("table*.yaml"))
K2C_ROWS = ("table3-plus-labels-k2c", "table3-plus-labels-k2c-fusion")


@pytest.mark.parametrize("table", TABLES, ids=lambda p: p.stem)
@pytest.mark.parametrize("variant", ["cpu", "full"])
def test_every_row_overrides_existing_params(table: Path, variant: str) -> None:
    rows = load_table(table, variant)
    assert rows and len({r.name for r in rows}) == len(rows)
    check_overrides([r for r in rows if r.overrides is not None], committed_params())


def test_unknown_key_is_named() -> None:
    with pytest.raises(ValueError, match="no_such_switch"):
        check_overrides([ExperimentRow("9", "x", {"no_such_switch": 1})], committed_params())
    with pytest.raises(ValueError, match="captions.no_such_model"):
        check_overrides([ExperimentRow("9", "x", {}, requires=("captions.no_such_model",))], committed_params())


def test_set_args_are_what_dvc_expects() -> None:
    assert set_args({"fusion": True, "train_sets": ["a", "b"], "text_encoder": "minilm"}) == [
        "-S", "fusion=true", "-S", "train_sets=[a, b]", "-S", "text_encoder=minilm"]
    assert set_args({"train": {"epochs": 2, "lr": 1e-4}, "captions.template": "a recording of {labels}"}) == [
        "-S", "train.epochs=2", "-S", "train.lr=0.0001", "-S", "captions.template='a recording of {labels}'"]
    with pytest.raises(ValueError, match="not a params key"):
        set_args({"a=b": 1})


#: Values that a naive writer turns into something else: Hydra (DVC's -S parser) reads ``true``,
#: ``1e-4`` and ``null`` unquoted as non-strings, and has its own quoting and escapes.
TRICKY_VALUES = {
    "name": "minilm", "path": "/models/k2t-base", "hub": "gagan3012/k2t-base", "word_true": "true",
    "word_null": "null", "word_nan": "NaN", "number_text": "1e-4", "version": "1.0",
    "spaces": "a recording of {labels}",
    "quotes": 'it\'s "x"', "comma": "a,b", "empty": "", "colon": "a: b", "star": "x*", "dash": "-x",
    "accent": "sir\u00e8ne", "backslash": "a\\b", "trailing_backslash": "a\\", "backslash_quote": "x\\'y",
    "equals": "a=b", "interpolation": "${x}", "float": 1e-4, "int": 3, "bool": True, "none": None,
    "list": ["a", "b c", "sir\u00e8ne"], "numbers": [1, 2.5], "empty_map": {},
    "records": [{"name": "tags", "multi_label": True}],
}


@pytest.mark.parametrize("key", sorted(TRICKY_VALUES))
def test_set_args_read_back_unchanged_by_dvc(key: str, tmp_path: Path) -> None:
    """Through DVC's own `-S` implementation (Hydra overrides applied to a params file)."""
    from dvc.utils.hydra import apply_overrides

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({key: "placeholder"}))
    values = set_values({key: TRICKY_VALUES[key]})  # what the queue hands DVC's Python API
    assert set_args({key: TRICKY_VALUES[key]}) == ["-S", *values]  # and the `dvc exp run -S` line it prints
    apply_overrides(params, values)
    assert yaml.safe_load(params.read_text())[key] == TRICKY_VALUES[key]


NEEDY_TABLE = {"table": 9, "rows": [
    {"name": "plain", "cpu": {"fusion": True}},
    {"name": "k2c", "cpu": {"caption_augmentation": "k2c"}, "requires": ["captions.k2c_model"]},
    {"name": "gpu-only", "full": {"fusion": True}, "cpu": None},
]}


def test_required_keys_make_a_row_runnable_only_once_given(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "table9.yaml"
    table.write_text(yaml.safe_dump(NEEDY_TABLE, sort_keys=False))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(committed_params()))
    rows = {r.name: r for r in load_table(table, "cpu")}
    assert rows["plain"].runnable and not rows["k2c"].runnable and not rows["gpu-only"].runnable
    given = {r.name: r.with_extra({"captions.k2c_model": "/models/k2t-base"}) for r in rows.values()}
    assert given["k2c"].runnable and given["k2c"].overrides["caption_augmentation"] == "k2c"
    assert not given["gpu-only"].runnable  # no variant: --set cannot make one

    assert main(["list", str(table), "--repo", str(tmp_path)]) == 0
    listed = capsys.readouterr().out
    assert "table9-k2c (not runnable: needs --set captions.k2c_model=...)" in listed
    assert main(["list", str(table), "--repo", str(tmp_path), "--set", "captions.k2c_model=/models/k2t-base"]) == 0
    listed = capsys.readouterr().out
    assert "table9-k2c -S caption_augmentation=k2c -S captions.k2c_model=/models/k2t-base" in listed


def test_queue_puts_the_cpu_rows_in_dvcs_queue(tmp_path: Path) -> None:
    repo = copy_repo(tmp_path / "clap")
    k2c_model = tmp_path / "k2t-base"  # a local keytotext folder, as a user would give it offline
    queued = run(["python", "-m", "clap.experiments", "queue", "experiments/table3.yaml",
                  "--set", f"captions.k2c_model={k2c_model}"], repo)
    status = run(["dvc", "queue", "status"], repo).stdout
    for name in ("table3-captions-only", "table3-plus-labels-template-fusion", *K2C_ROWS):
        assert f"{name} " in status, (name, status, queued.stderr)
    assert "skip" not in queued.stderr
