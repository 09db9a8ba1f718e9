"""Source adapters: each dataset layout, read in place, becomes manifest rows.

params.yaml lists sources as ``{name, kind, path, ...options}``. ``kind`` picks an adapter from
:data:`ADAPTERS`; the adapter reads the dataset's native layout under a local folder (S3 sources
are mirrored to a local folder first, see :mod:`clap.data.s3`) and returns one
:class:`~clap.data.manifest.ManifestRow` per clip with id, source, split, path, captions, labels,
fold and task. Audio facts (duration, sample rate, channels, content hash) are filled in later by
the ingest stage, the same way for every kind.

Layouts (``<path>`` is the source's folder):

- ``builtin``: ``<path>/metadata.jsonl``, one object per clip with ``id``, ``source``, ``split``,
  ``file`` (relative to ``<path>``), ``captions``, ``labels``, ``fold``, ``task``.
- ``audiocaps``: ``<path>/{train,val,test}.csv`` (``audiocap_id,youtube_id,start_time,caption``,
  several rows per clip), audio in ``<path>/audio/<split>/`` named ``<youtube_id>.<ext>``,
  ``Y<youtube_id>.<ext>`` (AudioSet style) or ``<audiocap_id>.<ext>`` (any of the clip's ids).
- ``clotho``: ``<path>/clotho_captions_{development,validation,evaluation}.csv``
  (``file_name,caption_1..caption_5``), audio in ``<path>/{development,validation,evaluation}/``;
  the splits become train, val, test.
- ``esc50``: ``<path>/meta/esc50.csv``, audio in ``<path>/audio/``; split test, task classification.
- ``urbansound8k``: ``<path>/metadata/UrbanSound8K.csv``, audio in ``<path>/audio/fold<N>/``;
  split test, task classification.
- ``folder``: audio files plus ``<path>/captions.csv`` or ``<path>/captions.jsonl`` with ``file``
  (relative to ``<path>``), ``caption`` or ``captions``, ``labels`` (``;``-separated in CSV),
  optional ``split`` (default: the source's ``split`` option, else train), ``fold`` and ``task``.
  In CSV, repeat a file on several rows to give it several captions.
- ``laion_wds``: WebDataset tars as in LAION-Audio-630K, ``<path>/<split>/*.tar`` (+ ``sizes.json``);
  each sample is ``<key>.flac`` (or wav/mp3/ogg) + ``<key>.json`` with ``text`` (a string or a
  list) and optional ``tag``. The audio is extracted into the ingest extract folder so rows point
  to local files. Split folders ``valid``/``validation`` become val.

Every kind also accepts ``encoding`` (default utf-8): the encoding of its CSV / JSON Lines metadata
(see :mod:`clap.data.metadata`). File names from metadata must stay inside the source's folder: an
absolute path or a ``..`` is an error naming the row. Where a layout carries the Freesound or
YouTube id a clip came from, the adapter records it in ``AdapterContext.origins`` (ESC-50 and
UrbanSound8K names, Clotho's ``clotho_metadata_<split>.csv`` ``sound_id``/``sound_link``, AudioCaps'
``youtube_id``, ``freesound_id`` / ``youtube_id`` fields in folder, builtin and LAION json metadata),
for the ingest stage's overlap exclusion (:mod:`clap.data.overlap`).

Clip ids are ``<source name>/<clip>`` where ``<clip>`` is the file stem (or key) with anything but
letters, digits, ``-`` and ``_`` replaced by ``_``, so ids are safe file stems and shard keys.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import Any

from clap.data import sources_laion  # noqa: F401  (registers "laion_wds")
from clap.data.manifest import ManifestRow
from clap.data.metadata import SourceError, path_inside, read_jsonl
from clap.data.source_spec import (  # noqa: F401  (re-exported: the sources API)
    ADAPTERS, AUDIO_EXTENSIONS, AdapterContext, SourceSpec, as_fold, audio_files_by_stem, clip_id, label_text,
    parse_sources, register_adapter, split_field, table, text_list,
)
from clap.data.overlap import esc50_freesound_id, freesound_key, record_origins, youtube_key

log = logging.getLogger(__name__)


def read_source(root: Path, spec: SourceSpec, ctx: AdapterContext) -> list[ManifestRow]:
    """Rows of one source whose files are in the local folder ``root``."""
    if not root.is_dir():
        raise SourceError(f"{root}: folder of source '{spec.name}' not found (fix its `path` in params.yaml sources)")
    rows = ADAPTERS[spec.kind].read(root, spec, ctx)
    log.info("source '%s' (%s, %s): %d clips", spec.name, spec.kind, spec.path, len(rows))
    return rows


# --- adapters ------------------------------------------------------------------------------------


@register_adapter("builtin")
def read_builtin(root: Path, spec: SourceSpec, ctx: AdapterContext) -> list[ManifestRow]:
    meta = root / "metadata.jsonl"
    if not meta.is_file():
        raise SourceError(f"{meta}: built-in corpus metadata not found (build the corpus first: dvc repro corpus)")
    rows = []
    for lineno, obj in read_jsonl(meta, spec.encoding, spec.owner):
        where = f"{meta} line {lineno}"
        missing = [k for k in ("id", "source", "split", "file") if not obj.get(k)]
        if missing:
            raise SourceError(f"{where}: missing {', '.join(missing)}")
        captions, labels = text_list(obj.get("captions")), text_list(obj.get("labels"))
        rows.append(
            ManifestRow(
                id=str(obj["id"]),
                source=str(obj["source"]),
                split=str(obj["split"]),
                path=str(path_inside(root, str(obj["file"]), where, "file")),
                captions=captions,
                labels=labels,
                fold=as_fold(obj.get("fold"), where),
                task=str(obj.get("task") or ("retrieval" if captions else "pretrain")),
            )
        )
        ctx.note_origins(rows[-1].id, record_origins(obj))
    return rows


AUDIOCAPS_SPLITS = ("train", "val", "test")


@register_adapter("audiocaps")
def read_audiocaps(root: Path, spec: SourceSpec, ctx: AdapterContext) -> list[ManifestRow]:
    rows = []
    tables = [s for s in AUDIOCAPS_SPLITS if (root / f"{s}.csv").is_file()]
    if not tables:
        raise SourceError(f"{root}: no AudioCaps train.csv, val.csv or test.csv (source '{spec.name}')")
    for split in tables:
        csv_path = root / f"{split}.csv"
        audio_dir = root / "audio" / split
        audio = audio_files_by_stem(audio_dir)
        by_clip: dict[str, list[dict[str, str]]] = defaultdict(list)
        for lineno, record in table(spec, csv_path, ("audiocap_id", "youtube_id", "start_time", "caption")):
            where = f"{csv_path} line {lineno}"
            for column in ("youtube_id", "audiocap_id"):
                path_inside(audio_dir, record[column], where, column)  # the ids name the audio files
            by_clip[record["youtube_id"]].append(record)
        for youtube_id, group in by_clip.items():
            names = [youtube_id, f"Y{youtube_id}"] + [r["audiocap_id"] for r in group]
            path = next((audio[n] for n in names if n in audio), audio_dir / f"{youtube_id}.wav")
            rows.append(
                ManifestRow(
                    id=clip_id(spec.name, youtube_id),
                    source=spec.name,
                    split=split,
                    path=str(path),
                    captions=[r["caption"] for r in group if r["caption"]],
                    task="retrieval",
                )
            )
            ctx.note_origins(rows[-1].id, [youtube_key(youtube_id)])
    return rows


#: Clotho's folder names -> our splits.
CLOTHO_SPLITS = {"development": "train", "validation": "val", "evaluation": "test"}


@register_adapter("clotho")
def read_clotho(root: Path, spec: SourceSpec, ctx: AdapterContext) -> list[ManifestRow]:
    rows = []
    tables = [(f, s) for f, s in CLOTHO_SPLITS.items() if (root / f"clotho_captions_{f}.csv").is_file()]
    if not tables:
        raise SourceError(
            f"{root}: no clotho_captions_{{development,validation,evaluation}}.csv (source '{spec.name}')"
        )
    for folder, split in tables:
        captions_csv = root / f"clotho_captions_{folder}.csv"
        sounds = _clotho_sound_ids(root / f"clotho_metadata_{folder}.csv", spec)
        for lineno, record in table(spec, captions_csv, ("file_name", "caption_1")):
            path = path_inside(root / folder, record["file_name"], f"{captions_csv} line {lineno}", "file_name")
            captions = [record[c] for c in sorted(record, key=_caption_order) if c.startswith("caption_") and record[c]]
            rows.append(
                ManifestRow(
                    id=clip_id(spec.name, Path(record["file_name"]).stem),
                    source=spec.name,
                    split=split,
                    path=str(path),
                    captions=captions,
                    task="retrieval",
                )
            )
            ctx.note_origins(rows[-1].id, [sounds.get(record["file_name"])])
    return rows


def _clotho_sound_ids(metadata_csv: Path, spec: SourceSpec) -> dict[str, str]:
    """file_name -> ``freesound:<id>`` from Clotho's optional metadata table (``sound_id`` or ``sound_link``)."""
    if not metadata_csv.is_file():
        return {}
    found = {}
    for _, record in table(spec, metadata_csv, ("file_name",)):
        key = freesound_key(record.get("sound_id")) or freesound_key(record.get("sound_link"))
        if key:
            found[record["file_name"]] = key
    return found


