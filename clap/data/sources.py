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

Clip ids are ``<source name>/<clip>`` where ``<clip>`` is the file stem (or key) with anything but
letters, digits, ``-`` and ``_`` replaced by ``_``, so ids are safe file stems and shard keys.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Mapping

from tqdm.auto import tqdm

from clap.data.manifest import ManifestRow

log = logging.getLogger(__name__)

#: File endings read as audio (anything libsndfile decodes).
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".aiff", ".aif", ".au")

#: Options every source may carry, whatever its kind.
COMMON_OPTIONS = frozenset({"endpoint_url", "profile", "on_missing"})
#: Keys that would put secrets into params.yaml; refused outright.
CREDENTIAL_KEYS = frozenset(
    {"aws_access_key_id", "aws_secret_access_key", "aws_session_token", "access_key", "secret_key", "password"}
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_UNSAFE_CLIP_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


class SourceError(ValueError):
    """A source is misconfigured or its files do not have the expected layout."""


@dataclass(frozen=True)
class SourceSpec:
    """One entry of params.yaml ``sources``."""

    name: str
    kind: str
    path: str
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_params(cls, entry: Mapping[str, Any]) -> "SourceSpec":
        if not isinstance(entry, Mapping):
            raise SourceError(f"params.yaml sources: each entry must be a mapping, got {entry!r}")
        label = entry.get("name", "?")
        secrets = sorted(CREDENTIAL_KEYS & set(entry))
        if secrets:
            raise SourceError(
                f"params.yaml source '{label}': {', '.join(secrets)} must not be in params.yaml; "
                "give credentials through the AWS environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or a "
                "profile (AWS_PROFILE or the source's `profile`)"
            )
        missing = [key for key in ("name", "kind", "path") if not entry.get(key)]
        if missing:
            raise SourceError(f"params.yaml source '{label}': missing {', '.join(missing)}")
        name, kind = str(entry["name"]), str(entry["kind"])
        if not _NAME_RE.match(name):
            raise SourceError(f"params.yaml source '{name}': name may hold only letters, digits, '-' and '_'")
        if kind not in ADAPTERS:
            known = ", ".join(sorted(ADAPTERS))
            raise SourceError(f"params.yaml source '{name}': unknown kind '{kind}' (known: {known})")
        options = {k: v for k, v in entry.items() if k not in ("name", "kind", "path")}
        allowed = COMMON_OPTIONS | ADAPTERS[kind].options
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise SourceError(
                f"params.yaml source '{name}': unknown option(s) {', '.join(unknown)} for kind '{kind}' "
                f"(allowed: {', '.join(sorted(allowed))})"
            )
        on_missing = options.get("on_missing", "fail")
        if on_missing not in ("fail", "skip"):
            raise SourceError(f"params.yaml source '{name}': on_missing must be 'fail' or 'skip', got {on_missing!r}")
        return cls(name=name, kind=kind, path=str(entry["path"]), options=options)


def parse_sources(entries: Iterable[Mapping[str, Any]] | None) -> list[SourceSpec]:
    """params.yaml ``sources`` -> specs; names must be unique (they prefix the clip ids)."""
    specs = [SourceSpec.from_params(entry) for entry in entries or []]
    if not specs:
        raise SourceError("params.yaml: `sources` is empty; list at least one {name, kind, path}")
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise SourceError(f"params.yaml sources: name '{spec.name}' is used twice; names must be unique")
        seen.add(spec.name)
    return specs


@dataclass(frozen=True)
class AdapterContext:
    """What adapters may use besides their own folder."""

    extract_dir: Path  # where adapters that unpack archives write audio
    progress: bool = True


ReadFn = Callable[[Path, SourceSpec, AdapterContext], list[ManifestRow]]


@dataclass(frozen=True)
class SourceAdapter:
    kind: str
    read: ReadFn
    options: frozenset[str]


#: kind name -> adapter. Add a kind by decorating its reader with :func:`register_adapter`.
ADAPTERS: dict[str, SourceAdapter] = {}


def register_adapter(kind: str, options: Iterable[str] = ()) -> Callable[[ReadFn], ReadFn]:
    def decorate(read: ReadFn) -> ReadFn:
        ADAPTERS[kind] = SourceAdapter(kind=kind, read=read, options=frozenset(options))
        return read

    return decorate


def read_source(root: Path, spec: SourceSpec, ctx: AdapterContext) -> list[ManifestRow]:
    """Rows of one source whose files are in the local folder ``root``."""
    if not root.is_dir():
        raise SourceError(f"{root}: folder of source '{spec.name}' not found (fix its `path` in params.yaml sources)")
    rows = ADAPTERS[spec.kind].read(root, spec, ctx)
    log.info("source '%s' (%s, %s): %d clips", spec.name, spec.kind, spec.path, len(rows))
    return rows


# --- helpers shared by the adapters -------------------------------------------------------------


def clip_id(source: str, clip: str) -> str:
    """``<source>/<clip>`` with the clip part made safe as a file stem and shard key."""
    safe = _UNSAFE_CLIP_CHARS.sub("_", clip).strip("_")
    if not safe:
        raise SourceError(f"source '{source}': clip name {clip!r} has no usable characters for an id")
    return f"{source}/{safe}"


def read_csv(path: Path, required: Iterable[str]) -> list[dict[str, str]]:
    """A CSV file as dicts; a missing file or column is an error naming both."""
    if not path.is_file():
        raise SourceError(f"{path}: not found (expected by the source layout; see clap.data.sources)")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in required if c not in columns]
        if missing:
            raise SourceError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(columns) or 'none'})")
        return [{(k or "").strip(): (v or "").strip() for k, v in record.items()} for record in reader]


