"""Merge annotators' batch outputs into the committed label files (ids + labels only).

    python -m data.tools.merge_labels --batches work/batches --labels work/labels

Writes ``data/annotations/<source>.jsonl`` (one file per source) and
``data/selection/skipped.jsonl`` (texts annotators judged out of scope, with
their reason). Texts are looked up in the batch files only to detect the script;
they are never written.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from data.schema import validate_record
from data.script import detect_script

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", type=Path, default=Path("work/batches"))
    ap.add_argument("--labels", type=Path, default=Path("work/labels"))
    ap.add_argument("--out", type=Path, default=ROOT / "annotations")
    args = ap.parse_args()
    by_source: dict[str, list[dict]] = defaultdict(list)
    skipped: list[dict] = []
    seen: set[tuple[str, str]] = set()
    for label_file in sorted(args.labels.glob("batch_*.jsonl")):
        batch = {}
        for line in open(args.batches / label_file.name, encoding="utf-8"):
            d = json.loads(line)
            batch[d["id"]] = d
        annotator = label_file.stem.replace("batch_", "a")
        for n, line in enumerate(open(label_file, encoding="utf-8"), start=1):
            if not line.strip():
                continue
            lab = json.loads(line)
            src = batch.get(lab["id"])
            if src is None:
                raise SystemExit(f"{label_file}:{n}: id {lab['id']!r} not in its batch")
            key = (src["source"], lab["id"])
            if key in seen:
                continue
            seen.add(key)
            if "skip" in lab:
                skipped.append(
                    {"id": lab["id"], "source": src["source"], "reason": lab["skip"], "annotator": annotator}
                )
                continue
            rec = {
                "id": lab["id"],
                "source": src["source"],
                "anger_level": lab["a"],
                "complaint_type": lab["t"],
                "types": lab["ts"],
                "threat": lab["th"],
                "script": detect_script(src["text"]),
                "annotator": annotator,
            }
            if lab.get("n"):
                rec["hard_case"] = True
            validate_record(rec, where=f"{label_file}:{n}")
            by_source[src["source"]].append(rec)
    args.out.mkdir(parents=True, exist_ok=True)
    for source, recs in sorted(by_source.items()):
        with open(args.out / f"{source}.jsonl", "w", encoding="utf-8") as f:
            for r in recs:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"{source}: {len(recs)}")
    sel = ROOT / "selection"
    sel.mkdir(exist_ok=True)
    with open(sel / "skipped.jsonl", "w", encoding="utf-8") as f:
        for s in skipped:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
    print(f"skipped: {len(skipped)}")
    if (Path("work/agreement") / "adjudicated.jsonl").exists():
        # re-merging rewrites the source files from the raw batches: re-apply adjudicated labels
        from data.tools import adjudicate

        adjudicate.main([])


if __name__ == "__main__":
    main()
