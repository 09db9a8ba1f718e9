"""DVC stage `train`: CLAP pre-training with Ray Train on the shards.

Writes the best model (by validation mAP@10) to data/models/clap and metrics, per-step plot data and
the loss curve to reports/train/.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from clap.params import load_params
from clap.report.writer import plot_lines, write_metrics, write_rows
from clap.stages.common import run_stage, stage_parser
from clap.train.config import TrainConfig
from clap.train.trainer import run_training, shutdown_ray


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("train", __doc__)
    parser.add_argument("--model-out", default="data/models/clap")
    parser.add_argument("--reports", default="reports/train")
    parser.add_argument("--text-features", default=None,
                        help="the text_features stage's table (a frozen text tower's outputs per caption)")
    args = parser.parse_args(argv)

    def work() -> None:
        config = TrainConfig.from_params(load_params(args.params))
        if args.text_features:
            config = replace(config, text_features=args.text_features)
        try:
            result = run_training(config, Path(args.model_out))
        finally:
            shutdown_ray()
        reports = Path(args.reports)
        # the run's name (new every execution) is in the log and the run's folder, not in git-tracked reports
        write_metrics(reports / "metrics.json", result.metrics)
        write_rows(reports / "steps.csv", result.history["steps"],
                   ["step", "epoch", "loss", "lr", "logit_scale", "samples_per_s"])
        write_rows(reports / "val.csv", result.history["val"],
                   ["epoch", "step", "val_t2a_map10", "val_t2a_r1", "val_t2a_r10", "val_a2t_map10", "val_a2t_r1"])
        steps = result.history["steps"]
        plot_lines(reports / "loss.png", {"train loss": ([s["step"] for s in steps], [s["loss"] for s in steps])},
                   title="CLAP training loss", xlabel="step", ylabel="contrastive loss")
        logging.getLogger(__name__).info("model written to %s; val t2a mAP@10 %.4f", result.model_dir,
                                         result.metrics["val_t2a_map10"])

    return run_stage("train", work, timed=True)


if __name__ == "__main__":
    raise SystemExit(main())
