"""Bring label files written under schema v1.1 to v1.2, and apply re-judged labels.

v1.2 adds ``region`` and ``schema`` to every record and drops "a threat implies level 3".
The fields are added mechanically; the anger of every record that carries a threat is
*re-judged by an annotator reading the text* (``rejudge`` batches), and those labels are
applied here with ``--apply FILE``: nothing in this script decides a label.

    python -m data.tools.migrate_v12 fields
    python -m data.tools.migrate_v12 rejudge-batches --out work/batches
    python -m data.tools.migrate_v12 apply data/annotations/batches/rejudge-*.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from data.schema import SCHEMA_VERSION
from data.sources import read_source, region_of

ROOT = Path(__file__).resolve().parents[2]
ANNOTATIONS = ROOT / "data" / "annotations"
LABEL_KEYS = ("anger_level", "complaint_type", "types", "threat")


def label_files() -> list[Path]:
    return sorted(p for p in ANNOTATIONS.glob("*.jsonl") if not p.name.startswith("agreement"))


def rewrite(path: Path, fn: Any) -> int:
    lines = path.read_text(encoding="utf-8").splitlines()
    out, changed = [], 0
    for line in lines:
        if not line.strip():
            continue
        rec = json.loads(line)
        new = fn(rec)
        changed += new != rec
        out.append(json.dumps(new, ensure_ascii=False))
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return changed


def add_fields(rec: dict[str, Any]) -> dict[str, Any]:
    rec = dict(rec)
    rec.setdefault("region", region_of(rec["source"]))
    rec["schema"] = SCHEMA_VERSION
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fields")
    rb = sub.add_parser("rejudge-batches")
    rb.add_argument("--out", type=Path, default=ROOT / "work" / "batches")
    ap_apply = sub.add_parser("apply")
    ap_apply.add_argument("files", nargs="+", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "fields":
        for p in label_files():
            print(p.name, rewrite(p, add_fields), "records updated")
    elif args.cmd == "rejudge-batches":
        todo: list[dict[str, Any]] = []
        for p in label_files():
            for line in p.read_text(encoding="utf-8").splitlines():
                rec = json.loads(line)
                if rec["threat"]:
                    todo.append(rec)
        texts: dict[tuple[str, str], str] = {}
        for source in {r["source"] for r in todo if "text" not in r}:
            ids = {r["id"] for r in todo if r["source"] == source}
            texts.update({(source, row.id): row.text for row in read_source(source) if row.id in ids})
        args.out.mkdir(parents=True, exist_ok=True)
        rows = [
            {
                "id": r["id"],
                "source": r["source"],
                "script": r["script"],
                "region": r["region"],
                "selection": "rejudge_v12",
                "text": r.get("text") or texts[(r["source"], r["id"])],
                "v11_type": r["complaint_type"],
                "v11_threat": r["threat"],
            }
            for r in todo
        ]
        for k in range(0, len(rows), 110):
            with open(args.out / f"rejudge-{k // 110 + 1:03d}.jsonl", "w", encoding="utf-8") as f:
                for r in rows[k : k + 110]:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"{len(rows)} threat records to re-judge")
    else:
        new: dict[tuple[str, str], dict[str, Any]] = {}
        for f in args.files:
            for line in f.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    r = json.loads(line)
                    new[(r["source"], r["id"])] = r

        def apply(rec: dict[str, Any]) -> dict[str, Any]:
            got = new.get((rec["source"], rec["id"]))
            if got is None:
                return rec
            rec = dict(rec)
            rec.update({k: got[k] for k in LABEL_KEYS})
            rec["rejudged_v12"] = True
            return rec

        for p in label_files():
            print(p.name, rewrite(p, apply), "records re-judged")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
