"""Batch scoring of files: streaming, order-preserving, bad lines reported and skipped."""

from __future__ import annotations

import csv
import json
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from service.analyzer import Analyzer

logger = logging.getLogger(__name__)

CSV_COLUMNS = [
    "id",
    "anger_level",
    "anger_label",
    "anger_score",
    "anger_probs",
    "complaint_type",
    "types",
    "threat",
    "threat_score",
    "flag",
    "escalate",
    "next_step_code",
    "next_step_text",
    "lang",
    "script",
]


class InputFormatError(ValueError):
    """The input as a whole cannot be read (unknown format, missing CSV column)."""


@dataclass
class Record:
    line: int
    id: Any
    text: str


@dataclass
class BadLine:
    line: int
    reason: str


@dataclass
class ScoreReport:
    scored: int = 0
    bad: list[BadLine] = field(default_factory=list)


def _format_of(name: str) -> str:
    suffix = Path(name).suffix.lower()
    if suffix in {".jsonl", ".ndjson", ".json"}:
        return "jsonl"
    if suffix in {".csv", ".tsv"}:
        return suffix[1:]
    if suffix in {".txt", ""}:
        return "txt"
    raise InputFormatError(f"{name}: unknown input format {suffix!r} (use .jsonl, .csv or .txt)")


def _jsonl_records(
    lines: Iterable[str], *, text_field: str, id_field: str, start: int = 1
) -> Iterator[Record | BadLine]:
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
        text = obj.get(text_field)
        if not isinstance(text, str) or not text.strip():
            yield BadLine(n, f"field {text_field!r} missing or not a non-empty string")
            continue
        yield Record(n, obj.get(id_field, n - 1), text)


def _txt_records(lines: Iterable[str], *, start: int = 1) -> Iterator[Record | BadLine]:
    for n, line in enumerate(lines, start=start):
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


def read_records(
    source: str, *, text_field: str = "text", id_field: str = "id", stdin: IO[str] | None = None
) -> Iterator[Record | BadLine]:
    """Yield records (or bad lines) from a path or ``-`` (stdin, JSONL or plain lines)."""
    if source == "-":
        stream = stdin or sys.stdin
        first = stream.readline()
        if not first:
            return
        rest: Iterable[str] = stream
        lines = _chain([first], rest)
        if first.lstrip().startswith("{"):
            yield from _jsonl_records(lines, text_field=text_field, id_field=id_field)
        else:
            yield from _txt_records(lines)
        return
    fmt = _format_of(source)
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


def _chain(first: list[str], rest: Iterable[str]) -> Iterator[str]:
    yield from first
    yield from rest


def count_lines(source: str) -> int | None:
    if source == "-":
        return None
    with open(source, "rb") as f:
        return sum(buf.count(b"\n") for buf in iter(lambda: f.read(1 << 20), b""))


def flatten(result: dict[str, Any]) -> dict[str, Any]:
    step = result["route"]["next_step"]
    return {
        "id": result["id"],
        "anger_level": result["anger"]["level"],
        "anger_label": result["anger"]["label"],
        "anger_score": result["anger"]["score"],
        "anger_probs": json.dumps(result["anger"]["probs"]),
        "complaint_type": result["complaint"]["type"],
        "types": "|".join(result["complaint"]["types"]),
        "threat": result["threat"]["detected"],
        "threat_score": result["threat"]["score"],
        "flag": result["route"]["flag"],
        "escalate": result["route"]["escalate"],
        "next_step_code": step["code"],
        "next_step_text": step["text"],
        "lang": step["lang"],
        "script": result["script"],
    }


class ResultWriter:
    def __init__(self, out: IO[str], fmt: str) -> None:
        self.out = out
        self.fmt = fmt
        self._csv = csv.DictWriter(out, fieldnames=CSV_COLUMNS) if fmt == "csv" else None
        if self._csv is not None:
            self._csv.writeheader()

    def write(self, result: dict[str, Any]) -> None:
        if self._csv is not None:
            self._csv.writerow(flatten(result))
        else:
            self.out.write(json.dumps(result, ensure_ascii=False) + "\n")


def score_file(
    analyzer: Analyzer,
    source: str,
    out: IO[str],
    *,
    out_format: str = "jsonl",
    text_field: str = "text",
    id_field: str = "id",
    chunk_size: int = 2048,
    lang: str | None = None,
    progress: bool | None = None,
    err: IO[str] | None = None,
    stdin: IO[str] | None = None,
) -> ScoreReport:
    """Score a file in bounded chunks; output order equals input order.

    Each chunk is scored as one call, which sorts it by length and pads per batch: bigger chunks
    waste less padding (on real messages 512 -> 92%, 2048 -> 97% of tokens are real).
    """
    err = err or sys.stderr
    report = ScoreReport()
    writer = ResultWriter(out, out_format)
    total = count_lines(source) if source != "-" else None
    show = progress if progress is not None else (total is not None and total >= 1000)
    bar = tqdm(total=total, unit="msg", file=err, disable=not show, dynamic_ncols=True)
    pending: list[Record] = []
    started = time.perf_counter()

    def flush() -> None:
        if not pending:
            return
        results = analyzer.analyze([r.text for r in pending], ids=[r.id for r in pending], lang=lang)
        for res in results:
            writer.write(res)
        report.scored += len(pending)
        bar.update(len(pending))
        pending.clear()

    try:
        for item in read_records(source, text_field=text_field, id_field=id_field, stdin=stdin):
            if isinstance(item, BadLine):
                report.bad.append(item)
                err.write(f"{source}: line {item.line}: {item.reason} (skipped)\n")
                continue
            pending.append(item)
            if len(pending) >= chunk_size:
                flush()
        flush()
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    logger.info(
        "scored %d messages in %.3f s (%.1f messages/s, model load excluded)",
        report.scored,
        elapsed,
        report.scored / elapsed if elapsed > 0 else 0.0,
    )
    return report


def open_output(path: str | None) -> tuple[IO[str], str]:
    if path is None or path == "-":
        # Reconfigure rather than wrap: a wrapper around sys.stdout.buffer closes it when collected.
        stream = sys.stdout
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(encoding="utf-8")
        return stream, "jsonl"
    suffix = Path(path).suffix.lower()
    if suffix not in {".jsonl", ".csv"}:
        raise InputFormatError(f"{path}: output must be .jsonl or .csv")
    return open(path, "w", encoding="utf-8", newline=""), suffix[1:]