def _caption_order(column: str) -> tuple[int, str]:
    number = column.rsplit("_", 1)[-1]
    return (int(number), column) if number.isdigit() else (10**6, column)


@register_adapter("esc50")
def read_esc50(root: Path, spec: SourceSpec, ctx: AdapterContext) -> list[ManifestRow]:
    csv_path = root / "meta" / "esc50.csv"
    rows = []
    for lineno, record in table(spec, csv_path, ("filename", "fold", "category")):
        where = f"{csv_path} line {lineno}"
        rows.append(
            ManifestRow(
                id=clip_id(spec.name, Path(record["filename"]).stem),
                source=spec.name,
                split="test",
                path=str(path_inside(root / "audio", record["filename"], where, "filename")),
                labels=[label_text(record["category"])],
                fold=as_fold(record["fold"], where),
                task="classification",
            )
        )
        fsid = freesound_key(record.get("src_file")) or freesound_key(esc50_freesound_id(record["filename"]))
        ctx.note_origins(rows[-1].id, [fsid])
    return rows


@register_adapter("urbansound8k")
def read_urbansound8k(root: Path, spec: SourceSpec, ctx: AdapterContext) -> list[ManifestRow]:
    csv_path = root / "metadata" / "UrbanSound8K.csv"
    rows = []
    for lineno, record in table(spec, csv_path, ("slice_file_name", "fold", "class")):
        where = f"{csv_path} line {lineno}"
        fold = as_fold(record["fold"], where)
        name = record["slice_file_name"]
        rows.append(
            ManifestRow(
                id=clip_id(spec.name, Path(name).stem),
                source=spec.name,
                split="test",
                path=str(path_inside(root / "audio" / f"fold{fold}", name, where, "slice_file_name")),
                labels=[label_text(record["class"])],
                fold=fold,
                task="classification",
            )
        )
        # names are {fsID}-{classID}-{occurrenceID}-{sliceID}.wav
        ctx.note_origins(rows[-1].id, [freesound_key(record.get("fsID") or Path(name).stem.split("-")[0])])
    return rows


