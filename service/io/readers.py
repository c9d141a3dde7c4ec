"""Input files: one JSONL reader, message records from .jsonl/.csv/.txt, and the problems found in them.

Bad lines are yielded as :class:`BadLine` (with their line number), never raised: the callers
report them and go on, so one broken line never stops a batch. Only a file that cannot be read
as a whole (unknown format, missing CSV column) raises :class:`InputFormatError`.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any


class InputFormatError(ValueError):
    """The input as a whole cannot be read (unknown format, missing CSV column)."""


@dataclass
class BadLine:
    """A line that was skipped, and why (reported as ``PATH: line N: reason (skipped)``)."""

    line: int
    reason: str


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
            yield BadLine(n, f"not valid JSON ({e.msg})")
            continue
        if not isinstance(obj, dict):
            yield BadLine(n, "expected a JSON object")
            continue
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


def _jsonl_records(lines: Iterable[str], *, text_field: str, id_field: str) -> Iterator[Record | BadLine]:
    for item in read_jsonl(lines):
        if isinstance(item, BadLine):
            yield item
            continue
        n, obj = item
        text = obj.get(text_field)
        if not isinstance(text, str) or not text.strip():
            yield BadLine(n, f"field {text_field!r} missing or not a non-empty string")
            continue
        yield Record(n, obj.get(id_field, n - 1), text)


def _txt_records(lines: Iterable[str]) -> Iterator[Record | BadLine]:
    for n, line in enumerate(lines, start=1):
        text = line.rstrip("\r\n")
        if text.strip():
            yield Record(n, n - 1, text)


def _csv_records(f: IO[str], *, text_field: str, id_field: str, delimiter: str) -> Iterator[Record | BadLine]:
    reader = csv.DictReader(f, delimiter=delimiter)
    if reader.fieldnames is None:
        return
    if text_field not in reader.fieldnames:
        raise InputFormatError(f"CSV header has no column {text_field!r} (columns: {reader.fieldnames})")
    row_no = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield BadLine(reader.line_num, f"unreadable CSV row ({e})")
            continue
        row_no += 1
        text = row.get(text_field)
        if None in row:
            yield BadLine(reader.line_num, "more fields than the header")
            continue
        if not text or not text.strip():
            yield BadLine(reader.line_num, f"column {text_field!r} empty")
            continue
        yield Record(reader.line_num, row.get(id_field) or row_no - 1, text)


def _chain(first: list[str], rest: Iterable[str]) -> Iterator[str]:
    yield from first
    yield from rest


def read_records(
    source: str, *, text_field: str = "text", id_field: str = "id", stdin: IO[str] | None = None
) -> Iterator[Record | BadLine]:
    """Yield records (or bad lines) from a path or ``-`` (stdin, JSONL or plain lines)."""
    if source == "-":
        stream = stdin or sys.stdin
        first = stream.readline()
        if not first:
            return
        lines = _chain([first], stream)
        if first.lstrip().startswith("{"):
            yield from _jsonl_records(lines, text_field=text_field, id_field=id_field)
        else:
            yield from _txt_records(lines)
        return
    fmt = message_format(source)
    path = Path(source)
    if not path.exists():
        raise InputFormatError(f"{source}: no such file")
    with open(path, encoding="utf-8-sig", errors="replace", newline="" if fmt in {"csv", "tsv"} else None) as f:
        if fmt == "jsonl":
            yield from _jsonl_records(f, text_field=text_field, id_field=id_field)
        elif fmt in {"csv", "tsv"}:
            yield from _csv_records(
                f, text_field=text_field, id_field=id_field, delimiter="," if fmt == "csv" else "\t"
            )
        else:
            yield from _txt_records(f)


def count_lines(source: str) -> int | None:
    """Lines in a file (for progress bars); None for stdin."""
    if source == "-":
        return None
    with open(source, "rb") as f:
        return sum(buf.count(b"\n") for buf in iter(lambda: f.read(1 << 20), b""))
