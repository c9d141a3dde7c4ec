"""Memory of ``calmfirst serve`` with the customer model and the agent-turn model loaded.

    python -m bench.server_memory                      # 30 requests: 24 messages, 6 conversations
    python -m bench.server_memory --conversations 1000 # then 1,000 conversations of 4 agent turns (+1 message each)

The server is started as ``make bench`` starts it (``bench.run.Server``: ``calmfirst serve`` on a free
loopback port, the shipped models, the environment as given, so ``CALMFIRST_BACKEND`` and
``CALMFIRST_AGENT_MODEL`` apply). VmRSS and VmHWM are read from ``/proc/<pid>/status`` after start,
after the 30 requests and at the end, with the resident memory split from ``/proc/<pid>/smaps``:
anonymous, the agent-turn encoder's memory-mapped weights (``model.onnx.data``) and other files
(libraries). The agent-turn texts are the project's written turns (``data/agent_steps``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.run import ROOT, Server
from data.samples import SAMPLE_MESSAGES

MESSAGES = list(SAMPLE_MESSAGES)
CONVERSATIONS = [
    [
        {"role": "customer", "text": "包裹说送到了但我根本没收到！"},
        {"role": "agent", "text": "非常抱歉造成您的困擾，麻煩提供訂單編號，我馬上幫您查詢。"},
        {"role": "customer", "text": "訂單號 12345，已經等一個禮拜了"},
        {"role": "agent", "text": "系統顯示您已經簽收了，建議您先確認家人是否有代收。"},
        {"role": "customer", "text": "我说了没收到！你们什么态度"},
        {"role": "agent", "text": "不好意思讓您久等了，我現在幫您重新申請，15分鐘內回電給您，這樣處理您可以接受嗎？"},
    ],
    [
        {"role": "customer", "text": "帳單多扣了三百元"},
        {"role": "agent", "text": "您是說上個月的帳單多扣了三百元，對嗎？謝謝您提出這個問題。"},
        {"role": "customer", "text": "对，赶快退"},
        {"role": "agent", "text": "已經幫您辦好了，退款三到五個工作天入帳。請問還有其他需要嗎？"},
    ],
]


def resident_split(pid: int) -> dict[str, float]:
    """Resident MB by mapping: anonymous, the encoder's weights file, other files."""
    out: Counter[str] = Counter()
    name = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        parts = line.split()
        if parts and not parts[0].endswith(":"):  # a mapping's header line: address perms offset dev inode [path]
            name = parts[5] if len(parts) > 5 else ""
        elif parts[:1] == ["Rss:"]:
            if name.endswith("model.onnx.data"):
                out["encoder_weights"] += int(parts[1]) / 1024
            else:
                out["files" if name.startswith("/") else "anon"] += int(parts[1]) / 1024
    return {k: round(out[k], 1) for k in ("anon", "encoder_weights", "files")}


def snapshot(server: Server) -> dict[str, Any]:
    return server.memory_mb() | {"resident": resident_split(server.proc.pid)}


def written_agent_turns() -> list[str]:
    path = ROOT / "data" / "agent_steps" / "agent_turns.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["text"] for r in rows if r.get("text")]


def measure(conversations: int) -> dict[str, Any]:
    import httpx

    server = Server(ROOT / "model" / "default")
    try:
        ready = server.wait_ready()
        out: dict[str, Any] = {"startup_s": round(ready, 1), "after_start": snapshot(server)}
        sent = 0
        with httpx.Client(base_url=server.url, timeout=120) as client:

            def post(path: str, body: dict[str, Any]) -> None:
                nonlocal sent
                r = client.post(path, json=body)
                r.raise_for_status()
                sent += 1

            for text in MESSAGES:
                post("/v1/analyze", {"text": text})
            for _ in range(3):
                for turns in CONVERSATIONS:
                    post("/v1/conversations/analyze", {"turns": turns})
            out["after_30_requests"] = snapshot(server)
            agent = written_agent_turns()
            started = time.perf_counter()
            for k in range(conversations):
                turns = []
                for j in range(4):
                    turns.append({"role": "customer", "text": MESSAGES[(k * 4 + j) % len(MESSAGES)]})
                    turns.append({"role": "agent", "text": agent[(k * 4 + j) % len(agent)]})
                post("/v1/conversations/analyze", {"turns": turns})
                post("/v1/analyze", {"text": agent[(k * 7) % len(agent)]})
            if conversations:
                out["conversations_s"] = round(time.perf_counter() - started, 1)
        out["requests"] = sent
        out["end"] = snapshot(server)
        log = server.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        out["loaded"] = [line.split("] ", 1)[-1] for line in log if "agent-turn model" in line or "ONNX" in line]
        return out
    finally:
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.server_memory", description=__doc__.split("\n")[0])
    ap.add_argument("--conversations", type=int, default=0, help="after the 30 requests, this many more")
    ap.add_argument("--output", type=Path, default=None, help="also write the figures here (JSON)")
    args = ap.parse_args()
    result = {
        "measured": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "env": {k: os.environ[k] for k in sorted(os.environ) if k.startswith(("CALMFIRST_", "MALLOC_"))},
    } | measure(args.conversations)
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
