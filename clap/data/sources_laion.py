"""The ``laion_wds`` source kind: WebDataset tars in the LAION-Audio-630K layout (see :mod:`clap.data.sources`).

``<path>/<split>/*.tar`` (+ ``sizes.json``); each sample is ``<key>.flac`` (or wav/mp3/ogg) +
``<key>.json`` with ``text`` (a string or a list), optional ``tag`` and ``original_data``. The audio
is extracted into the ingest extract folder so rows point to local files; a ``freesound_id`` or
``youtube_id`` in the json (or in its ``original_data``) is recorded as the clip's origin.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import Mapping

from tqdm.auto import tqdm

from clap.data.manifest import ManifestRow
from clap.data.overlap import record_origins
from clap.data.source_spec import AdapterContext, SourceError, SourceSpec, clip_id, register_adapter, text_list

log = logging.getLogger(__name__)


#: LAION-Audio-630K split folder names -> our splits.
LAION_SPLITS = {
    "train": "train",
    "valid": "val",
    "val": "val",
    "validation": "val",
    "test": "test",
    "eval": "test",
    "evaluation": "test",
}
_WDS_AUDIO_KEYS = ("flac", "wav", "mp3", "ogg")


@register_adapter("laion_wds")
def read_laion_wds(root: Path, spec: SourceSpec, ctx: AdapterContext) -> list[ManifestRow]:
    split_dirs = sorted(p for p in root.iterdir() if p.is_dir() and any(p.glob("*.tar")))
    if not split_dirs:
        raise SourceError(f"{root}: no <split>/*.tar shards (source '{spec.name}', kind laion_wds)")
    rows = []
    for split_dir in split_dirs:
        split = LAION_SPLITS.get(split_dir.name)
        if split is None:
            raise SourceError(
                f"{split_dir}: split folder name not understood (expected one of {', '.join(LAION_SPLITS)}); "
                "rename the folder"
            )
        rows += _extract_shards(split_dir, split, spec, ctx)
    return rows


def _extract_shards(split_dir: Path, split: str, spec: SourceSpec, ctx: AdapterContext) -> list[ManifestRow]:
    import webdataset as wds

    tars = sorted(split_dir.glob("*.tar"))
    out_dir = ctx.extract_dir / spec.name / split_dir.name
    counts: dict[str, int] = defaultdict(int)
    rows = []
    dataset = wds.WebDataset([str(t) for t in tars], shardshuffle=False, empty_check=False)
    for sample in tqdm(dataset, desc=f"extract {spec.name}/{split_dir.name}", unit="clip", disable=not ctx.progress):
        shard = Path(sample["__url__"]).stem
        key = str(sample["__key__"])
        where = f"{sample['__url__']}: sample '{key}'"
        counts[Path(sample["__url__"]).name] += 1
        ext = next((e for e in _WDS_AUDIO_KEYS if e in sample), None)
        if ext is None or "json" not in sample:
            raise SourceError(f"{where}: needs an audio member ({'/'.join(_WDS_AUDIO_KEYS)}) and a json member")
        try:
            meta = json.loads(sample["json"])
        except json.JSONDecodeError as exc:
            raise SourceError(f"{where}: json member is not valid JSON ({exc})") from exc
        relative = PurePosixPath(key)
        if ".." in relative.parts or relative.is_absolute():
            raise SourceError(f"{where}: key cannot be used as a file name")
        target = out_dir / shard / f"{'_'.join(relative.parts)}.{ext}"
        _write_if_changed(target, sample[ext])
        captions, labels = text_list(meta.get("text")), text_list(meta.get("tag"))
        original = meta.get("original_data") if isinstance(meta.get("original_data"), dict) else {}
        ctx.note_origins(clip_id(spec.name, f"{split_dir.name}_{shard}_{key}"),
                         record_origins(meta) + record_origins(original))
        rows.append(
            ManifestRow(
                id=clip_id(spec.name, f"{split_dir.name}_{shard}_{key}"),
                source=spec.name,
                split=split,
                path=str(target),
                captions=captions,
                labels=labels,
                task="retrieval" if captions else "pretrain",
            )
        )
    _check_sizes(split_dir, counts)
    return rows


def _write_if_changed(target: Path, data: bytes) -> None:
    if target.is_file() and target.stat().st_size == len(data) and target.read_bytes() == data:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(target)


def _check_sizes(split_dir: Path, counts: Mapping[str, int]) -> None:
    sizes_path = split_dir / "sizes.json"
    if not sizes_path.is_file():
        return
    try:
        sizes = json.loads(sizes_path.read_text())
    except json.JSONDecodeError as exc:
        raise SourceError(f"{sizes_path}: not valid JSON ({exc})") from exc
    for name, expected in sorted(sizes.items()):
        found = counts.get(name, 0)
        if int(expected) != found:
            log.warning("%s: sizes.json says %s holds %s samples, read %d", sizes_path, name, expected, found)
