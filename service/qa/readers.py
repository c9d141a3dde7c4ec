"""Transcripts in: JSONL (one conversation a line) or CSV (one turn a row), streamed.

Bad input is reported, never fatal: a line or row that cannot be read comes out as a
:class:`~service.io.readers.BadLine` with its line number and is skipped; a bad *turn* (missing or
unknown role, empty text) skips only that turn, and the conversation's ``skipped_turns`` says its
score rests on partial data. CSV rows of one conversation must be contiguous (exports are sorted;
buffering a whole file to regroup it would defeat streaming); a conversation_id that comes back
later is reported and those rows are skipped. Turns are ordered by ``turn_index``.

The input may also be a folder or glob of such files (``service.io.readers.input_files``): they are
read in sorted order, each as it would be alone; a JSONL conversation without an id gets
``"<file>:<0-based line>"`` and a problem names its own file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from data.lines import BadLine, CsvTable, InputFormatError
from data.vocab import Role
from service.io.readers import file_label, input_files, read_jsonl
from service.routing.conversation import Turn

CSV_REQUIRED = ("conversation_id", "turn_index", "role", "text")
#: File name endings read from a folder of transcripts.
TRANSCRIPT_SUFFIXES = (".jsonl", ".ndjson", ".csv")


@dataclass
class SourceConversation:
    """One conversation as read from the input, before scoring."""

    id: Any
    line: int
    agent_id: str | None = None
    turns: list[Turn] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    skipped_turns: int = 0
    last_line: int = 0
    #: the file it is in, when the input is a folder or glob of files
    path: str | None = None

    @property
    def key(self) -> str:
        return str(self.id)


def short(value: Any, limit: int = 40) -> str:
    """``repr`` of a value from the input, cut to ``limit`` characters (problem messages stay one line)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _role(value: Any) -> tuple[Role | None, str | None]:
    """(role, None) or (None, reason)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, "role missing"
    role = value.strip().lower() if isinstance(value, str) else None
    if role not in tuple(Role):
        return None, f"unknown role {short(value)} (expected customer or agent)"
    return Role(role), None


def _text_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return "text missing or empty"
    return None


def transcript_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in {".jsonl", ".ndjson"}:
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise InputFormatError(f"{path}: unknown transcript format {suffix!r} (use .jsonl or .csv)")


def check_input(path: str | Path) -> str:
    """The input's format (``files`` for a folder or glob); raises :class:`InputFormatError` before any model loads."""
    files = input_files(path, TRANSCRIPT_SUFFIXES)
    if files is not None:
        for f in files:
            check_input(f)
        return "files"
    fmt = transcript_format(path)
    if not Path(path).is_file():
        raise InputFormatError(f"{path}: no such file")
    if fmt == "csv":  # a missing column is found now, before the output folder gets empty files
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as stream:
            try:
                _csv_header(CsvTable(stream))
            except InputFormatError as e:
                raise InputFormatError(f"{path}: {e}") from None
    return fmt


def _csv_header(table: CsvTable) -> list[str] | None:
    """The transcript CSV's column names (stripped), checked for the required ones; None for an empty file."""
    if table.fieldnames is None:
        return None
    header = [h.strip() for h in table.fieldnames]
    missing = [c for c in CSV_REQUIRED if c not in header]
    if missing:
        raise InputFormatError(f"line 1: CSV header has no column {missing[0]!r} (needs {', '.join(CSV_REQUIRED)})")
    return header


