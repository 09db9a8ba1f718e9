"""Training and validation data: WebDataset shards -> decoded clips -> batches, for one Ray worker.

The data path of a worker (``data_mode: stream``) is a torch ``DataLoader`` over :class:`ShardStream`
with ``loader_workers`` processes (0: in the training process). Every loader process of every rank
is one *consumer*: consumer ``rank * loader_workers + worker`` of ``world_size * loader_workers``.
Each pass over the shards, all consumers shuffle the shard list with the same seed and take
shards ``consumer, consumer + consumers, ...``; when there are fewer shards than consumers, every
consumer reads all shards and keeps samples ``consumer, consumer + consumers, ...`` instead. Either
way a pass gives every sample to exactly one consumer: no duplicates, no gaps.

A consumer picks each clip's training target (a caption or a label vector; clips without one are
skipped), shuffles encoded samples in a buffer of ``shuffle_buffer``, decodes FLAC and builds whole
batches, so decoding runs in the loader processes. A batch holds its clips concatenated in one
float32 tensor (one shared-memory block between processes, one pinned copy, one non-blocking copy to
the GPU); the mel front-end runs later on the worker's device. Training streams are endless (pass
after pass, a new shard order each time); the trainer takes a fixed number of batches per epoch.

Validation (:func:`validation_batches`) streams the split in batches, split across ranks the same
way, without shuffling: each batch carries every clip's position in the split, so ranks' results
gathered on rank 0 (:func:`gather_to_rank0`) are put back into shard order there.

Read errors: S3 reads resume where they broke (clap.data.wds_s3); a shard that still cannot be read,
or a sample that is incomplete or does not decode, is skipped with a warning while training, and is
an error in validation (metrics over a partial set would mislead).
"""

from __future__ import annotations

import io
import json
import logging
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import soundfile as sf
import torch

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


def drawable_captions(meta: dict[str, Any], kinds: Sequence[str]) -> list[str]:
    """The captions a training step may draw for a clip: its texts of the first allowed kind that has
    any (original captions when the clip has them, else an augmented kind: the paper's Table 3
    variants); empty when the clip has no usable text."""
    for kind in kinds:
        texts = meta.get(CAPTION_FIELDS[kind]) or []
        if texts:
            return [texts] if isinstance(texts, str) else list(texts)
    return []


def pick_caption(meta: dict[str, Any], kinds: Sequence[str], rng: random.Random) -> str | None:
    """One caption per step, drawn from :func:`drawable_captions`; None when the clip has none."""
    texts = drawable_captions(meta, kinds)
    return rng.choice(texts) if texts else None


def training_captions(urls: Sequence[str], kinds: Sequence[str]) -> list[str]:
    """Every distinct caption a training step can draw from the shards (:func:`drawable_captions` of
    each clip's metadata, read from the json members; the audio is not decoded), in first-seen order."""
    import webdataset as wds  # noqa: PLC0415

    from clap.data.wds_s3 import register_webdataset_s3  # noqa: PLC0415

    register_webdataset_s3()
    seen: dict[str, None] = {}
    dataset = wds.WebDataset(list(urls), shardshuffle=False, nodesplitter=None, empty_check=False)
    for sample in dataset:
        if "json" not in sample:
            raise ValueError(f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}: sample has no json member")
        seen.update(dict.fromkeys(drawable_captions(json.loads(sample["json"]), kinds)))
    return list(seen)


# --------------------------------------------------------------------------- batches


@dataclass
class TrainBatch:
    """Clips concatenated in ``audio`` (mono float32, 48 kHz) with their ``lengths``, plus per clip
    a target (a caption or a label vector, or the shard metadata in validation), an id and, for
    validation, its position in the split (shard number, sample number)."""

    audio: torch.Tensor
    lengths: list[int]
    targets: list[Any]
    ids: list[str]
    positions: list[tuple[int, int]]

    @property
    def waveforms(self) -> list[torch.Tensor]:
        """One 1-D view of ``audio`` per clip, on the batch's device."""
        return list(torch.split(self.audio, self.lengths))

    def __len__(self) -> int:
        return len(self.lengths)

    def pin_memory(self) -> "TrainBatch":  # called by the DataLoader's pinning thread
        return replace(self, audio=self.audio.pin_memory())

    def to(self, device: torch.device) -> "TrainBatch":
        """The batch on ``device``; from pinned memory the copy overlaps with compute."""
        return replace(self, audio=self.audio.to(device, non_blocking=self.audio.is_pinned()))