def audio_files_by_stem(folder: Path) -> dict[str, Path]:
    """Audio files directly in ``folder`` by stem (listing once beats probing names one by one)."""
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in AUDIO_EXTENSIONS and path.is_file():
            found.setdefault(path.stem, path)
    return found


def split_field(value: Any, sep: str = ";") -> list[str]:
    """A list from a list, or from a ``sep``-separated string; blanks dropped."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split(sep)
    return [str(item).strip() for item in items if str(item).strip()]


def text_list(value: Any) -> list[str]:
    """Captions as a list: a string is one caption, a list is several; blanks dropped."""
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    return split_field(value)


def as_fold(value: Any, where: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise SourceError(f"{where}: fold {value!r} is not an integer") from exc


def label_text(label: str) -> str:
    """Class names as words: ``dog_bark`` -> ``dog bark``."""
    return label.replace("_", " ").strip()


# --- adapters ------------------------------------------------------------------------------------


@register_adapter("builtin")
def read_builtin(root: Path, spec: SourceSpec, ctx: AdapterContext) -> list[ManifestRow]:
    meta = root / "metadata.jsonl"
    if not meta.is_file():
        raise SourceError(f"{meta}: built-in corpus metadata not found (build the corpus first: dvc repro corpus)")
    rows = []
    with meta.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{meta}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SourceError(f"{where}: not valid JSON ({exc})") from exc
            missing = [k for k in ("id", "source", "split", "file") if not obj.get(k)]
            if missing:
                raise SourceError(f"{where}: missing {', '.join(missing)}")
            captions, labels = text_list(obj.get("captions")), text_list(obj.get("labels"))
            rows.append(
                ManifestRow(
                    id=str(obj["id"]),
                    source=str(obj["source"]),
                    split=str(obj["split"]),
                    path=str(root / obj["file"]),
                    captions=captions,
                    labels=labels,
                    fold=as_fold(obj.get("fold"), where),
                    task=str(obj.get("task") or ("retrieval" if captions else "pretrain")),
                )
            )
    return rows


AUDIOCAPS_SPLITS = ("train", "val", "test")


@register_adapter("audiocaps")
def read_audiocaps(root: Path, spec: SourceSpec, ctx: AdapterContext) -> list[ManifestRow]:
    rows = []
    tables = [s for s in AUDIOCAPS_SPLITS if (root / f"{s}.csv").is_file()]
    if not tables:
        raise SourceError(f"{root}: no AudioCaps train.csv, val.csv or test.csv (source '{spec.name}')")
    for split in tables:
        records = read_csv(root / f"{split}.csv", ("audiocap_id", "youtube_id", "start_time", "caption"))
        audio_dir = root / "audio" / split
        audio = audio_files_by_stem(audio_dir)
        by_clip: dict[str, list[dict[str, str]]] = defaultdict(list)
        for record in records:
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
        table = root / f"clotho_captions_{folder}.csv"
        for record in read_csv(table, ("file_name", "caption_1")):
            captions = [record[c] for c in sorted(record, key=_caption_order) if c.startswith("caption_") and record[c]]
            rows.append(
                ManifestRow(
                    id=clip_id(spec.name, Path(record["file_name"]).stem),
                    source=spec.name,
                    split=split,
                    path=str(root / folder / record["file_name"]),
                    captions=captions,
                    task="retrieval",
                )
            )
    return rows


def _caption_order(column: str) -> tuple[int, str]:
    number = column.rsplit("_", 1)[-1]
    return (int(number), column) if number.isdigit() else (10**6, column)


@register_adapter("esc50")
def read_esc50(root: Path, spec: SourceSpec, ctx: AdapterContext) -> list[ManifestRow]:
    table = root / "meta" / "esc50.csv"
    rows = []
    for lineno, record in enumerate(read_csv(table, ("filename", "fold", "category")), 2):
        rows.append(
            ManifestRow(
                id=clip_id(spec.name, Path(record["filename"]).stem),
                source=spec.name,
                split="test",
                path=str(root / "audio" / record["filename"]),
                labels=[label_text(record["category"])],
                fold=as_fold(record["fold"], f"{table}:{lineno}"),
                task="classification",
            )
        )
    return rows


@register_adapter("urbansound8k")
def read_urbansound8k(root: Path, spec: SourceSpec, ctx: AdapterContext) -> list[ManifestRow]:
    table = root / "metadata" / "UrbanSound8K.csv"
    rows = []
    for lineno, record in enumerate(read_csv(table, ("slice_file_name", "fold", "class")), 2):
        fold = as_fold(record["fold"], f"{table}:{lineno}")
        rows.append(
            ManifestRow(
                id=clip_id(spec.name, Path(record["slice_file_name"]).stem),
                source=spec.name,
                split="test",
                path=str(root / "audio" / f"fold{fold}" / record["slice_file_name"]),
                labels=[label_text(record["class"])],
                fold=fold,
                task="classification",
            )
        )
    return rows


@register_adapter("folder", options=("split", "task"))
def read_folder(root: Path, spec: SourceSpec, ctx: AdapterContext) -> list[ManifestRow]:
    csv_table, jsonl_table = root / "captions.csv", root / "captions.jsonl"
    if csv_table.is_file() and jsonl_table.is_file():
        raise SourceError(f"{root}: both captions.csv and captions.jsonl exist; keep one (source '{spec.name}')")
    if csv_table.is_file():
        records = [(f"{csv_table}:{n}", r) for n, r in enumerate(read_csv(csv_table, ("file",)), 2)]
    elif jsonl_table.is_file():
        records = list(_read_jsonl_records(jsonl_table))
    else:
        raise SourceError(f"{root}: no captions.csv or captions.jsonl (source '{spec.name}', kind folder)")

    default_split = str(spec.options.get("split", "train"))
    merged: dict[str, dict[str, Any]] = {}
    for where, record in records:
        file = str(record.get("file") or "").strip()
        if not file:
            raise SourceError(f"{where}: empty 'file'")
        entry = merged.setdefault(
            file, {"captions": [], "labels": [], "split": None, "fold": None, "task": None, "where": where}
        )
        entry["captions"] += text_list(record.get("caption")) + text_list(record.get("captions"))
        entry["labels"] += [label for label in split_field(record.get("labels")) if label not in entry["labels"]]
        for key in ("split", "task"):
            if record.get(key):
                entry[key] = str(record[key])
        if record.get("fold") not in (None, ""):
            entry["fold"] = as_fold(record["fold"], where)

    rows = []
    for file, entry in merged.items():
        relative = PurePosixPath(file)
        if relative.is_absolute() or ".." in relative.parts:
            raise SourceError(f"{entry['where']}: file '{file}' must be a path inside {root}")
        task = entry["task"] or spec.options.get("task") or ("retrieval" if entry["captions"] else "pretrain")
        rows.append(
            ManifestRow(
                id=clip_id(spec.name, str(relative.with_suffix(""))),
                source=spec.name,
                split=entry["split"] or default_split,
                path=str(root.joinpath(*relative.parts)),
                captions=entry["captions"],
                labels=entry["labels"],
                fold=entry["fold"],
                task=str(task),
            )
        )
    _warn_unlisted(root, {root.joinpath(*PurePosixPath(f).parts) for f in merged}, spec)
    return rows


def _read_jsonl_records(path: Path) -> Iterable[tuple[str, dict[str, Any]]]:
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield f"{path}:{lineno}", json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SourceError(f"{path}:{lineno}: not valid JSON ({exc})") from exc


def _warn_unlisted(root: Path, listed: set[Path], spec: SourceSpec) -> None:
    unlisted = sorted(
        p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file() and p not in listed
    )
    if unlisted:
        log.warning(
            "source '%s': %d audio file(s) under %s have no entry in the captions file and are not ingested "
            "(first: %s)", spec.name, len(unlisted), root, ", ".join(str(p) for p in unlisted[:5]),
        )


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
