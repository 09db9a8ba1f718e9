"""DVC stage `k2c_model`: the keyword-to-caption stand-in, data/manifest/normalized.jsonl -> data/models/k2c.

    python -m clap.stages.k2c_model [--params params.yaml]

Trains a small T5 (``captions.k2c_standin``) on the (labels -> captions) pairs of the train clips that
carry both, for the captions stage to use when ``caption_augmentation: k2c`` and ``captions.k2c_model``
is null (see clap.data.k2c_standin). It runs whatever the mode (DVC deps are static) and takes
seconds on the embedded corpus; without such clips it writes an untrained marker and succeeds.
"""

from __future__ import annotations

import sys
from pathlib import Path

from clap.data.captions import CaptionConfig, CaptionError
from clap.data.k2c_standin import StandinConfig, train_standin, training_pairs, write_untrained
from clap.data.manifest import read_manifest
from clap.params import load_params
from clap.stages.common import run_stage, stage_parser


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("k2c_model", __doc__)
    parser.add_argument("--input", type=Path, default=Path("data/manifest/normalized.jsonl"))
    parser.add_argument("--out", type=Path, default=Path("data/models/k2c"))
    args = parser.parse_args(argv)

    def work() -> None:
        captions = CaptionConfig.from_params(load_params(args.params))
        cfg = StandinConfig.from_mapping(captions.k2c_standin)
        data = training_pairs(read_manifest(args.input), captions.k2c_input_format)
        if data.pairs:
            train_standin(data, cfg, args.out, captions.k2c_input_format)
        else:
            write_untrained(args.out, f"{args.input}: no train clip has both labels and captions")

    return run_stage("k2c_model", work, (CaptionError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
