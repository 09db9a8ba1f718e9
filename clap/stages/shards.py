"""DVC stage `shards`: data/manifest/captions.jsonl + data/audio -> WebDataset tars under data/shards.

    python -m clap.stages.shards [--params params.yaml]

Writes data/shards/<source>/<split>/NNNNNN.tar with sizes.json per folder and data/shards/index.json.
With ``shards.remote: s3://bucket/prefix`` it then publishes that tree under the prefix (only
changed objects move), so Ray workers anywhere can read it with ``train.shard_root`` set to the prefix.
"""

from __future__ import annotations

import sys
from pathlib import Path

from clap.data.remote_shards import RemoteShardsConfig, publish_shards
from clap.data.s3 import S3AccessError
from clap.data.shards import ShardConfig, ShardError, shard_manifest
from clap.params import load_params, section
from clap.stages.common import run_stage, stage_parser


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("shards", __doc__, progress=True)
    parser.add_argument("--input", type=Path, default=Path("data/manifest/captions.jsonl"))
    parser.add_argument("--out", type=Path, default=Path("data/shards"))
    args = parser.parse_args(argv)

    def work() -> None:
        params = load_params(args.params)
        cfg = ShardConfig.from_params(params)  # `remote` belongs to the publish step
        remote = RemoteShardsConfig.from_params(section(params, "shards"))
        shard_manifest(args.input, args.out, cfg, progress=not args.no_progress)
        if remote.remote:
            publish_shards(args.out, remote.remote, progress=not args.no_progress)

    return run_stage("shards", work, (ShardError, ValueError, S3AccessError))


if __name__ == "__main__":
    sys.exit(main())