def _collate(clips: list[tuple[np.ndarray, Any, str, tuple[int, int]]]) -> TrainBatch:
    audio = torch.from_numpy(np.concatenate([clip[0] for clip in clips]))
    return TrainBatch(audio, [len(c[0]) for c in clips], [c[1] for c in clips], [c[2] for c in clips],
                      [c[3] for c in clips])


def decode_flac(data: bytes) -> np.ndarray:
    """A FLAC member as mono float32 (channels averaged)."""
    audio, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return np.ascontiguousarray(audio[:, 0] if audio.shape[1] == 1 else audio.mean(axis=1), dtype=np.float32)


# --------------------------------------------------------------------------- shards -> samples


def consumer_share(num_urls: int, consumer: int, consumers: int) -> tuple[list[int], int]:
    """Which shards (indices into the pass's shard order) a consumer reads, and the sample stride it
    keeps of them: (its shards, 1) when there are enough shards, else (all shards, ``consumers``)."""
    if num_urls >= consumers:
        return list(range(consumer, num_urls, consumers)), 1
    return list(range(num_urls)), consumers


def _read_shard(url: str, strict: bool) -> Iterator[dict[str, Any]]:
    """The samples of one tar, each a dict of its members plus ``__key__``. Read errors raise when
    ``strict``; otherwise the rest of the shard is skipped with a warning."""
    from webdataset import tariterators

    from clap.data.wds_s3 import register_webdataset_s3  # noqa: PLC0415 - also in spawned loader processes

    register_webdataset_s3()

    def handler(exc: Exception) -> bool:
        if strict:
            raise exc
        logger.warning("%s: skipping the rest of this shard: %s", url, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return True

    streams = tariterators.url_opener([{"url": url}], handler=handler)
    files = tariterators.tar_file_expander(streams, handler=handler)
    yield from tariterators.group_by_keys(files, handler=handler)


class ShardStream(torch.utils.data.IterableDataset):
    """Batches of one consumer (see the module docstring); a torch ``IterableDataset``.

    ``target(meta)`` gives a clip's target or None to skip it. ``passes``: None streams endlessly,
    a number stops after that many passes (the last batch may be short). ``shuffle_buffer`` 0 keeps
    shard order (validation). ``strict`` makes read and decode errors fatal.
    """

    def __init__(self, urls: Sequence[str], *, batch_size: int, target: Callable[[dict[str, Any]], Any],
                 seed: int, rank: int, world_size: int, loader_workers: int, shuffle_buffer: int,
                 passes: int | None, shuffle_shards: bool, strict: bool) -> None:
        super().__init__()
        if not urls:
            raise ValueError("ShardStream: no shard urls")
        self.urls = [str(u) for u in urls]
        self.batch_size, self.target, self.seed = batch_size, target, seed
        self.rank, self.world_size, self.loader_workers = rank, world_size, max(0, loader_workers)
        self.shuffle_buffer, self.passes, self.shuffle_shards, self.strict = shuffle_buffer, passes, shuffle_shards, strict

    def consumer(self) -> tuple[int, int]:
        """(this consumer, number of consumers) in the process that iterates."""
        info = torch.utils.data.get_worker_info()
        per_rank = max(1, self.loader_workers)
        worker = info.id if info is not None else 0
        return self.rank * per_rank + worker, self.world_size * per_rank

    def samples(self, data_pass: int) -> Iterator[tuple[dict[str, Any], Any, tuple[int, int]]]:
        """(sample, target, (shard number, sample number)) of this consumer's share of one pass."""
        consumer, consumers = self.consumer()
        order = list(range(len(self.urls)))
        if self.shuffle_shards:
            random.Random(self.seed + data_pass).shuffle(order)  # the same order on every consumer
        shards, stride = consumer_share(len(order), consumer, consumers)
        seen = 0
        for position in shards:
            shard = order[position]
            for number, sample in enumerate(_read_shard(self.urls[shard], self.strict)):
                seen += 1
                if stride > 1 and (seen - 1) % stride != consumer:
                    continue
                where = f"{self.urls[shard]}:{sample.get('__key__', '?')}"
                if "flac" not in sample or "json" not in sample:
                    self._bad(f"{where}: incomplete sample (members {sorted(k for k in sample if not k.startswith('__'))})")
                    continue
                meta = json.loads(sample["json"])
                value = self.target(meta)
                if value is not None:
                    yield sample, value, (shard, number)

    def _bad(self, message: str) -> None:
        if self.strict:
            raise ValueError(message)
        logger.warning("%s; skipped", message)

    def __iter__(self) -> Iterator[TrainBatch]:
        consumer, _ = self.consumer()
        rng = random.Random(self.seed * 1_000_003 + consumer)
        data_pass, buffer, clips = 0, [], []
        while self.passes is None or data_pass < self.passes:
            found = 0
            for item in self.samples(data_pass):
                found += 1
                if self.shuffle_buffer > 1:
                    buffer.append(item)
                    if len(buffer) < self.shuffle_buffer:
                        continue
                    index = rng.randrange(len(buffer))
                    buffer[index], buffer[-1] = buffer[-1], buffer[index]
                    item = buffer.pop()
                if (clip := self._decode(item)) is not None:
                    clips.append(clip)
                    if len(clips) == self.batch_size:
                        yield _collate(clips)
                        clips = []
            data_pass += 1
            if found == 0:
                return  # nothing for this consumer: it ends, the others go on
        rng.shuffle(buffer)
        for item in buffer:
            if (clip := self._decode(item)) is not None:
                clips.append(clip)
                if len(clips) == self.batch_size:
                    yield _collate(clips)
                    clips = []
        if clips:
            yield _collate(clips)

    def _decode(self, item: tuple[dict[str, Any], Any, tuple[int, int]]):
        sample, value, position = item
        try:
            waveform = decode_flac(sample["flac"])
        except Exception as exc:  # soundfile raises several types
            self._bad(f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}: unreadable flac ({type(exc).__name__}: {exc})")
            return None
        if waveform.size == 0:
            self._bad(f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}: empty audio")
            return None
        meta = json.loads(sample["json"])
        return waveform, value, str(meta.get("id", sample.get("__key__", ""))), position


def loader_workers_for(config: dict[str, Any]) -> int:
    """Decoding processes per Ray worker: ``loader_workers``, or one per CPU the worker has
    (``cpus_per_worker``, at least 1)."""
    chosen = config.get("loader_workers")
    return max(1, int(config.get("cpus_per_worker") or 1)) if chosen is None else max(0, int(chosen))


def _loader(stream: ShardStream, device: torch.device | None, prefetch: int) -> Iterator[TrainBatch]:
    import multiprocessing

    pin = device is not None and device.type == "cuda"
    # fork where there is one: loader processes inherit the objective's target function instead of
    # pickling it (the default became forkserver in Python 3.14); they never touch CUDA
    context = "fork" if stream.loader_workers and "fork" in multiprocessing.get_all_start_methods() else None
    loader = torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=stream.loader_workers, pin_memory=pin,
        prefetch_factor=prefetch if stream.loader_workers else None, multiprocessing_context=context,
    )
    for batch in loader:
        yield batch.to(device) if device is not None else batch


