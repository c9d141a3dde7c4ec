"""Lines of input files and the problems found in them: the bad-line report every reader yields, and a CSV
reader where one broken quote cannot swallow the rest of the file.

They sit in ``data`` because every layer reads files a user wrote: ``calmfirst score`` and ``calmfirst qa``
(``service.io.readers``, ``service.qa.readers``) and a researcher's training CSV (``training.data``).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class InputFormatError(ValueError):
    """The input as a whole cannot be read (unknown format, missing CSV column)."""


@dataclass
class BadLine:
    """A line that was skipped, and why (reported as ``PATH: line N: reason (skipped)``)."""

    line: int
    reason: str
    #: the file it is in, when the input is a folder or glob of files (else the input itself)
    path: str | None = None

    def report(self, source: str | Path) -> str:
        """``PATH: line N: reason (skipped)``, naming the file the line is in."""
        return f"{self.path or source}: line {self.line}: {self.reason} (skipped)\n"


class _Lines:
    """Physical lines with a push-back, keeping the lines the csv reader took for the record it is reading."""

    def __init__(self, f: Iterable[str]) -> None:
        self._it = iter(f)
        self._back: list[str] = []
        self.taken: list[str] = []

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self._back.pop() if self._back else next(self._it)
        self.taken.append(line)
        return line

    def record(self) -> list[str]:
        taken, self.taken = self.taken, []
        return taken

    def push_back(self, lines: Sequence[str]) -> None:
        self._back.extend(reversed(lines))


class CsvTable:
    """A CSV file as its header and its rows, where one broken quote cannot swallow the rest of the file.

    A quoted field may hold newlines, so the csv module reads on until the quote closes: a stray ``"`` would
    silently turn every later line into one field. Here a record that spans several lines and does not parse
    strictly (the quote closes before something other than a delimiter, or never closes) or has a different
    number of fields than the header is reported as a bad line *where it starts*, and the lines after that one
    are read again, so the rows behind it are kept. A one-line record the strict parser rejects (``"a" b``) is
    read as the lenient csv module always read it. Rows are dicts as ``csv.DictReader`` makes them (extra fields
    under the key None, missing ones None) and blank lines are skipped; line numbers are 1-based physical lines.
    """

    def __init__(self, f: Iterable[str], *, delimiter: str = ",") -> None:
        self.delimiter = delimiter
        self._lines = _Lines(f)
        self._line = 0  # physical lines read before the current record
        self.fieldnames: list[str] | None = None
        for item in self._records():
            if isinstance(item, BadLine):
                raise InputFormatError(f"line {item.line}: unreadable CSV header ({item.reason})")
            self.fieldnames = item[1]
            break

    def _records(self) -> Iterator[tuple[int, list[str]] | BadLine]:
        while True:
            reader = csv.reader(self._lines, delimiter=self.delimiter, strict=True)
            try:
                for row in reader:
                    taken = self._lines.record()
                    start = self._line + 1
                    width = len(self.fieldnames) if self.fieldnames is not None else len(row)
                    if len(taken) > 1 and len(row) != width:
                        yield self._runaway(start, taken, f"{len(row)} fields where the header has {width}")
                        break  # a new reader over the lines pushed back
                    self._line += len(taken)
                    if row:
                        yield start, row
                else:
                    return
            except csv.Error as e:
                taken = self._lines.record()
                start = self._line + 1
                if len(taken) > 1:
                    yield self._runaway(start, taken, str(e))
                    continue
                self._line += len(taken)
                try:
                    row = next(csv.reader(taken, delimiter=self.delimiter))
                except csv.Error as lenient:
                    yield BadLine(start, f"unreadable CSV row ({lenient})")
                    continue
                if row:
                    yield start, row

    def _runaway(self, start: int, taken: list[str], why: str) -> BadLine:
        """The record starting at ``start`` ran over ``len(taken)`` lines: skip its first line, read the rest again."""
        self._line += 1
        self._lines.push_back(taken[1:])
        end = start + len(taken) - 1
        return BadLine(
            start,
            f"unreadable CSV row: a quoted field opened on line {start} runs on to line {end} ({why}); "
            f"check its quotes (lines {start + 1}-{end} are read again as rows of their own)",
        )

    def rows(self) -> Iterator[tuple[int, dict[str | Any, Any]] | BadLine]:
        """``(line number, row)`` for each data row, or a ``BadLine``; a bad row never ends the file."""
        for item in self._records():
            if isinstance(item, BadLine):
                yield item
                continue
            line, values = item
            names = self.fieldnames or []
            row: dict[str | Any, Any] = dict(zip(names, values, strict=False))
            if len(values) > len(names):
                row[None] = values[len(names) :]
            for name in names[len(values) :]:
                row[name] = None
            yield line, row