def _jsonl_conversations(f: IO[str], *, id_prefix: str | None = None) -> Iterator[SourceConversation | BadLine]:
    for item in read_jsonl(f):
        if isinstance(item, BadLine):
            yield item
            continue
        n, obj = item
        conv_id = obj["id"] if "id" in obj else (n - 1 if id_prefix is None else f"{id_prefix}:{n - 1}")
        if isinstance(conv_id, bool) or not isinstance(conv_id, str | int) or conv_id == "":
            yield BadLine(n, "field 'id' must be a non-empty string or an integer")
            continue
        agent = obj.get("agent_id")
        if agent is not None and (isinstance(agent, bool) or not isinstance(agent, str | int)):
            yield BadLine(n, "field 'agent_id' must be a string or an integer")
            continue
        turns = obj.get("turns")
        if not isinstance(turns, list) or not turns:
            yield BadLine(n, "field 'turns' missing or not a non-empty list")
            continue
        conv = SourceConversation(conv_id, n, str(agent) if agent not in (None, "") else None, last_line=n)
        for i, t in enumerate(turns):
            role: Role | None = None
            if not isinstance(t, dict):
                reason: str | None = "not a JSON object"
            else:
                role, reason = _role(t.get("role"))
                reason = reason or _text_problem(t.get("text"))
            if reason or role is None:
                conv.skipped_turns += 1
                yield BadLine(n, f"turn {i}: {reason}")
                continue
            conv.turns.append(Turn(role=role, text=t["text"], ts=t.get("ts")))
            conv.indices.append(i)
        yield conv


def _csv_conversations(f: IO[str]) -> Iterator[SourceConversation | BadLine]:
    table = CsvTable(f)
    header = _csv_header(table)
    if header is None:
        return
    table.fieldnames = header
    seen: set[str] = set()
    current: SourceConversation | None = None
    rows: list[tuple[int, Turn]] = []

    def finish(conv: SourceConversation) -> SourceConversation:
        rows.sort(key=lambda r: r[0])  # stable: equal indices cannot occur, they are rejected below
        conv.indices = [i for i, _ in rows]
        conv.turns = [t for _, t in rows]
        rows.clear()
        return conv

    for item in table.rows():
        if isinstance(item, BadLine):
            yield item
            continue
        n, row = item
        is_short = any(v is None for v in row.values())
        if None in row or is_short:
            if current is not None and (row.get("conversation_id") or "").strip() == current.key:
                current.skipped_turns += 1
            yield BadLine(n, "fewer fields than the header" if is_short else "more fields than the header")
            continue
        cid = row["conversation_id"].strip()
        if not cid:
            yield BadLine(n, "column 'conversation_id' empty")
            continue
        if current is None or cid != current.key:
            if cid in seen:
                yield BadLine(
                    n, f"conversation_id {short(cid)} reappears after other conversations (rows must be contiguous)"
                )
                continue
            if current is not None:
                yield finish(current)
            seen.add(cid)
            current = SourceConversation(cid, n)
        current.last_line = n
        if not current.agent_id and (row.get("agent_id") or "").strip():
            current.agent_id = row["agent_id"].strip()
        try:
            index = int(row["turn_index"].strip())
        except ValueError:
            current.skipped_turns += 1
            yield BadLine(n, "column 'turn_index' is not an integer")
            continue
        role, reason = _role(row["role"])
        reason = reason or _text_problem(row["text"])
        if reason is None and any(i == index for i, _ in rows):
            reason = f"turn_index {index} repeated in conversation {short(cid)}"
        if reason or role is None:
            current.skipped_turns += 1
            yield BadLine(n, str(reason))
            continue
        ts = (row.get("ts") or "").strip() or None
        rows.append((index, Turn(role=role, text=row["text"], ts=ts)))
    if current is not None:
        yield finish(current)


def read_conversations(path: str | Path) -> Iterator[SourceConversation | BadLine]:
    """Conversations (or reported problems) from a .jsonl or .csv transcript file (or a folder or glob), streamed."""
    fmt = check_input(path)
    if fmt == "files":
        for file in input_files(path, TRANSCRIPT_SUFFIXES) or []:
            for item in _read_file(file, id_prefix=file_label(file, path)):
                item.path = str(file)
                yield item
        return
    yield from _read_file(Path(path))


def _read_file(path: Path, *, id_prefix: str | None = None) -> Iterator[SourceConversation | BadLine]:
    fmt = transcript_format(path)
    with open(path, encoding="utf-8-sig", errors="replace", newline="" if fmt == "csv" else None) as f:
        if fmt == "jsonl":
            yield from _jsonl_conversations(f, id_prefix=id_prefix)
        else:
            yield from _csv_conversations(f)
