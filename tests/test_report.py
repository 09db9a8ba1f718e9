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
