"""A key-value store on disk (SQLite) for model outputs that are costly to recompute and never change.

The agent-turn model's text embeddings (``service.routing.agent_model.EmbeddingCache``) and the handling
score's validation run (``service.qa.validate``: customer predictions and agent codes) keep their outputs
here, keyed by a hash of what produced them (encoder or model checksum) and the input, so a re-run reads
them instead of scoring again. One table per store; values go through a codec (float32 bytes, JSON).
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

V = TypeVar("V")

#: Keys per ``SELECT ... IN (...)`` (SQLite's default limit on bound parameters is 999).
CHUNK = 500


class SqliteStore(Generic[V]):
    """``get_many`` / ``put_many`` over one table of ``(key TEXT PRIMARY KEY, <column>)``."""

    def __init__(
        self,
        path: str | Path,
        *,
        table: str,
        column: str,
        column_type: str,
        encode: Callable[[V], bytes | str],
        decode: Callable[[bytes | str], V],
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.table, self.column = table, column
        self.encode, self.decode = encode, decode
        self.db = sqlite3.connect(str(self.path), timeout=60)
        self.db.execute(f"CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, {column} {column_type})")
        self.db.commit()

    @staticmethod
    def key(*parts: str) -> str:
        """A fixed-length key for what produced a value and its input (the parts joined by NUL, SHA-1)."""
        return hashlib.sha1("\0".join(parts).encode()).hexdigest()

    def get_many(self, keys: Sequence[str]) -> dict[str, V]:
        """The values found, by key (keys not stored are absent)."""
        found: dict[str, V] = {}
        for start in range(0, len(keys), CHUNK):
            chunk = list(keys[start : start + CHUNK])
            marks = ",".join("?" * len(chunk))
            query = f"SELECT key, {self.column} FROM {self.table} WHERE key IN ({marks})"
            for k, raw in self.db.execute(query, chunk):
                found[k] = self.decode(raw)
        return found

    def put_many(self, items: Iterable[tuple[str, V]]) -> None:
        self.db.executemany(
            f"INSERT OR REPLACE INTO {self.table} (key, {self.column}) VALUES (?, ?)",
            [(k, self.encode(v)) for k, v in items],
        )
        self.db.commit()

    def close(self) -> None:
        self.db.close()
