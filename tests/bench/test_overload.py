"""The open-loop load generator of ``make bench-overload`` reads real answers right (statuses, latencies)."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from bench.overload import PATIENCE_S, bulk_beside_live, markdown, open_loop, transcript, transcripts_beside_live
from service.settings import Settings
from tests.service.api.live import live_server


def test_overload_open_loop_counts_answers_and_sheds(tiny_analyzer) -> None:  # type: ignore[no-untyped-def]
    texts = ["快递还没到!", "謝謝", "什麼態度!我要投訴你"]
    with live_server(Settings(max_inflight=0), tiny_analyzer) as url:
        port = urlsplit(url).port
        assert port is not None
        run = asyncio.run(open_loop(port, texts, rate=40, seconds=0.5))
    assert run["offered"] == 20
    assert run["answered_200"] == 20 and run["shed_503"] == 0 and run["failed"] == 0
    assert 0 < run["p50_ms"] <= run["p99_ms"] <= run["max_ms"]
    assert run[f"answered_within_{PATIENCE_S:g}s"] == 20

    with live_server(Settings(max_inflight=1), tiny_analyzer) as url:  # 100 at once, one admitted at a time
        port = urlsplit(url).port
        assert port is not None
        burst = asyncio.run(open_loop(port, texts, rate=10_000, seconds=0.01))
    assert burst["offered"] == 100
    assert burst["answered_200"] + burst["shed_503"] == 100 and burst["failed"] == 0
    assert burst["answered_200"] >= 1 and burst["shed_503"] >= 1
    with live_server(Settings(max_bulk_texts=0), tiny_analyzer) as url:
        port = urlsplit(url).port
        assert port is not None
        mixed = asyncio.run(bulk_beside_live(port, texts * 10, live_rate=20, bulk_clients=2, seconds=1.0))
    assert mixed["live"]["offered"] == 20 and mixed["live"]["answered_200"] == 20
    assert mixed["batches_200"] >= 2 and mixed["batches_503"] == 0 and mixed["batches_failed"] == 0
    assert mixed["bulk_texts_per_s"] > 0
    assert len(mixed["batches_per_client"]) == 2 and sum(mixed["batches_per_client"]) >= 1
    with live_server(Settings(), tiny_analyzer) as url:
        port = urlsplit(url).port
        assert port is not None
        chats = asyncio.run(
            transcripts_beside_live(port, texts * 10, live_rate=20, clients=1, customer_turns=3, seconds=1.0)
        )
    assert chats["live"]["answered_200"] == 20 and chats["turns"] == 6
    assert chats["transcripts_done"] >= 1 and chats["transcripts_failed"] == 0
    first, second = transcript(texts, 0, 3), transcript(texts, 1, 3)
    assert [t["role"] for t in first] == ["customer", "agent"] * 3
    assert not {t["text"] for t in first} & {t["text"] for t in second}  # nothing kept from an earlier one
    table = markdown(
        {
            "date": "d",
            "machine": "m",
            "capacity_per_s": 1,
            "overload": 1.5,
            "seconds": 1,
            "runs": {"0": run},
            "bulk": {
                "live_rate": 20,
                "batch_items": 256,
                "seconds": 1,
                "runs": [{"max_bulk_texts": "0", "bulk_queue": "8", **mixed}],
            },
            "transcripts": {
                "live_rate": 20,
                "clients": 1,
                "turns": 6,
                "seconds": 1,
                "runs": [{"bulk_chat_turns": "32", **chats}],
            },
        }
    )
    assert "| 0 (no limit) | 20 | 20 | 0 |" in table
    assert f"| 0 (no limit) | 8 | 2 | {mixed['live']['p50_ms']} / " in table
    assert f"| 32 | {chats['live']['p50_ms']} / " in table
