"""DVC stage `k2c_model`: the keyword-to-caption stand-in, data/manifest/normalized.jsonl -> data/models/k2c.

    python -m clap.stages.k2c_model [--params params.yaml]

Trains a small T5 (``captions.k2c_standin``) on the (labels -> captions) pairs of the train clips that
carry both, for the captions stage to use when ``caption_augmentation: k2c`` and ``captions.k2c_model``
is null (see clap.data.k2c_standin). It runs whatever the mode (DVC deps are static) and takes
seconds on the embedded corpus; without such clips it writes an untrained marker and succeeds.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from clap.data.captions import CaptionConfig, CaptionError
from clap.data.k2c_standin import StandinConfig, train_standin, training_pairs, write_untrained
from clap.data.manifest import read_manifest
from clap.params import ParamsError, load_params

log = logging.getLogger("clap.stages.k2c_model")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m clap.stages.k2c_model", description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--input", type=Path, default=Path("data/manifest/normalized.jsonl"))
    parser.add_argument("--out", type=Path, default=Path("data/models/k2c"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        params = load_params(args.params)
        captions = CaptionConfig.from_params(params)
        cfg = StandinConfig.from_mapping(captions.k2c_standin)
        data = training_pairs(read_manifest(args.input), captions.k2c_input_format)
        if data.pairs:
            train_standin(data, cfg, args.out, captions.k2c_input_format)
        else:
            write_untrained(args.out, f"{args.input}: no train clip has both labels and captions")
    except (CaptionError, ParamsError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
