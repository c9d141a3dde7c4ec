"""The SQLite key-value store behind the embedding cache and the validation run's output cache."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from service.io.store import CHUNK, SqliteStore
from service.qa.validate import _Store
from service.routing.agent_model import EmbeddingCache


def test_embedding_cache_round_trips_more_keys_than_one_query_holds(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "e.sqlite")
    n = CHUNK * 2 + 7
    keys = [EmbeddingCache.key("enc", f"text {i}") for i in range(n)]
    vecs = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)
    cache.put_many(zip(keys, vecs, strict=True))
    found = cache.get_many([*keys, EmbeddingCache.key("enc", "never stored")])
    assert len(found) == n
    assert all(np.array_equal(found[k], v) for k, v in zip(keys, vecs, strict=True))
    cache.put_many([(keys[0], np.ones(4, dtype=np.float32))])  # replaced, not added
    assert np.array_equal(cache.get_many([keys[0]])[keys[0]], np.ones(4))
    cache.close()
    again = EmbeddingCache(tmp_path / "e.sqlite")  # on disk: a re-run reads it
    assert len(again.get_many(keys)) == n


def test_stores_keep_their_tables_so_existing_caches_still_read(tmp_path: Path) -> None:
    """The key is SHA-1 of the parts joined by NUL, and the tables are the ones the caches were first written with."""
    EmbeddingCache(tmp_path / "e.sqlite").close()
    store = _Store(tmp_path / "o.sqlite")
    store.put_many([(_Store.key("agent", "m", "您好", ""), {"steps": ["thank"], "mistakes": []})])
    assert store.get_many([_Store.key("agent", "m", "您好", "")]) == {
        _Store.key("agent", "m", "您好", ""): {"steps": ["thank"], "mistakes": []}
    }
    store.close()
    assert SqliteStore.key("a", "b") == "4a3dec2d1f8245280855c42db0ee4239f917fdb8"  # sha1("a\0b")
    for name, table, columns in (("e.sqlite", "emb", ["key", "vec"]), ("o.sqlite", "out", ["key", "value"])):
        with sqlite3.connect(tmp_path / name) as db:
            assert [row[1] for row in db.execute(f"PRAGMA table_info({table})")] == columns
