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
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Mapping

from clap.data.manifest import ManifestRow
from clap.data.metadata import Record, SourceError, check_encoding, path_inside, read_csv, read_jsonl
from clap.data.overlap import esc50_freesound_id, freesound_key, record_origins, youtube_key

log = logging.getLogger(__name__)

#: File endings read as audio (anything libsndfile decodes).
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".aiff", ".aif", ".au")

#: Options every source may carry, whatever its kind.
COMMON_OPTIONS = frozenset({"endpoint_url", "profile", "on_missing", "encoding"})
#: Keys that would put secrets into params.yaml; refused outright.
CREDENTIAL_KEYS = frozenset(
    {"aws_access_key_id", "aws_secret_access_key", "aws_session_token", "access_key", "secret_key", "password"}
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_UNSAFE_CLIP_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class SourceSpec:
    """One entry of params.yaml ``sources``."""

    name: str
    kind: str
    path: str
    options: Mapping[str, Any] = field(default_factory=dict)
    settings: str = "params.yaml"  # where the entry lives, for messages (the eval stages pass their section)

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
        if "encoding" in options:
            check_encoding(options["encoding"], f"params.yaml source '{name}'")
        return cls(name=name, kind=kind, path=str(entry["path"]), options=options)

    @property
    def encoding(self) -> str:
        """The encoding of the source's metadata files (``encoding`` option, default utf-8)."""
        return str(self.options.get("encoding") or "utf-8")

    @property
    def owner(self) -> str:
        """Where this source's settings live, for messages that name the fix."""
        return f"source '{self.name}' in {self.settings}"


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
    #: clip id -> origin keys (``freesound:<id>``, ``youtube:<id>``), filled by the adapters
    origins: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def note_origins(self, row_id: str, keys: Iterable[str | None]) -> None:
        found = tuple(dict.fromkeys(k for k in keys if k))
        if found:
            self.origins[row_id] = found


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


def table(spec: SourceSpec, path: Path, required: Iterable[str]) -> list[Record]:
    """A CSV of the source in its ``encoding``, as ``(line, cells)``; errors name file, line and the fix."""
    return read_csv(path, required, spec.encoding, spec.owner)


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


# the LAION-Audio-630K WebDataset adapter lives in its own module; importing it registers it
from clap.data import sources_laion  # noqa: E402,F401  (registers "laion_wds")
