"""Counts of the project's annotations, straight from the label files (no text needed)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from data.loader import annotation_files, read_label_file
from data.schema import ANGER_LABELS, COMPLAINT_TYPES
from data.sources import hash_split

MINIMUMS = {"records": 4000, "per_level": 500, "per_type": 120, "none": 200, "other": 60, "hant": 1000}


def stats(directory: Path) -> dict[str, Any]:
    recs = [r for p in annotation_files(directory) for r in read_label_file(p)]
    by = lambda key: Counter(r[key] for r in recs)  # noqa: E731
    split = Counter(r.get("split") or _split_of(r) for r in recs)
    return {
        "records": len(recs),
        "anger_level": {lvl: by("anger_level").get(lvl, 0) for lvl in range(4)},
        "complaint_type": {t: by("complaint_type").get(t, 0) for t in COMPLAINT_TYPES},
        "threat": sum(r["threat"] for r in recs),
        "script": dict(by("script")),
        "source": dict(by("source").most_common()),
        "split": dict(split),
        "by_source_level": {
            s: dict(sorted(Counter(r["anger_level"] for r in recs if r["source"] == s).items())) for s in by("source")
        },
    }


def _split_of(rec: dict[str, Any]) -> str:
    # sources with their own split store it; others follow the loader's hash rule
    return hash_split(f"{rec['source']}:{rec['id']}") if rec["source"] == "calmfirst_written" else "source"


def shortfalls(s: dict[str, Any]) -> list[str]:
    out = []
    if s["records"] < MINIMUMS["records"]:
        out.append(f"records {s['records']} < {MINIMUMS['records']}")
    for lvl, n in s["anger_level"].items():
        if n < MINIMUMS["per_level"]:
            out.append(f"anger {lvl} has {n} < {MINIMUMS['per_level']}")
    for t, n in s["complaint_type"].items():
        need = MINIMUMS.get(t, MINIMUMS["per_type"])
        if n < need:
            out.append(f"type {t} has {n} < {need}")
    if s["script"].get("hant", 0) < MINIMUMS["hant"]:
        out.append(f"hant {s['script'].get('hant', 0)} < {MINIMUMS['hant']}")
    return out


def format_stats(s: dict[str, Any]) -> str:
    lines = [f"records: {s['records']}", "anger level:"]
    lines += [f"  {lvl} {ANGER_LABELS[lvl]:<11} {n}" for lvl, n in s["anger_level"].items()]
    lines.append("complaint type:")
    lines += [f"  {t:<18} {n}" for t, n in s["complaint_type"].items()]
    lines.append(f"threat: {s['threat']}")
    lines.append("script: " + ", ".join(f"{k} {v}" for k, v in s["script"].items()))
    lines.append("source:")
    lines += [f"  {k:<24} {v}  levels {s['by_source_level'][k]}" for k, v in s["source"].items()]
    short = shortfalls(s)
    lines.append("minimums: " + ("all met" if not short else "NOT met: " + "; ".join(short)))
    return "\n".join(lines)
