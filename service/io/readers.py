"""Input files: one JSONL reader, message records from .jsonl/.csv/.txt, and the problems found in them.

Bad lines are yielded as :class:`BadLine` (with their line number), never raised: the callers
report them and go on, so one broken line never stops a batch. Only a file that cannot be read
as a whole (unknown format, missing CSV column) raises :class:`InputFormatError`.

An input may also be a folder or a glob (``calls/2026-11-*.jsonl``, ``calls/**/*.csv``): its files
are read one after the other in sorted order, each exactly as it would be alone; a bad line is
reported with its own file's name and line number, and a record without an id gets
``"<file>:<0-based line>"`` (for CSV the 0-based data row, header excluded; the file's path as
globbed, or relative to the folder), so ids stay unique across files.
"""

from __future__ import annotations

import glob
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from data.lines import BadLine, CsvTable, InputFormatError
from service.text import replace_surrogates

#: Messages per model call of ``calmfirst score`` (both engines) unless ``--chunk`` says otherwise: bigger
#: chunks waste less padding (``service.score.score_file``).
SCORE_CHUNK = 2048


@dataclass
class Record:
    """One message to score."""

    line: int
    id: Any
    text: str


def read_jsonl(lines: Iterable[str], *, start: int = 1) -> Iterator[tuple[int, dict[str, Any]] | BadLine]:
    """``(line number, object)`` for each non-blank line holding a JSON object, a ``BadLine`` for the others."""
    for n, line in enumerate(lines, start=start):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield BadLine(n, f"not valid JSON ({e.msg.removesuffix(' at')} at column {e.colno})")
            continue
        except RecursionError:
            yield BadLine(n, "not valid JSON (nested too deeply)")
            continue
        except ValueError as e:  # an integer of more than 4300 digits
            yield BadLine(n, f"not valid JSON ({str(e).split(':')[0]})")
            continue
        if not isinstance(obj, dict):
            yield BadLine(n, "expected a JSON object")
            continue
        if "\\u" in line:  # a "\\ud800" escape is a lone surrogate no UTF-8 writer accepts: U+FFFD, as for bad bytes
            obj = replace_surrogates(obj)
        yield n, obj


def read_jsonl_file(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """A JSONL file the project wrote itself (or ships): a bad line is an error naming the file and line."""
    with open(path, encoding="utf-8") as f:
        for item in read_jsonl(f):
            if isinstance(item, BadLine):
                raise ValueError(f"{path.name}:{item.line}: {item.reason}")
            yield item


def message_format(name: str) -> str:
    """``jsonl``, ``csv``, ``tsv`` or ``txt`` from a file name."""
    suffix = Path(name).suffix.lower()
    if suffix in {".jsonl", ".ndjson", ".json"}:
        return "jsonl"
    if suffix in {".csv", ".tsv"}:
        return suffix[1:]
    if suffix in {".txt", ""}:
        return "txt"
    raise InputFormatError(f"{name}: unknown input format {suffix!r} (use .jsonl, .csv or .txt)")


#: File name endings read from a folder of messages.
MESSAGE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".txt")
_GLOB_CHARS = frozenset("*?[")


def input_files(source: str | Path, suffixes: Sequence[str] = MESSAGE_SUFFIXES) -> list[Path] | None:
    """The files of a folder or glob input, sorted; None when ``source`` is one file (or stdin).

    A folder contributes its files (not sub-folders) with one of ``suffixes``; a glob every file it
    matches (``**`` recurses). Raises :class:`InputFormatError` when there is none.
    """
    text = str(source)
    if text == "-":
        return None
    path = Path(text)
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in suffixes)
        if not files:
            raise InputFormatError(f"{source}: no input files in this folder ({', '.join(suffixes)})")
        return files
    if path.exists() or not (_GLOB_CHARS & set(text)):
        return None
    files = sorted(Path(f) for f in glob.glob(text, recursive=True) if Path(f).is_file())
    if not files:
        raise InputFormatError(f"{source}: no files match")
    return files


def check_source(source: str) -> None:
    """Fail before any model loads: a missing file, a folder without inputs or a glob matching nothing is an
    :class:`InputFormatError` naming it, as is a file of an unknown format."""
    if source == "-":
        return
    if input_files(source) is None:
        if not Path(source).is_file():
            raise InputFormatError(f"{source}: no such file")
        message_format(source)