def train_batches(
    urls: Sequence[str], *, batch_size: int, target: Callable[[dict[str, Any]], Any], shuffle_buffer: int,
    seed: int, rank: int, world_size: int, loader_workers: int = 0, device: torch.device | None = None,
    passes: int | None = None, prefetch: int = 2,
) -> Iterator[TrainBatch]:
    """This rank's training batches, endless unless ``passes`` is given, on ``device`` when given
    (pinned and copied without blocking on CUDA). ``loader_workers`` processes decode (0: this
    process); each keeps ``prefetch`` batches ready. ``target(meta)`` gives a clip's training
    target, or None to skip the clip (no usable caption, held-out fold...)."""
    stream = ShardStream(urls, batch_size=batch_size, target=target, seed=seed, rank=rank, world_size=world_size,
                         loader_workers=loader_workers, shuffle_buffer=shuffle_buffer, passes=passes,
                         shuffle_shards=True, strict=False)
    got_any = False
    for batch in _loader(stream, device, prefetch):
        got_any = True
        yield batch
    if passes is None or not got_any:
        raise ValueError(
            f"no clip in {len(urls)} shard(s) ({urls[0]} ...) has a training target on rank {rank}: "
            "check train_sets, caption_augmentation (label-only sets need template or k2c) and val_folds"
        )


