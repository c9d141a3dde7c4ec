"""Output files: contract results as JSONL or CSV, and append-only writers for resumable runs."""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from service.io.readers import InputFormatError
from service.results import CSV_COLUMNS, MessageResult


class ResultWriter:
    """``calmfirst score`` output: one JSON line per result, or one CSV row (``CSV_COLUMNS``)."""

    def __init__(self, out: IO[str], fmt: str, *, header: bool = True) -> None:
        self.out = out
        self.fmt = fmt
        self._csv = csv.DictWriter(out, fieldnames=list(CSV_COLUMNS)) if fmt == "csv" else None
        if self._csv is not None and header:  # header=False: a part of a file (``service.ray_engine``)
            self._csv.writeheader()

    def write(self, result: MessageResult) -> None:
        if self._csv is not None:
            self._csv.writerow(result.csv_row())
        else:
            self.out.write(result.to_json() + "\n")


def open_output(path: str | None) -> tuple[IO[str], str]:
    """The output stream and its format (``jsonl`` or ``csv``); stdout when ``path`` is None or ``-``."""
    if path is None or path == "-":
        # Reconfigure rather than wrap: a wrapper around sys.stdout.buffer closes it when collected.
        stream = sys.stdout
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(encoding="utf-8")
        return stream, "jsonl"
    fmt = output_format(path)
    return open(path, "w", encoding="utf-8", newline=""), fmt


def output_format(path: str) -> str:
    """``jsonl`` or ``csv`` from an output file name, checked before anything is scored: an unknown ending or a
    folder that does not exist is an :class:`InputFormatError` naming it."""
    suffix = Path(path).suffix.lower()
    if suffix not in {".jsonl", ".csv"}:
        raise InputFormatError(f"{path}: output must be .jsonl or .csv")
    folder = Path(path).parent
    if not folder.is_dir():
        raise InputFormatError(f"{path}: no such folder {str(folder)!r} (create it first)")
    return suffix[1:]


def open_append(path: Path) -> tuple[IO[str], bool]:
    """``path`` opened for appending, and whether it was empty (a CSV then needs its header)."""
    fresh = not path.exists() or path.stat().st_size == 0
    return open(path, "a", encoding="utf-8", newline=""), fresh


class AppendingCsv:
    """A CSV file grown chunk by chunk (header written once, on an empty file)."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.file, fresh = open_append(path)
        self.writer = csv.DictWriter(self.file, fieldnames=list(columns), lineterminator="\n")
        if fresh:
            self.writer.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        self.writer.writerow(row)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()
