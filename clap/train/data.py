"""Training data: WebDataset shards -> (waveform, caption) pairs -> batches for one Ray worker.

Shards are split by node (Ray worker rank) and by DataLoader worker, shuffled with a buffer, and
streamed endlessly; the trainer takes a fixed number of batches per epoch ("epochs of a fixed size",
as in the reference). Audio is decoded here; mel features are computed by the training loop on the
worker's device.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import soundfile as sf

logger = logging.getLogger(__name__)

#: Caption kinds a training step may draw from; keys into the shard's json.
CAPTION_FIELDS = {
    "original": "text",
    "template": "text_augment_template",
    "k2c": "text_augment_t5",
}


def shard_urls(shard_root: str | Path, sets: Sequence[str], split: str) -> list[str]:
    """Shard paths of the named sets' ``split``, from ``<root>/index.json`` (written by the shards stage).

    A set is a source name (``builtin_captions``) or ``source/split``.
    """
    root = str(shard_root).rstrip("/")
    if root.startswith("s3://"):
        from clap.data.wds_s3 import read_text  # noqa: PLC0415 - optional remote index

        index = json.loads(read_text(f"{root}/index.json"))
    else:
        index_path = Path(root) / "index.json"
        if not index_path.is_file():
            raise FileNotFoundError(f"{index_path}: shard index not found (run `dvc repro shards` first)")
        index = json.loads(index_path.read_text())
    urls: list[str] = []
    for name in sets:
        source, _, wanted_split = name.partition("/")
        wanted_split = wanted_split or split
        entry = index.get("sets", index).get(source)
        if entry is None:
            raise KeyError(f"train set '{source}' is not in {root}/index.json; known: {sorted(index.get('sets', index))}")
        shards = entry.get(wanted_split, {}).get("shards", [])
        urls.extend(f"{root}/{relative}" for relative in shards)
    if not urls:
        raise ValueError(f"no shards for sets {list(sets)} split '{split}' under {root}")
    return urls


def pick_caption(meta: dict[str, Any], kinds: Sequence[str], rng: random.Random) -> str | None:
    """One caption per step: an original caption when the clip has one, else an augmented one of the
    allowed kinds (the paper's Table 3 variants); None when the clip has no usable text."""
    for kind in kinds:
        texts = meta.get(CAPTION_FIELDS[kind]) or []
        if isinstance(texts, str):
            texts = [texts]
        if texts:
            return rng.choice(texts)
    return None


@dataclass
class TrainBatch:
    waveforms: list[np.ndarray]
    targets: list[Any]   # a caption (contrastive) or a label vector (classification)
    ids: list[str]


def train_batches(
    urls: Sequence[str], *, batch_size: int, target: Callable[[dict[str, Any]], Any], shuffle_buffer: int,
    seed: int, rank: int, world_size: int,
) -> Iterator[TrainBatch]:
    """Endless stream of batches for one worker; shards are split by rank. ``target(meta)`` gives a
    clip's training target, or None to skip the clip (no usable caption, held-out fold...)."""
    import webdataset as wds

    from clap.data.wds_s3 import register_webdataset_s3  # noqa: PLC0415

    register_webdataset_s3()
    urls = list(urls)
    if len(urls) < world_size:  # every rank needs at least one shard
        urls = urls * math.ceil(world_size / len(urls))

    def endless_samples() -> Iterator[dict[str, Any]]:
        """Samples that have a training target, pass after pass; the target is chosen before the
        shuffle buffer (which holds encoded audio only) so that a pass with none is an error."""
        skipped = 0
        for data_epoch in itertools.count():  # a new shard order on every pass over the data
            found = 0
            for sample in wds.WebDataset(
                urls, shardshuffle=len(urls), detshuffle=True, seed=seed + data_epoch,
                nodesplitter=wds.split_by_node, empty_check=False,
            ):
                meta = json.loads(sample["json"])
                value = target(meta)
                if value is None:
                    skipped += 1
                    if skipped in (1, 1000, 100000):
                        logger.info("skipped %d clips without a training target", skipped)
                    continue
                found += 1
                yield {"flac": sample["flac"], "meta": meta, "target": value, "__key__": sample.get("__key__", "")}
            if found == 0:
                raise ValueError(
                    f"no clip in {len(urls)} shard(s) ({urls[0]} ...) has a training target on rank {rank}: "
                    "check train_sets, caption_augmentation (label-only sets need template or k2c) and val_folds"
                )

    dataset = wds.filters.shuffle(shuffle_buffer, rng=random.Random(seed + rank))(endless_samples())
    waveforms, targets, ids = [], [], []
    for sample in dataset:
        audio, _ = sf.read(io.BytesIO(sample["flac"]), dtype="float32", always_2d=True)
        waveforms.append(audio.mean(axis=1))
        targets.append(sample["target"])
        ids.append(sample["meta"].get("id", sample["__key__"]))
        if len(waveforms) == batch_size:
            yield TrainBatch(waveforms, targets, ids)
            waveforms, targets, ids = [], [], []


def eval_samples(urls: Sequence[str]) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
    """Every clip of an evaluation split as (waveform, meta), in shard order."""
    from clap.data.shards import iter_shard_samples  # noqa: PLC0415
    from clap.data.wds_s3 import register_webdataset_s3  # noqa: PLC0415

    register_webdataset_s3()
    for _, waveform, _, meta in iter_shard_samples(list(urls)):
        yield waveform, meta


def eval_pairs(urls: Sequence[str]) -> tuple[list[np.ndarray], list[str], list[int], list[str]]:
    """All captioned clips of an evaluation split with every original caption: (waveforms, captions,
    caption -> audio index, audio ids), in shard order."""
    waveforms, captions, owner, ids = [], [], [], []
    for waveform, meta in eval_samples(urls):
        texts = meta.get("text") or []
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            continue
        for text in texts:
            captions.append(text)
            owner.append(len(waveforms))
        waveforms.append(waveform)
        ids.append(meta.get("id", ""))
    return waveforms, captions, owner, ids
