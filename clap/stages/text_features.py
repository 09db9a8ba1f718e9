"""DVC stage `text_features`: the frozen text tower's output for every distinct training caption, once.

With ``train.freeze_text: true`` (the embedded default) a training step only runs the text
projection on the tower's pooled output, which never changes for a caption. This stage encodes all
captions a run can draw (the allowed caption kinds of ``train_sets``' training shards) with the text
tower exactly as the train stage builds it (preset, ``text_pretrained``, ``init_checkpoint``) and
writes the table to data/features/text (clap.train.text_cache). DVC re-runs it when the captions or
the text settings change and restores it from its cache otherwise, so seeds, audio settings and
schedules share one table; a run takes it only if the tower's fingerprint (weights, tokenizer,
pooling, length limit) matches its own, and encodes any caption the table lacks. The stage does not
read ``seed``: a text tower without pretrained weights (random, so seed-dependent) is built here
from a fixed seed, its table will not match a run's tower, and runs encode its captions themselves.

With ``train.freeze_text: false`` there is nothing to precompute: the table is empty.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from clap.params import load_params
from clap.stages.common import run_stage, stage_parser


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("text_features", __doc__)
    parser.add_argument("--out", type=Path, default=Path("data/features/text"))
    args = parser.parse_args(argv)
    log = logging.getLogger("clap.stages.text_features")

    def work() -> None:
        import shutil

        import torch

        from clap.model.factory import create_training_model
        from clap.train.config import TrainConfig
        from clap.train.data import training_captions
        from clap.train.text_cache import FrozenTextCache
        from clap.train.trainer import loop_config

        config = TrainConfig.from_params(load_params(args.params))
        loop = loop_config(config)
        started = time.perf_counter()
        torch.manual_seed(0)  # only towers without pretrained weights depend on it (see above)
        text_encoder = create_training_model(loop).text_encoder
        cache = FrozenTextCache(text_encoder, "cpu")
        if config.freeze_text:
            captions = training_captions(loop["train_urls"], config.caption_kinds)
            cache.add(captions)
            log.info("encoded %d distinct training captions (%s) with text encoder '%s' in %.1f s",
                     len(cache), ", ".join(config.caption_kinds), config.text_encoder, time.perf_counter() - started)
        else:
            log.info("train.freeze_text is false: the text tower trains, so there is nothing to precompute "
                     "(writing an empty table)")
        if args.out.exists():
            shutil.rmtree(args.out)
        cache.save(args.out, text_encoder_name=config.text_encoder)
        log.info("wrote %s", args.out)

    return run_stage("text_features", work, (ValueError, KeyError))


if __name__ == "__main__":
    raise SystemExit(main())
