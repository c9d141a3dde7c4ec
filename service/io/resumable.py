"""An output file that is complete or absent, and that a re-run finishes instead of starting over.

``calmfirst score -o scored.jsonl`` writes ``scored.jsonl.partial`` and renames it to ``scored.jsonl``
only when every record is written (after an fsync), so a killed run never leaves a file that looks
complete. Beside it, ``scored.jsonl.progress`` is the commit log: its first line says which run this
is (the input file's path, size and modification time, the fields, language, model, chunk and batch
size), and one line is appended after each chunk is written and synced: how many records and bytes
of the partial file are final.

Re-running with the same arguments finds both, cuts the partial file back to the last commit (a
chunk cut off mid-write is dropped), skips that many records of the input without scoring them and
appends the rest; chunks start at the same records as in a clean run, so the output is the same
byte for byte. Different arguments, a changed input, or stdin or a folder as input start over.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def input_identity(source: str) -> dict[str, Any] | None:
    """What identifies a single input file's content cheaply; None for stdin, folders and globs (no resume)."""
    path = Path(source)
    if source == "-" or not path.is_file():
        return None
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


class ResumableOutput:
    """``PATH.partial`` + ``PATH.progress`` until :meth:`finish` renames the partial file to ``PATH``."""

    def __init__(self, path: str | Path, run: dict[str, Any] | None) -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.progress = self.path.with_name(self.path.name + ".progress")
        #: the identity of this run; None: not resumable (the partial file is still renamed only when complete)
        self.run = None if run is None else {"format_version": FORMAT_VERSION, **run}
        #: records already written by an interrupted run with the same identity (skip them)
        self.done = 0
        self.stream: IO[str] = self._open()

    # ------------------------------------------------------------------ start
    def _committed(self) -> tuple[int, int] | None:
        """(records, bytes) of the last commit of an interrupted run of this same run, or None."""
        if self.run is None or not (self.partial.is_file() and self.progress.is_file()):
            return None
        try:
            lines = self.progress.read_text(encoding="utf-8").splitlines()
            if not lines or json.loads(lines[0]) != self.run:
                logger.warning("%s: left by a run with other arguments or input; starting over", self.partial)
                return None
            last = (0, 0)
            for line in lines[1:]:
                try:
                    entry = json.loads(line)
                    last = (int(entry["records"]), int(entry["bytes"]))
                except (ValueError, KeyError, TypeError):
                    break  # a commit line cut off mid-write: the one before it holds
        except (OSError, ValueError):
            return None
        if last[1] > self.partial.stat().st_size:
            logger.warning("%s: shorter than its last commit; starting over", self.partial)
            return None
        return last

    def _open(self) -> IO[str]:
        committed = self._committed()
        if committed is not None and committed[0] > 0:
            records, size = committed
            with open(self.partial, "r+b") as f:
                f.truncate(size)
            self.done = records
            logger.info("%s: resuming after %d records already written", self.path, records)
            return open(self.partial, "a", encoding="utf-8", newline="")
        if self.run is not None:
            self._write_progress(json.dumps(self.run, sort_keys=True), fresh=True)
        else:
            self.progress.unlink(missing_ok=True)
        return open(self.partial, "w", encoding="utf-8", newline="")

    def _write_progress(self, line: str, *, fresh: bool = False) -> None:
        with open(self.progress, "w" if fresh else "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    # ------------------------------------------------------------------ while writing
    @property
    def resumed(self) -> bool:
        return self.done > 0

    def commit(self, records: int) -> None:
        """``records`` records (in total, from the start) are written: make them durable and note it."""
        self.stream.flush()
        os.fsync(self.stream.fileno())
        if self.run is not None:
            size = os.fstat(self.stream.fileno()).st_size
            self._write_progress(json.dumps({"records": records, "bytes": size}))

    # ------------------------------------------------------------------ end
    def finish(self) -> None:
        """Everything is written: the partial file becomes ``PATH`` (atomically) and the log goes."""
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self.stream.close()
        os.replace(self.partial, self.path)
        _fsync_dir(self.path.parent)
        self.progress.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop without finishing (an error): the partial file and its log stay for a re-run."""
        if not self.stream.closed:
            self.stream.flush()
            self.stream.close()

    def discard(self) -> None:
        """Nothing worth keeping (the input could not be read at all)."""
        self.close()
        self.partial.unlink(missing_ok=True)
        self.progress.unlink(missing_ok=True)
