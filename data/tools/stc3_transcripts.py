"""Write a QA transcript file (``calmfirst qa`` JSONL) from the STC-3 helpdesk dialogues, for load tests.

The dialogues are real customer/helpdesk chats, so timing on them reflects real turn lengths;
they are repeated under new ids until the file holds the requested number of turns (the last
conversation is cut short to land exactly on it). STC-3 has no agent ids, so each dialogue gets
one of ``--agents`` synthetic ids (stable: derived from the dialogue id) to exercise the
per-agent aggregates. The output holds shared text: write it under work/ (gitignored), never
commit it.

    .venv/bin/python -m data.tools.stc3_transcripts --turns 100000 -o work/qa100k.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data.sources import shared_data_dir

logger = logging.getLogger(__name__)
ROLE = {"customer": "customer", "helpdesk": "agent"}


def dialogues(root: Path | None = None) -> list[dict[str, Any]]:
    """STC-3 dialogues as ``calmfirst qa`` conversations (empty turns dropped, no agent id yet)."""
    path = (root or shared_data_dir()) / "stc3_helpdesk" / "train_data_cn.json"
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    out = []
    for dia in raw:
        turns = []
        for t in dia["turns"]:
            text = " ".join(u.strip() for u in t["utterances"]).replace("\ufeff", "").strip()
            if text and t["sender"] in ROLE:
                turns.append({"role": ROLE[t["sender"]], "text": text})
        if any(t["role"] == "customer" for t in turns):
            out.append({"id": str(dia["id"]), "turns": turns})
    return out


def transcripts(n_turns: int, *, agents: int = 40, root: Path | None = None) -> Iterator[dict[str, Any]]:
    """Conversations totalling exactly ``n_turns`` turns, repeating the dialogues under new ids."""
    base = dialogues(root)
    total = 0
    rep = 0
    while total < n_turns:
        for dia in base:
            turns = dia["turns"][: n_turns - total]
            if not any(t["role"] == "customer" for t in turns):
                continue  # only possible for the cut last one; the next dialogue fills the gap
            digest = int(hashlib.sha1(dia["id"].encode()).hexdigest()[:8], 16)
            yield {"id": f"{dia['id']}-r{rep}", "agent_id": f"agent{digest % agents:02d}", "turns": turns}
            total += len(turns)
            if total >= n_turns:
                return
        rep += 1


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--turns", type=int, default=100_000)
    ap.add_argument("--agents", type=int, default=40)
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args(argv)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    n_conv = n_turns = 0
    with open(args.output, "w", encoding="utf-8") as f:
        for conv in transcripts(args.turns, agents=args.agents):
            f.write(json.dumps(conv, ensure_ascii=False) + "\n")
            n_conv += 1
            n_turns += len(conv["turns"])
    print(f"{args.output}: {n_conv} conversations, {n_turns} turns")


if __name__ == "__main__":
    main()
