"""The markdown report: our figures beside the paper's."""

from __future__ import annotations

from pathlib import Path

from clap.report.report import build_report, group_by_set, paper_rows
from clap.report.writer import write_metrics


def test_report_puts_ours_beside_the_paper(tmp_path: Path) -> None:
    write_metrics(tmp_path / "reports/eval/retrieval.json",
                  {"clotho_test.t2a_r1": 0.15, "clotho_test.a2t_r1": 0.2, "builtin_captions_test.t2a_r1": 0.3})
    write_metrics(tmp_path / "reports/eval/zeroshot.json", {"esc50.top1": 0.93, "esc50.top5": 0.99})
    report = build_report(tmp_path, with_experiments=False)
    assert "| clotho_test (Clotho text->audio R@1) | 15.0 | 18.2 | -3.2 |" in report
    assert "| esc50 (ESC-50 zero-shot top-1) | 93.0 | 91.0 | +2.0 |" in report
    assert "| builtin_captions_test | 30.0 |" in report
    assert "Supervised fine-tune" not in report  # no finetune metrics, no section


def test_sets_without_a_published_figure_say_so() -> None:
    metrics = {"builtin_esc.top1": 0.5}
    assert group_by_set(metrics) == {"builtin_esc": {"top1": 0.5}}
    assert paper_rows("zeroshot", metrics) == []


def test_a_partial_set_is_marked_and_never_placed_beside_the_paper(tmp_path: Path) -> None:
    # an 8-class remnant of a 13-class ESC-50-style set, as eval_zeroshot writes it
    write_metrics(tmp_path / "reports/eval/zeroshot.json", {
        "esc50.top1": 0.95, "esc50.top5": 1.0, "esc50.complete": False, "esc50.clips_expected": 49,
        "esc50.clips_scored": 26, "esc50.classes_expected": 13, "esc50.classes_scored": 8,
        "esc50.dur_le10s.top1": 0.95, "esc50.dur_le10s.n": 26,
        "us8k.top1": 0.7, "us8k.complete": True, "us8k.clips_expected": 10, "us8k.clips_scored": 10,
    })
    report = build_report(tmp_path, with_experiments=False)
    assert "| esc50 | 95.0 | 100.0 | partial: 26/49 clips, 8/13 classes |" in report
    assert "| esc50.dur_le10s | 95.0 | — |  |" in report
    assert "esc50 (ESC-50 zero-shot top-1)" not in report          # not beside the paper's 91.0
    assert "- esc50 is partial: 26/49 clips, 8/13 classes scored: not comparable with the paper's ESC-50" in report
    assert "| us8k (UrbanSound8K zero-shot top-1) | 70.0 | 77.0 | -7.0 |" in report  # complete: compared


def _exp(name: str | None, rev: str, params: dict, metrics: dict, children: list | None = None) -> dict:
    """One entry of `dvc exp show --json` (DVC 3): params and metrics files under ``data``."""
    node = {"rev": rev, "name": name, "error": None, "experiments": children,
            "data": {"rev": rev, "params": {"params.yaml": {"data": params}},
                     "metrics": {file: {"data": values} for file, values in metrics.items()}}}
    return node


def _table3_run(row: str, seed: int, fusion: bool, zs: float, zs_long: float, r10: float) -> dict:
    params = {"seed": seed, "fusion": fusion, "train_sets": ["builtin_captions"], "caption_augmentation": "none",
              "train": {"val_set": "builtin_captions/val"}, "eval_retrieval": {"sets": ["builtin_captions/test"]},
              "eval_zeroshot": {"sets": [{"name": "builtin_esc", "shards": "builtin_esc/test"}]}}
    metrics = {"reports/train/metrics.json": {"val_t2a_map10": 0.25},
               "reports/eval/retrieval.json": {"builtin_captions_test.t2a_r10": r10, "builtin_captions_test.complete": True,
                                               "builtin_captions_test.dur_gt10s.t2a_r10": r10 / 2},
               "reports/eval/zeroshot.json": {"builtin_esc.top1": zs, "builtin_esc.dur_gt10s.top1": zs_long,
                                              "builtin_esc.dur_le10s.top1": zs, "builtin_esc.complete": True}}
    return _exp(f"table3-{row}-s{seed}", f"{row}{seed}", params, metrics)


