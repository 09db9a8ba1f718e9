"""DVC stage `shards`: data/manifest/captions.jsonl + data/audio -> WebDataset tars under data/shards.

    python -m clap.stages.shards [--params params.yaml]

Writes data/shards/<source>/<split>/NNNNNN.tar with sizes.json per folder and data/shards/index.json.
With ``shards.remote: s3://bucket/prefix`` it then publishes that tree under the prefix (only
changed objects move), so Ray workers anywhere can read it with ``train.shard_root`` set to the prefix.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from clap.data.remote_shards import RemoteShardsConfig, publish_shards
from clap.data.s3 import S3AccessError
from clap.data.shards import ShardConfig, ShardError, shard_manifest
from clap.params import ParamsError, load_params, section

log = logging.getLogger("clap.stages.shards")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m clap.stages.shards", description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--input", type=Path, default=Path("data/manifest/captions.jsonl"))
    parser.add_argument("--out", type=Path, default=Path("data/shards"))
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        params = load_params(args.params)
        # `remote` belongs to the publish step; the rest configures the writer
        cfg = ShardConfig.from_params(params)
        remote = RemoteShardsConfig.from_params(section(params, "shards"))
        shard_manifest(args.input, args.out, cfg, progress=not args.no_progress)
        if remote.remote:
            publish_shards(args.out, remote.remote, progress=not args.no_progress)
    except (ShardError, ParamsError, FileNotFoundError, ValueError, S3AccessError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
