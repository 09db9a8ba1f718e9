"""What every source kind shares: the params entry (SourceSpec), the adapter registry and the small
helpers the adapters use. The adapters themselves live in :mod:`clap.data.sources` (native layouts)
and :mod:`clap.data.sources_laion`; both import this module, never each other's registry.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from clap.data.manifest import ManifestRow
from clap.data.metadata import Record, SourceError, check_encoding, read_csv
from clap.params import check_keys

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
        check_keys(entry, allowed | {"name", "kind", "path"}, f"params.yaml source '{name}' (kind {kind})", SourceError)
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