def test_table3_from_a_hand_made_exp_show(tmp_path: Path) -> None:
    from clap.report.table3 import write_table3
    from tests.repo_copy import REPO_ROOT

    runs = [_table3_run("captions-only", s, False, zs, zs_long, 0.5) for s, zs, zs_long in
            ((1, 0.10, 0.00), (2, 0.20, 0.10), (3, 0.30, 0.20))]
    runs += [_table3_run("captions-only-fusion", s, True, zs, zs_long, 0.6) for s, zs, zs_long in
             ((1, 0.20, 0.40), (2, 0.20, 0.40), (3, 0.20, 0.40))]
    # as dvc 3 lists them: one group per experiment with its executor's state; a queued (or running)
    # experiment shows the baseline's committed metrics, so it must not count as a seed
    queued = _table3_run("captions-only", 4, False, 0.9, 0.9, 0.9)
    groups = [{"revs": [run], "name": run["name"], "executor": {"state": "success"}} for run in runs[:-1]]
    groups += [{"revs": [runs[-1]], "name": runs[-1]["name"], "executor": None},
               {"revs": [queued], "name": queued["name"], "executor": {"state": "queued"}}]
    baseline = _exp("main", "abc1234", {"seed": 3407}, {"reports/eval/zeroshot.json": {"builtin_esc.top1": 0.9}},
                    children=groups)
    exp_show = [_exp(None, "workspace", {"seed": 3407}, {}), baseline]
    markdown, figure = write_table3(REPO_ROOT / "experiments/table3.yaml", exp_show, tmp_path)
    text = markdown.read_text()
    # zero-shot top-1 of captions-only over seeds 0.1, 0.2, 0.3: mean 20.0, sample std 10.0
    assert "| captions-only | train_sets=['builtin_captions'], fusion=False, caption_augmentation=none | 3 | 25.0 ± 0.0 |" in text
    assert "| 20.0 ± 10.0 |" in text.split("\n## By clip duration")[0]
    by_duration = text.split("## By clip duration")[1].split("##")[0]
    assert "| captions-only-fusion | — | — | 20.0 ± 0.0 | 30.0 ± 0.0 | — | 40.0 ± 0.0 |" in by_duration
    # fusion on minus off, long clips: 40.0 - 10.0 = +30.0 points of zero-shot top-1
    assert "- captions-only-fusion vs captions-only: " in text and "zero-shot top-1 > 10 s: +30.0" in text
    assert "`builtin_captions/val` (`train.val_set`, a validation split)" in text
    assert "never used to select" in text and "Seeds: 1, 2, 3" in text and "3 per row" in text
    assert "Rows without runs: plus-labels-template, plus-labels-template-fusion, plus-labels-k2c" in text
    assert "| 90.0" not in text  # the baseline is no seed of any row
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_seeded_experiment_names_are_the_ones_table3_reads(capsys) -> None:  # noqa: ANN001 - pytest fixture
    from clap.experiments import main as experiments_main
    from clap.report.table3 import _SEEDED
    from tests.repo_copy import REPO_ROOT

    assert experiments_main(["list", str(REPO_ROOT / "experiments/table3.yaml"), "--repo", str(REPO_ROOT),
                             "--seeds", "3407,7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    runnable = [line for line in lines if "seed=" in line]
    assert len(runnable) == 12  # 6 CPU rows x 2 seeds (the k2c rows run with the stand-in k2c model)
    for line in runnable:
        match = _SEEDED.match(line.split()[0])
        assert match and match["table"] == "3" and line.endswith(f"-S seed={match['seed']}")
    assert {_SEEDED.match(line.split()[0])["seed"] for line in runnable} == {"3407", "7"}


def test_experiments_table_takes_whole_set_figures() -> None:
    from clap.report.report import _find

    flat = {"reports/eval/zeroshot.json:builtin_esc.balanced_top1": 0.1, "reports/eval/zeroshot.json:builtin_esc.dur_gt10s.top1": 0.2,
            "reports/eval/zeroshot.json:builtin_esc.top1": 0.3, "reports/train/metrics.json:val_t2a_r1": 0.4}
    assert _find(flat, "top1") == 0.3
    assert _find(flat, "val_t2a_r1") == 0.4 and _find(flat, "t2a_r1") is None
