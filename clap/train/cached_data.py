"""In-memory training data (``train.data_mode: cached``): decode and mel once, crop in frames.

Each Ray worker reads its share of the training shards once (shard ``i`` goes to rank
``i % world_size``, as webdataset's ``split_by_node`` splits a shard list, so no clip is on two
ranks), decodes every clip and computes its log-mel once (:func:`clap.model.frontend.clip_training_mel`,
stored as float16 by default), then draws batches from memory: every pass over the worker's clips
is a new random order (each clip once per pass), a clip's training target (a caption, drawn anew
each time) comes from the objective, and its training input is a random crop in mel frames
(:func:`clap.model.frontend.training_crop`). SpecAugment stays where it is, inside the audio tower.

Evaluation and inference do not use this: they keep the reference front-end on waveforms.
The streaming path (``data_mode: stream``, clap.train.data) suits data larger than memory.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from clap.model.frontend import AudioFeatures, MelConfig, clip_training_mel, fusion_global_view, training_crop

logger = logging.getLogger(__name__)

FEATURE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class CachedClip:
    """One training clip in memory: its id, shard metadata, the mel its crops come from
    (:func:`clip_training_mel`), whether it is longer than 10 s, and (fusion, long clips) the
    fixed global view."""

    id: str
    meta: dict[str, Any]
    mel: Tensor
    longer: bool
    global_view: Tensor | None = None


@dataclass
class CachedBatch:
    """A training batch whose audio is already the model input (``features``)."""

    features: AudioFeatures
    targets: list[Any]
    ids: list[str]


def rank_shards(urls: Sequence[str], rank: int, world_size: int) -> list[str]:
    """This rank's shards: every ``world_size``-th from ``rank`` (shards repeat when there are fewer
    shards than ranks, as the streaming path does, so that every rank has data)."""
    urls = list(urls)
    if not urls:
        raise ValueError("cached training data: no training shards given")
    if len(urls) < world_size:
        urls = urls * math.ceil(world_size / len(urls))
    return urls[rank::world_size]


def load_clips(
    urls: Sequence[str], *, fusion: bool, feature_dtype: str = "float16",
    keep: Callable[[dict[str, Any]], bool] | None = None,
) -> list[CachedClip]:
    """Decode the shards' clips and compute each one's training mel once. ``keep(meta)`` False
    skips a clip (no usable training target)."""
    from clap.data.shards import iter_shard_samples  # noqa: PLC0415
    from clap.data.wds_s3 import register_webdataset_s3  # noqa: PLC0415

    if feature_dtype not in FEATURE_DTYPES:
        raise ValueError(f"train.feature_cache_dtype: {feature_dtype!r} is not one of {sorted(FEATURE_DTYPES)}")
    dtype = FEATURE_DTYPES[feature_dtype]
    register_webdataset_s3()
    config = MelConfig.for_model(fusion)
    started, clips, skipped = time.perf_counter(), [], 0
    with torch.no_grad():
        for clip_id, waveform, sample_rate, meta in iter_shard_samples(list(urls)):
            if keep is not None and not keep(meta):
                skipped += 1
                continue
            if sample_rate != config.sample_rate:
                raise ValueError(
                    f"training clip {clip_id}: {sample_rate} Hz in the shards, the front-end needs "
                    f"{config.sample_rate}; rebuild the shards from normalized audio (dvc repro normalize shards)"
                )
            mel, longer = clip_training_mel(waveform, fusion=fusion, mel=config)
            global_view = fusion_global_view(mel, config.chunk_frames).to(dtype) if fusion and longer else None
            clips.append(CachedClip(clip_id, meta, mel.to(dtype), longer, global_view))
    logger.info("cached training features of %d clips from %d shard(s) in %.1f s (%d skipped: no target)",
                len(clips), len(urls), time.perf_counter() - started, skipped)
    return clips


def batches_from_clips(
    clips: Sequence[CachedClip], *, batch_size: int, target: Callable[[dict[str, Any]], Any], fusion: bool,
    seed: int, chunk_frames: int = 1001,
) -> Iterator[CachedBatch]:
    """Endless batches: pass after pass over ``clips`` in a new random order each pass (seeded by
    ``seed`` and the pass), batches running on across passes; crops drawn from the same seed."""
    if not clips:
        raise ValueError("cached training data: no clip with a training target on this worker "
                         "(check train_sets, caption_augmentation and val_folds)")
    generator = torch.Generator().manual_seed(seed)
    features, is_longer, targets, ids = [], [], [], []
    for data_pass in itertools.count():
        order = torch.randperm(len(clips), generator=torch.Generator().manual_seed(seed * 1_000_003 + data_pass))
        found = 0
        for index in order.tolist():
            clip = clips[index]
            value = target(clip.meta)
            if value is None:
                continue
            found += 1
            features.append(training_crop(clip.mel, clip.longer, fusion=fusion, chunk_frames=chunk_frames,
                                          global_view=clip.global_view, generator=generator))
            is_longer.append(clip.longer)
            targets.append(value)
            ids.append(clip.id)
            if len(features) == batch_size:
                batch = AudioFeatures(torch.stack(features), torch.tensor(is_longer, dtype=torch.bool))
                yield CachedBatch(batch, targets, ids)
                features, is_longer, targets, ids = [], [], [], []
        if found == 0:
            raise ValueError("cached training data: a whole pass gave no training target")


def cached_train_batches(
    urls: Sequence[str], *, batch_size: int, target: Callable[[dict[str, Any]], Any], seed: int, rank: int,
    world_size: int, fusion: bool, feature_dtype: str = "float16",
) -> Iterator[CachedBatch]:
    """The cached counterpart of :func:`clap.train.data.train_batches`: this rank's shards in memory
    as training mels, then endless batches of crops (see the module docstring)."""
    clips = load_clips(rank_shards(urls, rank, world_size), fusion=fusion, feature_dtype=feature_dtype,
                       keep=lambda meta: target(meta) is not None)
    return batches_from_clips(clips, batch_size=batch_size, target=target, fusion=fusion, seed=seed + 7919 * rank)
