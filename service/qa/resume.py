"""Resuming: ``conversations.jsonl`` is the commit log of a ``calmfirst qa`` output folder.

A chunk's turn rows are written first and its conversation lines last, so a conversation listed
in conversations.jsonl is complete. On start, ids already in it are skipped, a truncated last line
is dropped, and turn/summary rows of uncommitted conversations are pruned. (Files are flushed, not
fsynced: a killed process loses nothing, a power cut may.)
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from service.io.readers import InputFormatError
from service.qa.rows import CONVERSATION_COLUMNS, TURN_COLUMNS

logger = logging.getLogger(__name__)

OUTPUT_FILES = ("turns.jsonl", "turns.csv", "conversations.jsonl", "conversations.csv")


def _rewrite(path: Path, lines: Iterator[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.writelines(lines)
    os.replace(tmp, path)


def _commit_lines(path: Path) -> Iterator[tuple[bytes, str | None]]:
    """(line, conversation id or None when unreadable) for each line of conversations.jsonl."""
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                yield raw, None  # no final newline: the writer was cut off mid-line
                continue
            try:
                key = str(json.loads(raw)["conversation_id"])
            except (ValueError, KeyError, TypeError):
                key = None
            yield raw, key


def _committed(path: Path) -> set[str]:
    """Ids in conversations.jsonl; unreadable (truncated) lines and repeats are dropped from the file."""
    if not path.exists():
        return set()
    done: set[str] = set()
    dropped = 0
    for _, key in _commit_lines(path):
        if key is None or key in done:
            dropped += 1
        else:
            done.add(key)
    if dropped:
        logger.warning("%s: dropping %d unreadable or repeated line(s) before resuming", path.name, dropped)
        kept: set[str] = set()

        def keep() -> Iterator[str]:
            for raw, key in _commit_lines(path):
                if key is not None and key not in kept:
                    kept.add(key)
                    yield raw.decode("utf-8", errors="replace")

        _rewrite(path, keep())
    return done


def _prune_jsonl(path: Path, done: set[str]) -> None:
    if not path.exists():
        return
    dropped = 0

    def keep() -> Iterator[str]:
        nonlocal dropped
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    ok = line.endswith("\n") and str(json.loads(line)["conversation_id"]) in done
                except (ValueError, KeyError, TypeError):
                    ok = False
                if ok:
                    yield line
                else:
                    dropped += 1

    _rewrite(path, keep())
    if dropped:
        logger.info("%s: pruned %d row(s) of unfinished conversations", path.name, dropped)


def _prune_csv(path: Path, done: set[str], columns: list[str], *, unique: bool) -> None:
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, encoding="utf-8", newline="") as f:
        header = next(csv.reader(f), None)
    if header != columns:
        raise InputFormatError(f"{path}: columns differ from this version's; write to a new output folder")
    seen: set[str] = set()

    def keep() -> Iterator[str]:
        with open(path, encoding="utf-8", newline="") as f:
            lines = iter(f)
            yield next(lines)
            for row_text in _csv_records(lines):
                row = next(csv.reader([row_text]), [])
                if len(row) != len(columns) or not row_text.endswith("\n") or row[0] not in done:
                    continue
                if unique:
                    if row[0] in seen:
                        continue
                    seen.add(row[0])
                yield row_text

    _rewrite(path, keep())


def _csv_records(lines: Iterator[str]) -> Iterator[str]:
    """Physical lines regrouped into CSV records (quoted fields may hold newlines)."""
    buf = ""
    for line in lines:
        buf += line
        if buf.count('"') % 2 == 0:
            yield buf
            buf = ""
    if buf:
        yield buf


RUN_FILE = "run.json"


def _shown(value: Any) -> str:
    return "(not given)" if value is None else repr(value)


def _check_run(out_dir: Path, run: dict[str, Any], done: set[str]) -> None:
    """Resume only the run that wrote the folder: another input, model or option would mix two runs' results
    (a conversation id of the new input already in the folder would be skipped, never scored)."""
    path = out_dir / RUN_FILE
    if done and path.is_file():
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            before = None
        if isinstance(before, dict):
            changed = [k for k in sorted(set(before) | set(run)) if before.get(k) != run.get(k)]
            if changed:
                k = changed[0]
                raise InputFormatError(
                    f"{out_dir} holds the results of another run ({k}: {_shown(before.get(k))} there, "
                    f"{_shown(run.get(k))} now): "
                    "write to a new output folder, or empty this one to start over"
                )
    path.write_text(json.dumps(run, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")


def prepare_output(out_dir: Path, run: dict[str, Any] | None = None) -> set[str]:
    """Make ``out_dir`` consistent with its commit log and return the conversation ids already done.

    ``run`` says what this run is (input, models, options: ``run.json`` in the folder); a folder holding
    conversations of a different run is an error rather than a resume. A folder without ``run.json`` (written
    before it existed) resumes as before."""
    out_dir.mkdir(parents=True, exist_ok=True)
    done = _committed(out_dir / "conversations.jsonl")
    if run is not None:
        _check_run(out_dir, run, done)
    if any((out_dir / name).exists() for name in OUTPUT_FILES):
        _prune_jsonl(out_dir / "turns.jsonl", done)
        _prune_csv(out_dir / "turns.csv", done, TURN_COLUMNS, unique=False)
        _prune_csv(out_dir / "conversations.csv", done, CONVERSATION_COLUMNS, unique=True)
    return done
