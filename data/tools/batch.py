"""Check an annotator's label file against its batch, and merge checked batches.

An annotator reads ``work/batches/NAME.jsonl`` (text included, never committed) and writes
``data/annotations/batches/NAME.jsonl`` with ids and labels only. ``check`` validates every
line against schema v1.2 (errors name the line and field) and that every batch id is
labelled exactly once (or skipped with a reason). ``merge`` adds the batch's metadata
(source, script, region, selection), then appends the records to the per-source label files.

    python -m data.tools.batch check work/batches/tw-r1-001.jsonl data/annotations/batches/tw-r1-001.jsonl
    python -m data.tools.batch merge
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from data.schema import SCHEMA_VERSION, LabelError, validate_record

ROOT = Path(__file__).resolve().parents[2]
STEP_CODES = (
    "listen_acknowledge",
    "thank",
    "apologize",
    "commit_action",
    "ask_details",
    "offer_options",
    "promise_callback",
    "confirm_satisfaction",
    "escalate_supervisor",
    "answer_question",
)
MISTAKE_CODES = ("argued", "blamed_customer", "last_word", "interrogated", "solution_while_furious")
META = ("source", "script", "region", "selection")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise LabelError(f"{path.name}:{n}: not valid JSON ({e.msg})") from e
    return out


def complete(label: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The label with the batch's metadata and the schema version filled in."""
    rec = {"id": label["id"], **{k: meta[k] for k in META if k in meta}}
    rec.update({k: v for k, v in label.items() if k not in ("id",)})
    rec["schema"] = SCHEMA_VERSION
    return rec


def validate_agent(rec: dict[str, Any], where: str) -> None:
    for key, codes in (("steps", STEP_CODES), ("mistakes", MISTAKE_CODES)):
        val = rec.get(key)
        if not isinstance(val, list) or any(c not in codes for c in val) or len(set(val)) != len(val):
            raise LabelError(f"{where}: {key} must be a list of distinct codes from {list(codes)}, got {val!r}")
    if "interrogated" in rec["mistakes"] and "ask_details" not in rec["steps"]:
        raise LabelError(f"{where}: interrogated always also carries ask_details")


def check(batch: Path, labels: Path) -> list[dict[str, Any]]:
    meta = {r["id"]: r for r in read_jsonl(batch)}
    agent = batch.name.startswith("agent")
    seen: set[str] = set()
    out = []
    for n, lab in enumerate(read_jsonl(labels), start=1):
        where = f"{labels.name}:{n}"
        rid = lab.get("id")
        if rid not in meta:
            raise LabelError(f"{where}: id {rid!r} is not in batch {batch.name}")
        if rid in seen:
            raise LabelError(f"{where}: id {rid!r} labelled twice")
        seen.add(rid)
        if lab.get("skip"):
            continue
        rec = complete(lab, meta[rid])
        if agent:
            validate_agent(rec, where)
        else:
            validate_record(rec, where=where)
        out.append(rec)
    missing = set(meta) - seen
    if missing:
        raise LabelError(f"{labels.name}: {len(missing)} batch ids have no label, e.g. {sorted(missing)[:3]}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("batch", type=Path)
    c.add_argument("labels", type=Path)
    args = ap.parse_args(argv)
    try:
        recs = check(args.batch, args.labels)
    except LabelError as e:
        print(f"error: {e}")
        return 1
    print(f"ok: {len(recs)} records valid")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