@register_adapter("folder", options=("split", "task"))
def read_folder(root: Path, spec: SourceSpec, ctx: AdapterContext) -> list[ManifestRow]:
    csv_table, jsonl_table = root / "captions.csv", root / "captions.jsonl"
    if csv_table.is_file() and jsonl_table.is_file():
        raise SourceError(f"{root}: both captions.csv and captions.jsonl exist; keep one (source '{spec.name}')")
    if csv_table.is_file():
        records = [(f"{csv_table} line {n}", r) for n, r in table(spec, csv_table, ("file",))]
    elif jsonl_table.is_file():
        records = [(f"{jsonl_table} line {n}", r) for n, r in read_jsonl(jsonl_table, spec.encoding, spec.owner)]
    else:
        raise SourceError(f"{root}: no captions.csv or captions.jsonl (source '{spec.name}', kind folder)")

    default_split = str(spec.options.get("split", "train"))
    merged: dict[str, dict[str, Any]] = {}
    for where, record in records:
        file = str(record.get("file") or "").strip()
        if not file:
            raise SourceError(f"{where}: empty 'file'")
        entry = merged.setdefault(
            file,
            {"captions": [], "labels": [], "split": None, "fold": None, "task": None, "where": where,
             "path": path_inside(root, file, where, "file"), "origins": []},
        )
        entry["captions"] += text_list(record.get("caption")) + text_list(record.get("captions"))
        entry["labels"] += [label for label in split_field(record.get("labels")) if label not in entry["labels"]]
        entry["origins"] += record_origins(record)
        for key in ("split", "task"):
            if record.get(key):
                entry[key] = str(record[key])
        if record.get("fold") not in (None, ""):
            entry["fold"] = as_fold(record["fold"], where)

    rows = []
    for file, entry in merged.items():
        task = entry["task"] or spec.options.get("task") or ("retrieval" if entry["captions"] else "pretrain")
        rows.append(
            ManifestRow(
                id=clip_id(spec.name, str(PurePosixPath(file).with_suffix(""))),
                source=spec.name,
                split=entry["split"] or default_split,
                path=str(entry["path"]),
                captions=entry["captions"],
                labels=entry["labels"],
                fold=entry["fold"],
                task=str(task),
            )
        )
        ctx.note_origins(rows[-1].id, entry["origins"])
    _warn_unlisted(root, {entry["path"] for entry in merged.values()}, spec)
    return rows


def _warn_unlisted(root: Path, listed: set[Path], spec: SourceSpec) -> None:
    unlisted = sorted(
        p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file() and p not in listed
    )
    if unlisted:
        log.warning(
            "source '%s': %d audio file(s) under %s have no entry in the captions file and are not ingested "
            "(first: %s)", spec.name, len(unlisted), root, ", ".join(str(p) for p in unlisted[:5]),
        )


