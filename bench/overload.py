"""What ``CALMFIRST_MAX_INFLIGHT`` and ``CALMFIRST_MAX_BULK_TEXTS`` do past capacity (``make bench-overload``).

Why a separate, open-loop test: ``make bench``'s load tests are closed loops (a client sends its next message
only after the last answer), so the server can never be offered more than it serves. A contact center's
traffic does not wait: messages arrive at their own rate. Here requests arrive at a fixed rate (a multiple of
the server's measured capacity), each on its own connection, for a fixed time, against one fresh server per
setting; the figures are the answers' latencies, how many were shed (503) and how many answers took longer than
a client would wait (``PATIENCE_S``).

Second, *bulk beside live*: live single messages arrive at a fixed rate (open loop) while clients post
``BATCH_ITEMS``-item batches back to back (closed loop, a refused batch retries after its ``Retry-After``), with
and without the bulk budget; the figures are the live messages' latencies and the texts/s the batches got.
Third, *transcripts beside live*: the same live messages while clients post long chats never seen before
(``transcript``), counted as bulk work past ``CALMFIRST_BULK_CHAT_TURNS`` or not.

    python -m bench.overload [--seconds 15] [--overload 1.5] [--limits 0,64,256]
                             [--live-rate 20] [--bulk-clients 1,4] [--bulk-limits 0,256:0,256]
                             [--transcript-clients 4] [--transcript-turns 30]

Results go to ``bench/overload.json`` and ``bench/OVERLOAD.md`` (``make bench`` rewrites ``RESULTS.md`` whole).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.run import (
    ROOT,
    WORK,
    Server,
    bench_messages,
    load_test,
    log,
    machine_info,
    percentile,
    versions,
    wait_for_quiet,
)
from service.settings import DEFAULT_MODEL_DIR, Settings

OUT = ROOT / "bench" / "overload.json"
MARKDOWN = ROOT / "bench" / "OVERLOAD.md"
#: An answer later than this is as good as none to a live chat (the client has given up or re-sent).
PATIENCE_S = 2.0
#: Texts in each batch of the bulk clients (the default ``max_batch_items``).
BATCH_ITEMS = 256


async def _one(port: int, body: bytes, path: str = "/v1/analyze") -> tuple[int, float]:
    """One request on its own connection: (status, seconds); status 0 when the connection failed."""
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return 0, time.perf_counter() - started
    try:
        head = (
            f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        ).encode()
        writer.write(head + body)
        await writer.drain()
        status_line = await reader.readline()
        await reader.read()  # to the end: connection: close
        status = int(status_line.split()[1]) if status_line.startswith(b"HTTP/") else 0
    except (OSError, ValueError, IndexError):
        status = 0
    finally:
        writer.close()
    return status, time.perf_counter() - started


async def open_loop(
    port: int, texts: Sequence[str], *, rate: float, seconds: float, start: float | None = None
) -> dict[str, Any]:
    """Requests started every ``1/rate`` s for ``seconds`` s (from ``start``, the loop's clock, or now), whatever
    the server does; then wait for all."""
    bodies = [json.dumps({"text": t}, ensure_ascii=False).encode("utf-8") for t in texts]
    tasks: list[asyncio.Task[tuple[int, float]]] = []
    loop = asyncio.get_running_loop()
    start = loop.time() if start is None else start
    n = int(rate * seconds)
    for i in range(n):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_one(port, bodies[i % len(bodies)])))
    sent_for = loop.time() - start
    results = await asyncio.gather(*tasks)
    wall = loop.time() - start
    ok = sorted(s for status, s in results if status == 200)
    shed = [s for status, s in results if status == 503]
    return {
        "offered": n,
        "offered_per_s": round(n / sent_for, 1),
        "answered_200": len(ok),
        "shed_503": len(shed),
        "failed": sum(1 for status, _ in results if status not in (200, 503)),
        "p50_ms": round(percentile(ok, 0.50) * 1000, 1),
        "p99_ms": round(percentile(ok, 0.99) * 1000, 1),
        "max_ms": round(ok[-1] * 1000, 1) if ok else None,
        "mean_503_ms": round(statistics.fmean(shed) * 1000, 1) if shed else None,
        f"answered_within_{PATIENCE_S:g}s": sum(1 for s in ok if s <= PATIENCE_S),
        "good_per_s": round(sum(1 for s in ok if s <= PATIENCE_S) / wall, 1),
        "wall_s": round(wall, 1),
    }


@dataclass
class BulkAnswer:
    """One answer to a bulk client: which client, its status, how long it took, when it came (the loop's clock)."""

    client: int
    status: int
    seconds: float
    at: float


async def _beside_live(
    port: int,
    texts: Sequence[str],
    *,
    live_rate: float,
    seconds: float,
    clients: int,
    path: str,
    body: Callable[[int], bytes],
    lead_s: float,
) -> tuple[dict[str, Any], list[BulkAnswer], float, float]:
    """Live single messages (``open_loop``) beside ``clients`` clients posting ``body(i)`` (the i-th request of all)
    to ``path`` back to back, starting ``lead_s`` before the live ones; after a non-200 a client waits 1 s (the
    default ``Retry-After``). Returns the live figures, every bulk answer and the live window (start, stop)."""
    loop = asyncio.get_running_loop()
    start = loop.time() + (lead_s if clients else 0.0)  # the bulk work is in scoring when the live ones begin
    stop = start + seconds
    answers: list[BulkAnswer] = []
    posted = 0

    async def client(k: int) -> None:
        nonlocal posted
        while loop.time() < stop:
            index = posted
            posted += 1
            status, took = await _one(port, body(index), path)
            answers.append(BulkAnswer(k, status, took, loop.time()))
            if status != 200:
                await asyncio.sleep(1.0)

    tasks = [asyncio.create_task(client(k)) for k in range(clients)]
    live = await open_loop(port, texts, rate=live_rate, seconds=seconds, start=start)
    await asyncio.gather(*tasks)
    return live, answers, start, stop


async def bulk_beside_live(
    port: int, texts: Sequence[str], *, live_rate: float, bulk_clients: int, seconds: float
) -> dict[str, Any]:
    """Live single messages every ``1/live_rate`` s for ``seconds`` s beside ``bulk_clients`` clients that post
    ``BATCH_ITEMS``-item batches back to back (after a 503 they wait its ``Retry-After``, 1 s by default)."""
    batch = json.dumps({"items": [{"text": t} for t in texts[:BATCH_ITEMS]]}, ensure_ascii=False).encode("utf-8")
    live, answers, start, stop = await _beside_live(
        port,
        texts,
        live_rate=live_rate,
        seconds=seconds,
        clients=bulk_clients,
        path="/v1/analyze/batch",
        body=lambda _: batch,
        lead_s=1.0,
    )
    done = [a for a in answers if a.status == 200 and start <= a.at <= stop]
    per_client = [sum(1 for a in done if a.client == k) for k in range(bulk_clients)]
    return {
        "live": live,
        "bulk_clients": bulk_clients,
        "batches_200": sum(1 for a in answers if a.status == 200),
        "batches_503": sum(1 for a in answers if a.status == 503),
        "batches_failed": sum(1 for a in answers if a.status not in (200, 503)),
        "batch_p50_s": round(percentile([a.seconds for a in done], 0.50), 2) if done else None,
        "bulk_texts_per_s": round(len(done) * BATCH_ITEMS / seconds, 1),
        "batches_per_client": per_client,
    }


#: Agent turns of the transcripts (each made unique per transcript, so nothing is kept from an earlier one).
AGENT_TURNS = (
    "非常抱歉让您久等了,我马上帮您查询。",
    "请提供您的订单号,我帮您确认。",
    "已经帮您提交退款申请,三个工作日内到账。",
    "了解,我们会尽快处理。",
)


def transcript(texts: Sequence[str], index: int, customer_turns: int) -> list[dict[str, str]]:
    """A chat of ``2 * customer_turns`` turns, none of them seen in an earlier transcript."""
    turns = []
    for j in range(customer_turns):
        turns.append({"role": "customer", "text": f"{texts[(index * customer_turns + j) % len(texts)]} #{index}"})
        turns.append({"role": "agent", "text": f"{AGENT_TURNS[j % len(AGENT_TURNS)]}({index}-{j})"})
    return turns


async def transcripts_beside_live(
    port: int, texts: Sequence[str], *, live_rate: float, clients: int, customer_turns: int, seconds: float
) -> dict[str, Any]:
    """Live single messages beside ``clients`` clients posting transcripts never seen before, back to back."""

    def body(index: int) -> bytes:
        return json.dumps({"turns": transcript(texts, index, customer_turns)}, ensure_ascii=False).encode("utf-8")

    live, answers, start, stop = await _beside_live(
        port,
        texts,
        live_rate=live_rate,
        seconds=seconds,
        clients=clients,
        path="/v1/conversations/analyze",
        body=body,
        lead_s=2.0,
    )
    done = [a.seconds for a in answers if a.status == 200 and start <= a.at <= stop]
    return {
        "live": live,
        "clients": clients,
        "turns": 2 * customer_turns,
        "transcripts_done": len(done),
        "transcripts_503": sum(1 for a in answers if a.status == 503),
        "transcripts_failed": sum(1 for a in answers if a.status not in (200, 503)),
        "transcript_p50_s": round(percentile(done, 0.50), 2) if done else None,
    }


def markdown(r: dict[str, Any]) -> str:
    key = f"answered_within_{PATIENCE_S:g}s"
    lines = [
        f"Open loop ({r['date']}, {r['machine']}, commit `{r.get('commit', '?')}`): "
        f"capacity {r['capacity_per_s']} req/s (closed loop, 8 clients), "
        f"offered {r['overload']}x that for {r['seconds']} s, each request on its own connection; one fresh "
        f"server per setting; within {PATIENCE_S:g} s = the answers a live chat still uses.",
        "",
        "| CALMFIRST_MAX_INFLIGHT | offered | 200 | 503 | p50 ms (200) | p99 ms (200) | max ms | "
        f"within {PATIENCE_S:g} s | useful answers/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for limit, x in r["runs"].items():
        lines.append(
            f"| {limit if limit != '0' else '0 (no limit)'} | {x['offered']} | {x['answered_200']} | {x['shed_503']} | "
            f"{x['p50_ms']} | {x['p99_ms']} | {x['max_ms']} | {x[key]} | {x['good_per_s']} |"
        )
    bulk = r.get("bulk")
    if bulk:
        lines += [
            "",
            f"Bulk beside live: {bulk['live_rate']} live messages/s (open loop, {bulk['seconds']} s) while "
            f"clients post {bulk['batch_items']}-item batches back to back (closed loop; after a 503 they wait 1 s); "
            "one fresh server per setting.",
            "",
            "| CALMFIRST_MAX_BULK_TEXTS | CALMFIRST_BULK_QUEUE | batch clients | live p50 / p99 / max ms | live 503 | "
            "batches 200 / 503 | batch p50 s | batch texts/s | batches per client |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for x in bulk["runs"]:
            live = x["live"]
            limit = x["max_bulk_texts"]
            lines.append(
                f"| {limit if limit != '0' else '0 (no limit)'} | {x.get('bulk_queue', '-')} | {x['bulk_clients']} | "
                f"{live['p50_ms']} / "
                f"{live['p99_ms']} / {live['max_ms']} | {live['shed_503']} | {x['batches_200']} / {x['batches_503']} | "
                f"{x['batch_p50_s']} | {x['bulk_texts_per_s']} | {' / '.join(map(str, x['batches_per_client']))} |"
            )
    chats = r.get("transcripts")
    if chats:
        lines += [
            "",
            f"Transcripts beside live: {chats['live_rate']} live messages/s (open loop, {chats['seconds']} s) while "
            f"{chats['clients']} clients post {chats['turns']}-turn chats never seen before, back to back; one fresh "
            "server per setting (a number past the turns: transcripts not counted in the bulk budget).",
            "",
            "| CALMFIRST_BULK_CHAT_TURNS | live p50 / p99 / max ms | live 503 | transcripts done / 503 "
            "| transcript p50 s |",
            "|---|---|---|---|---|",
        ]
        for x in chats["runs"]:
            live = x["live"]
            lines.append(
                f"| {x['bulk_chat_turns']} | {live['p50_ms']} / {live['p99_ms']} / {live['max_ms']} | "
                f"{live['shed_503']} | {x['transcripts_done']} / {x['transcripts_503']} | {x['transcript_p50_s']} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--overload", type=float, default=1.5, help="offered rate as a multiple of the capacity")
    p.add_argument("--limits", default="0,64,256", help="CALMFIRST_MAX_INFLIGHT values, one server each")
    p.add_argument("--live-rate", type=float, default=20.0, help="bulk beside live: live messages per second")
    p.add_argument("--bulk-clients", default="1,4", help="bulk beside live: batch clients, each count on each server")
    p.add_argument(
        "--bulk-limits",
        default="0,256:0,256",
        help="CALMFIRST_MAX_BULK_TEXTS[:CALMFIRST_BULK_QUEUE] values, one server each (the queue's default without :)",
    )
    p.add_argument("--transcript-clients", type=int, default=4, help="transcripts beside live: clients (0: skip)")
    p.add_argument("--transcript-turns", type=int, default=30, help="customer turns per transcript (as many agent)")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    args = p.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    texts = bench_messages(2000)
    wait_for_quiet(60)
    machine = machine_info()
    server = Server(args.model)
    try:
        server.wait_ready()
        capacity = load_test(server.url, texts, concurrency=8, requests=1600)["requests_per_s"]
    finally:
        server.stop()
    log(f"capacity {capacity} req/s")
    runs: dict[str, Any] = {}
    for limit in [s.strip() for s in args.limits.split(",") if s.strip()]:
        server = Server(args.model, env={"CALMFIRST_MAX_INFLIGHT": limit})
        try:
            server.wait_ready()
            load_test(server.url, texts, concurrency=8, requests=400)  # warm
            runs[limit] = asyncio.run(
                open_loop(server.port, texts, rate=capacity * args.overload, seconds=args.seconds)
            )
            log(f"max_inflight {limit}: {runs[limit]}")
        finally:
            server.stop()
    bulk_runs: list[dict[str, Any]] = []
    for spec in [s.strip() for s in args.bulk_limits.split(",") if s.strip()]:
        limit, _, queue = spec.partition(":")
        queue = queue or str(Settings.model_fields["bulk_queue"].default)
        server = Server(args.model, env={"CALMFIRST_MAX_BULK_TEXTS": limit, "CALMFIRST_BULK_QUEUE": queue})
        try:
            server.wait_ready()
            load_test(server.url, texts, concurrency=8, requests=400)  # warm
            for k in [int(s) for s in args.bulk_clients.split(",") if s.strip()]:
                wait_for_quiet(30)
                run = asyncio.run(
                    bulk_beside_live(server.port, texts, live_rate=args.live_rate, bulk_clients=k, seconds=args.seconds)
                )
                bulk_runs.append({"max_bulk_texts": limit, "bulk_queue": queue, **run})
                log(f"max_bulk_texts {limit}, bulk_queue {queue}, {k} batch clients: {run}")
        finally:
            server.stop()
    chat_runs: list[dict[str, Any]] = []
    default_chat_turns = str(Settings.model_fields["bulk_chat_turns"].default)
    for chat_turns in [str(10 * args.transcript_turns), default_chat_turns] if args.transcript_clients else []:
        server = Server(args.model, env={"CALMFIRST_BULK_CHAT_TURNS": chat_turns})
        try:
            server.wait_ready()
            load_test(server.url, texts, concurrency=8, requests=400)  # warm
            wait_for_quiet(30)
            run = asyncio.run(
                transcripts_beside_live(
                    server.port,
                    texts,
                    live_rate=args.live_rate,
                    clients=args.transcript_clients,
                    customer_turns=args.transcript_turns,
                    seconds=args.seconds,
                )
            )
            chat_runs.append({"bulk_chat_turns": chat_turns, **run})
            log(f"bulk_chat_turns {chat_turns}: {run}")
        finally:
            server.stop()
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{machine.get('cpu', 'cpu')}, {machine.get('cores', '?')} cores",
        "commit": versions().get("git_commit", "?"),
        "capacity_per_s": capacity,
        "overload": args.overload,
        "seconds": args.seconds,
        "patience_s": PATIENCE_S,
        "runs": runs,
        "bulk": {
            "live_rate": args.live_rate,
            "batch_items": BATCH_ITEMS,
            "seconds": args.seconds,
            "runs": bulk_runs,
        },
        "transcripts": {
            "live_rate": args.live_rate,
            "clients": args.transcript_clients,
            "turns": 2 * args.transcript_turns,
            "seconds": args.seconds,
            "runs": chat_runs,
        },
    }
    OUT.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    table = markdown(result)
    MARKDOWN.write_text(
        f"# Overload: what CALMFIRST_MAX_INFLIGHT and CALMFIRST_MAX_BULK_TEXTS do\n\n`make bench-overload`. {table}\n"
    )
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