class _MetaIf:
    """A clip's metadata as its target when ``keep(meta)``, else None (picklable)."""

    def __init__(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        self.keep = keep

    def __call__(self, meta: dict[str, Any]) -> dict[str, Any] | None:
        return meta if self.keep(meta) else None


def validation_batches(
    urls: Sequence[str], *, batch_size: int, keep: Callable[[dict[str, Any]], bool], rank: int = 0,
    world_size: int = 1, loader_workers: int = 0, device: torch.device | None = None,
) -> Iterator[TrainBatch]:
    """This rank's share of a validation split, once, in batches whose ``targets`` are the clips'
    shard metadata; clips for which ``keep(meta)`` is false are left out. Errors are fatal."""
    stream = ShardStream(urls, batch_size=batch_size, target=_MetaIf(keep), seed=0,
                         rank=rank, world_size=world_size, loader_workers=loader_workers, shuffle_buffer=0,
                         passes=1, shuffle_shards=False, strict=True)
    yield from _loader(stream, device, prefetch=2)


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed group; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_to_rank0(part: Any) -> list[Any] | None:
    """Every rank's ``part`` (any picklable object) as a list on rank 0, None elsewhere."""
    import torch.distributed as dist

    rank, world_size = distributed_rank()
    if world_size == 1:
        return [part]
    parts: list[Any] | None = [None] * world_size if rank == 0 else None
    dist.gather_object(part, parts, dst=0)
    return parts


def broadcast_from_rank0(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (what all ranks report, so they agree)."""
    import torch.distributed as dist

    if distributed_rank()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def validate_in_parts(
    urls: Sequence[str], *, keep: Callable[[dict[str, Any]], bool],
    compute: Callable[[TrainBatch], list[Any]], batch_size: int, loader_workers: int, device: torch.device,
) -> list[Any] | None:
    """Validation split across the ranks of the torch.distributed group (or one process): each rank
    streams its share in batches, ``compute(batch)`` turns a batch (on ``device``, ``targets`` = the
    clips' metadata) into one result per clip, and rank 0 gets every clip's result in shard order
    (None on other ranks). Memory: one batch of audio per rank, plus the results."""
    rank, world_size = distributed_rank()
    mine: list[tuple[tuple[int, int], Any]] = []
    for batch in validation_batches(urls, batch_size=batch_size, keep=keep, rank=rank, world_size=world_size,
                                    loader_workers=loader_workers, device=device):
        mine.extend(zip(batch.positions, compute(batch), strict=True))
    parts = gather_to_rank0(mine)
    if parts is None:
        return None
    return [result for _, result in sorted((item for part in parts for item in part), key=lambda item: item[0])]


# --------------------------------------------------------------------------- whole-split readers


def eval_samples(urls: Sequence[str]) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
    """Every clip of an evaluation split as (waveform, meta), in shard order."""
    from clap.data.shards import iter_shard_samples  # noqa: PLC0415
    from clap.data.wds_s3 import register_webdataset_s3  # noqa: PLC0415

    register_webdataset_s3()
    for _, waveform, _, meta in iter_shard_samples(list(urls)):
        yield waveform, meta


def caption_list(meta: dict[str, Any]) -> list[str]:
    """A clip's original captions (the shard's ``text``), as a list."""
    texts = meta.get("text") or []
    return [texts] if isinstance(texts, str) else list(texts)


def has_captions(meta: dict[str, Any]) -> bool:
    return bool(caption_list(meta))


def eval_pairs(urls: Sequence[str]) -> tuple[list[np.ndarray], list[str], list[int], list[str]]:
    """All captioned clips of an evaluation split with every original caption: (waveforms, captions,
    caption -> audio index, audio ids), in shard order."""
    waveforms, captions, owner, ids = [], [], [], []
    for waveform, meta in eval_samples(urls):
        texts = caption_list(meta)
        if not texts:
            continue
        for text in texts:
            captions.append(text)
            owner.append(len(waveforms))
        waveforms.append(waveform)
        ids.append(meta.get("id", ""))
    return waveforms, captions, owner, ids