def file_label(file: Path, source: str | Path) -> str:
    """How a file of a folder input is named in ids: relative to the folder; as globbed otherwise."""
    base = Path(source)
    return file.relative_to(base).as_posix() if base.is_dir() else file.as_posix()


DefaultId = Callable[[int], Any]


def _line_id(n: int) -> Any:
    return n


def _jsonl_records(
    lines: Iterable[str], *, text_field: str, id_field: str, default_id: DefaultId = _line_id
) -> Iterator[Record | BadLine]:
    for item in read_jsonl(lines):
        if isinstance(item, BadLine):
            yield item
            continue
        n, obj = item
        text = obj.get(text_field)
        if not isinstance(text, str) or not text.strip():
            yield BadLine(n, f"field {text_field!r} missing or not a non-empty string")
            continue
        yield Record(n, obj[id_field] if id_field in obj else default_id(n - 1), text)


def _txt_records(lines: Iterable[str], *, default_id: DefaultId = _line_id) -> Iterator[Record | BadLine]:
    for n, line in enumerate(lines, start=1):
        text = line.rstrip("\r\n")
        if text.strip():
            yield Record(n, default_id(n - 1), text)


def _csv_records(
    f: IO[str], *, text_field: str, id_field: str, delimiter: str, default_id: DefaultId = _line_id
) -> Iterator[Record | BadLine]:
    table = CsvTable(f, delimiter=delimiter)
    if table.fieldnames is None:
        return
    if text_field not in table.fieldnames:
        raise InputFormatError(f"CSV header has no column {text_field!r} (columns: {table.fieldnames})")
    row_no = 0
    for item in table.rows():
        if isinstance(item, BadLine):
            yield item
            continue
        line, row = item
        row_no += 1
        text = row.get(text_field)
        if None in row:
            yield BadLine(line, "more fields than the header")
            continue
        if not text or not text.strip():
            yield BadLine(line, f"column {text_field!r} empty")
            continue
        yield Record(line, row.get(id_field) or default_id(row_no - 1), text)


def _chain(first: list[str], rest: Iterable[str]) -> Iterator[str]:
    yield from first
    yield from rest


def read_records(
    source: str, *, text_field: str = "text", id_field: str = "id", stdin: IO[str] | None = None
) -> Iterator[Record | BadLine]:
    """Yield records (or bad lines) from a path, a folder or glob of files, or ``-`` (stdin, JSONL or plain lines)."""
    files = input_files(source)
    if files is not None:
        for file in files:
            label = file_label(file, source)

            def file_id(i: int, label: str = label) -> str:
                return f"{label}:{i}"

            for item in _read_file(str(file), text_field=text_field, id_field=id_field, default_id=file_id):
                if isinstance(item, BadLine):
                    item.path = str(file)
                yield item
        return
    if source == "-":
        stream = stdin or sys.stdin
        if stream is sys.stdin and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")  # undecodable bytes become U+FFFD, as in files
        first = stream.readline()
        if not first:
            return
        lines = _chain([first], stream)
        if first.lstrip().startswith("{"):
            yield from _jsonl_records(lines, text_field=text_field, id_field=id_field)
        else:
            yield from _txt_records(lines)
        return
    yield from _read_file(source, text_field=text_field, id_field=id_field)


def _read_file(
    source: str, *, text_field: str, id_field: str, default_id: DefaultId = _line_id
) -> Iterator[Record | BadLine]:
    fmt = message_format(source)
    path = Path(source)
    if not path.exists():
        raise InputFormatError(f"{source}: no such file")
    with open(path, encoding="utf-8-sig", errors="replace", newline="" if fmt in {"csv", "tsv"} else None) as f:
        if fmt == "jsonl":
            yield from _jsonl_records(f, text_field=text_field, id_field=id_field, default_id=default_id)
        elif fmt in {"csv", "tsv"}:
            yield from _csv_records(
                f,
                text_field=text_field,
                id_field=id_field,
                delimiter="," if fmt == "csv" else "\t",
                default_id=default_id,
            )
        else:
            yield from _txt_records(f, default_id=default_id)


def count_lines(source: str) -> int | None:
    """Lines in a file, or in all files of a folder or glob (for progress bars); None for stdin."""
    if source == "-":
        return None
    files = input_files(source)
    if files is not None:
        return sum(count_lines(str(f)) or 0 for f in files)
    with open(source, "rb") as f:
        return sum(buf.count(b"\n") for buf in iter(lambda: f.read(1 << 20), b""))
