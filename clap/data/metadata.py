"""Reading dataset metadata safely: text tables in a declared encoding, paths kept inside the dataset.

Every native layout ships its clip list as a CSV or JSON Lines file. Those files are decoded as
UTF-8 (a byte-order mark is dropped) unless the source says otherwise with ``encoding:`` in
params.yaml ``sources``. A byte the encoding cannot decode stops the read with one line naming the
file, the line, the byte and the setting that fixes it, e.g.::

    data/clotho/clotho_captions_evaluation.csv line 17: not valid UTF-8 (byte 0xe9 at column 12); set
    `encoding: latin-1` (or the file's actual encoding, e.g. cp1252) on source 'clotho' in params.yaml

Metadata problems are errors, not quarantines: a table in the wrong encoding or a row pointing
outside the dataset folder says the metadata is not what the layout promises, so nothing is read
from it. (Audio problems are the ones quarantined, clip by clip, by the normalize stage.)

File names taken from metadata are confined to the dataset folder: an absolute path or a ``..``
component is an error naming the row. The check is on the name as written; symbolic links inside
the folder are followed as the dataset's owner set them up.

:func:`read_csv_rows` is the reader for callers outside the adapters (the zero-shot native loader).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator

#: The encoding metadata files are read in unless a source sets ``encoding``.
DEFAULT_ENCODING = "utf-8"
_BOM = codecs.BOM_UTF8
_DRIVE = re.compile(r"^[A-Za-z]:")

#: One CSV record: the line it ends on (1-based, the header is line 1) and its cells by column.
Record = tuple[int, dict[str, str]]


class SourceError(ValueError):
    """A source is misconfigured or its files do not have the expected layout."""


def check_encoding(encoding: Any, owner: str) -> str:
    """The codec name, or an error naming the setting when Python knows no such encoding."""
    try:
        return codecs.lookup(str(encoding)).name
    except LookupError as exc:
        raise SourceError(
            f"{owner}: unknown encoding {encoding!r}; use a Python codec name such as utf-8, latin-1 or cp1252"
        ) from exc


def decode_text(path: Path, encoding: str = DEFAULT_ENCODING, owner: str = "the source in params.yaml") -> str:
    """The file's text in ``encoding``; a byte that does not decode is a :class:`SourceError`.

    ``owner`` names where ``encoding`` is set (``source 'clotho' in params.yaml``), for the fix.
    """
    data = path.read_bytes()
    codec = check_encoding(encoding, owner)
    body = data[len(_BOM):] if codec == "utf-8" and data.startswith(_BOM) else data
    try:
        return body.decode(codec)
    except UnicodeDecodeError as exc:
        offset = exc.start + (len(data) - len(body))
        line = data.count(b"\n", 0, offset) + 1
        column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
        name = "UTF-8" if codec == "utf-8" else codec
        if codec == "utf-8":
            fix = f"set `encoding: latin-1` (or the file's actual encoding, e.g. cp1252) on {owner}"
        else:
            fix = f"set `encoding:` on {owner} to the file's actual encoding"
        raise SourceError(
            f"{path} line {line}: not valid {name} (byte 0x{data[offset]:02x} at column {column}); {fix}"
        ) from None


def read_csv(
    path: Path, required: Iterable[str], encoding: str = DEFAULT_ENCODING, owner: str = "the source in params.yaml"
) -> list[Record]:
    """A CSV file with a header as ``(line, {column: cell})``; cells and column names stripped.

    A missing file, a missing column, a byte the encoding cannot decode or a malformed line is an
    error naming the file (and the line).
    """
    if not path.is_file():
        raise SourceError(f"{path}: not found (expected by the source layout; see clap.data.sources)")
    reader = csv.DictReader(io.StringIO(decode_text(path, encoding, owner), newline=""))
    try:
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in required if c not in columns]
        if missing:
            raise SourceError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(columns) or 'none'})")
        records = []
        for record in reader:
            cells = {(k or "").strip(): (v or "").strip() for k, v in record.items() if not isinstance(v, list)}
            records.append((reader.line_num, cells))
        return records
    except csv.Error as exc:
        raise SourceError(f"{path} line {reader.line_num}: not a readable CSV line ({exc})") from None


def read_csv_rows(path: Path, encoding: str = DEFAULT_ENCODING, owner: str = "the set in params.yaml") -> list[list[str]]:
    """A CSV file as lists of cells (header or not), decoded as :func:`decode_text` does."""
    reader = csv.reader(io.StringIO(decode_text(path, encoding, owner), newline=""))
    try:
        return list(reader)
    except csv.Error as exc:
        raise SourceError(f"{path} line {reader.line_num}: not a readable CSV line ({exc})") from None


def read_jsonl(
    path: Path, encoding: str = DEFAULT_ENCODING, owner: str = "the source in params.yaml"
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, object)`` for each non-blank line of a JSON Lines file."""
    for lineno, line in enumerate(decode_text(path, encoding, owner).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SourceError(f"{path} line {lineno}: not valid JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise SourceError(f"{path} line {lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def path_inside(folder: Path, name: str, where: str, column: str) -> Path:
    """``folder / name`` for a relative ``name`` that stays inside ``folder``, else an error naming the row.

    ``where`` is the row (``<file> line <n>``), ``column`` the field the name came from.
    """
    text = str(name).strip()
    as_posix = PurePosixPath(text.replace("\\", "/"))
    if not text or as_posix.is_absolute() or ".." in as_posix.parts or _DRIVE.match(text):
        raise SourceError(
            f"{where}: {column} {name!r} must be a relative path inside {folder} (no '..', not absolute); "
            "fix or remove the row"
        )
    return folder.joinpath(*PurePosixPath(text).parts)
