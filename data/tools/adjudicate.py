"""Build the agreement sample and apply adjudicated labels to the annotation files.

Inputs (kept out of the repository under work/agreement/): the sample's ids, the blind
second annotator's labels and the adjudicator's decisions. The first annotator's labels
are read from data/annotations the first time and then kept in agreement_sample.jsonl,
so re-running after the adjudication has been applied does not lose them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from data.loader import annotation_files
from data.schema import validate_record

ROOT = Path(__file__).resolve().parent.parent
LABEL_KEYS = ("anger_level", "complaint_type", "types", "threat")


def _labels(rec: dict) -> dict:
    return {k: rec[k] for k in LABEL_KEYS}


def _compact(lab: dict) -> dict:
    return {"anger_level": lab["a"], "complaint_type": lab["t"], "types": lab["ts"], "threat": lab["th"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", type=Path, default=Path("work/agreement"))
    ap.add_argument("--annotations", type=Path, default=ROOT / "annotations")
    args = ap.parse_args(argv)
    out_path = args.annotations / "agreement_sample.jsonl"
    previous = {}
    if out_path.exists():
        previous = {json.loads(x)["id"]: json.loads(x) for x in out_path.read_text(encoding="utf-8").splitlines()}
    records: dict[str, tuple[Path, dict]] = {}
    for path in annotation_files(args.annotations):
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            records[rec["id"]] = (path, rec)
    sample = [json.loads(x) for x in (args.work / "sample.jsonl").read_text(encoding="utf-8").splitlines()]
    b = {
        json.loads(x)["id"]: json.loads(x)
        for x in (args.work / "labels_b.jsonl").read_text(encoding="utf-8").splitlines()
    }
    adj = {
        json.loads(x)["id"]: json.loads(x)
        for x in (args.work / "adjudicated.jsonl").read_text(encoding="utf-8").splitlines()
    }
    rows = []
    changes: dict[str, dict] = {}
    for s in sample:
        sid = s["id"]
        path, rec = records[sid]
        a_labels = previous[sid]["annotator_a"] if sid in previous else _labels(rec)
        b_labels = _compact(b[sid])
        agreed = a_labels == b_labels
        final = {k: adj[sid][k] for k in LABEL_KEYS} if sid in adj else a_labels
        if not agreed and sid not in adj:
            raise SystemExit(f"{sid}: annotators disagree but no adjudication")
        validate_record({**final, "id": sid, "source": rec["source"], "script": rec["script"]}, where=sid)
        rows.append(
            {
                "id": sid,
                "source": rec["source"],
                "script": rec["script"],
                "annotator_a": a_labels,
                "annotator_b": b_labels,
                "agreed": agreed,
                "adjudicated": final,
                "reason": adj.get(sid, {}).get("reason"),
            }
        )
        if final != _labels(rec):
            changes[sid] = final
    with out_path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    by_file: dict[Path, list[dict]] = {}
    for path, rec in records.values():
        by_file.setdefault(path, []).append(rec)
    for path, recs in by_file.items():
        if not any(r["id"] in changes for r in recs):
            continue
        with path.open("w", encoding="utf-8") as f:
            for r in recs:
                if r["id"] in changes:
                    r = {**r, **changes[r["id"]], "adjudicated": True}
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(
        f"agreement sample: {len(rows)} records, {sum(not r['agreed'] for r in rows)} disagreements; "
        f"{len(changes)} annotation records changed by adjudication"
    )


if __name__ == "__main__":
    main()
