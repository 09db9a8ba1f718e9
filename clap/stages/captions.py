"""DVC stage `captions`: data/manifest/normalized.jsonl -> data/manifest/captions.jsonl.

    python -m clap.stages.captions [--params params.yaml]

Fills each row's ``augmented`` captions (template / keyword-to-caption, de-biased) as set by the
top-level ``caption_augmentation`` and the ``captions`` section; writes a summary to
reports/data/captions.json. In k2c mode with ``captions.k2c_model: null`` the stand-in the
``k2c_model`` stage trained (``--k2c-standin``, data/models/k2c) makes the k2c captions; the summary's
``k2c_model_used`` / ``k2c_standin`` say which model did. Exits 1 with a message naming the fix when
the k2c model is unavailable.
"""

from __future__ import annotations

import sys
from pathlib import Path

from clap.data.captions import CaptionConfig, CaptionError, caption_manifest
from clap.params import load_params
from clap.stages.common import run_stage, stage_parser


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("captions", __doc__, progress=True)
    parser.add_argument("--input", type=Path, default=Path("data/manifest/normalized.jsonl"))
    parser.add_argument("--output", type=Path, default=Path("data/manifest/captions.jsonl"))
    parser.add_argument("--report", type=Path, default=Path("reports/data/captions.json"))
    parser.add_argument("--k2c-standin", type=Path, default=Path("data/models/k2c"),
                        help="the k2c_model stage's folder, used in k2c mode when captions.k2c_model is null")
    args = parser.parse_args(argv)

    def work() -> None:
        cfg = CaptionConfig.from_params(load_params(args.params))
        caption_manifest(args.input, args.output, cfg, report=args.report, progress=not args.no_progress,
                         standin_dir=args.k2c_standin)

    return run_stage("captions", work, (CaptionError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
