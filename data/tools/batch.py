"""Check an annotator's label file against its batch, and merge checked batches.

An annotator reads ``work/batches/NAME.jsonl`` (text included, never committed) and writes
``data/annotations/batches/NAME.jsonl`` with ids and labels only. ``check`` validates every
line against schema v1.2 (errors name the line and field) and that every batch id is
labelled exactly once (or skipped with a reason). ``merge`` adds the batch's metadata
(source, script, region, selection), then appends the records to the per-source label files.

    python -m data.tools.batch check work/batches/tw-r1-001.jsonl data/annotations/batches/tw-r1-001.jsonl
    python -m data.tools.batch merge     # then stores every record's split (data.splits), as `splits` does
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from data.schema import SCHEMA_VERSION, WRITTEN_SOURCE, LabelError, validate_record
from data.vocab import Mistake, Step, values

ROOT = Path(__file__).resolve().parents[2]
#: the contract's codes, defined once in data.vocab
STEP_CODES: tuple[str, ...] = values(Step)
MISTAKE_CODES: tuple[str, ...] = values(Mistake)
META = ("source", "script", "region", "selection")
#: batch-name prefixes of agent-turn batches (steps and mistakes rather than customer labels)
AGENT_PREFIXES = ("agent", "agragent", "adjagent", "relabel")


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


def check_codes(rec: dict[str, Any], key: str, codes: tuple[str, ...], where: str) -> None:
    """``rec[key]`` is a list of distinct codes from ``codes`` (the error names the place and the field)."""
    val = rec.get(key)
    if not isinstance(val, list) or any(c not in codes for c in val) or len(set(val)) != len(val):
        raise LabelError(f"{where}: {key} must be a list of distinct codes from {list(codes)}, got {val!r}")


def validate_agent(rec: dict[str, Any], where: str) -> None:
    for key, codes in (("steps", STEP_CODES), ("mistakes", MISTAKE_CODES)):
        check_codes(rec, key, codes, where)
    if "interrogated" in rec["mistakes"] and "ask_details" not in rec["steps"]:
        raise LabelError(f"{where}: interrogated always also carries ask_details")


def check(batch: Path, labels: Path) -> list[dict[str, Any]]:
    meta = {r["id"]: r for r in read_jsonl(batch)}
    agent = batch.name.startswith(AGENT_PREFIXES)
    seen: set[str] = set()
    out = []
    for n, lab in enumerate(read_jsonl(labels), start=1):
        where = f"{labels.name}:{n}"
        rid = lab.get("id")
        if not isinstance(rid, str) or rid not in meta:
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
    m = sub.add_parser("merge")
    m.add_argument("names", nargs="*", help="batch names (default: every finished batch)")
    sub.add_parser("splits", help="recompute and store every record's split")
    sub.add_parser("redact", help="remove quoted source text from the notes of every committed label file")
    args = ap.parse_args(argv)
    if args.cmd == "redact":
        for name, n in redact_label_files().items():
            print(f"{name}: {n} notes redacted")
        return 0
    if args.cmd == "splits":
        for name, counts in write_splits().items():
            print(name, counts)
        return 0
    if args.cmd == "merge":
        merged = merge(args.names or None)
        for name, (added, replaced) in merged.items():
            print(f"{name}: {added} added, {replaced} replaced")
        if any(added for added, _ in merged.values()):  # new records get their stored split at once
            for name, counts in write_splits(keep_stored=True).items():
                print(name, counts)
        return 0
    try:
        recs = check(args.batch, args.labels)
    except LabelError as e:
        print(f"error: {e}")
        return 1
    print(f"ok: {len(recs)} records valid")
    return 0


# ---------------------------------------------------------------------------- merge
ANNOTATIONS = ROOT / "data" / "annotations"
BATCH_LABELS = ANNOTATIONS / "batches"
BATCHES = ROOT / "work" / "batches"
AGENT_FILE = ROOT / "data" / "agent_steps" / "agent_turns.jsonl"
#: label files that are agreement material, not training labels
AGREEMENT_PREFIXES = ("agr-", "agragent-")


#: free-text fields annotators fill in; they may quote the text they judged
NOTE_FIELDS = ("note", "reason")
#: a run of Chinese characters, CJK punctuation or full-width forms: a quotation of the source text
_CJK = "\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
#: (an ellipsis joins a run but never makes one, so the placeholder «…» is left alone: redacting twice changes nothing)
_QUOTE = re.compile(f"[{_CJK}…]*[{_CJK}][{_CJK}…]*")


def redact_quotes(note: str) -> str:
    """An annotator's note without the source text it quotes (each quoted run becomes «…»).

    Why: the shared corpora's text must never be committed (ids and labels only), and notes like
    "「建議您先確認…」 read as blame" quote it; the reasoning in English stays."""
    return _QUOTE.sub("«…»", note)


def redact_record(rec: dict[str, Any]) -> dict[str, Any]:
    """``rec`` with quotations removed from its notes, unless it is the project's own written text."""
    if rec.get("source") == WRITTEN_SOURCE:
        return rec
    return {k: redact_quotes(v) if k in NOTE_FIELDS and isinstance(v, str) else v for k, v in rec.items()}


def committed_label_files() -> list[Path]:
    """Every committed file of labels for shared text (the written messages' own file aside)."""
    files = sorted(ANNOTATIONS.glob("*.jsonl")) + sorted(BATCH_LABELS.glob("*.jsonl")) + [AGENT_FILE]
    return [f for f in files if f.stem != WRITTEN_SOURCE and not f.name.startswith("written")]


def redact_label_files() -> dict[str, int]:
    """Rewrite every committed label file without quotations in its notes; returns changed records per file."""
    changed: dict[str, int] = {}
    for path in committed_label_files():
        recs = read_jsonl(path)
        clean = [redact_record(r) for r in recs]
        n = sum(a != b for a, b in zip(recs, clean, strict=True))
        if n:
            _write_jsonl(path, clean)
            changed[str(path.relative_to(ROOT))] = n
    return changed


def _write_jsonl(path: Path, recs: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    tmp.replace(path)


def _upsert(path: Path, recs: list[dict[str, Any]], key: Any) -> tuple[int, int]:
    old = read_jsonl(path) if path.exists() else []
    index = {key(r): i for i, r in enumerate(old)}
    added = replaced = 0
    for r in recs:
        k = key(r)
        if k in index:
            old[index[k]] = {**old[index[k]], **r}
            replaced += 1
        else:
            index[k] = len(old)
            old.append(r)
            added += 1
    _write_jsonl(path, old)
    return added, replaced


def merge(names: list[str] | None = None, *, remove: bool = False) -> dict[str, tuple[int, int]]:
    """Check each finished batch and move its labels into the per-source label files.

    Customer labels go to ``data/annotations/<source>.jsonl`` (re-judged v1.1 threat records
    replace their old labels); agent-turn labels to ``data/agent_steps/agent_turns.jsonl``.
    The batch label file is removed once merged (git history keeps it)."""
    from data.tools.migrate_v12 import LABEL_KEYS

    report: dict[str, tuple[int, int]] = {}
    files = sorted(BATCH_LABELS.glob("*.jsonl"))
    for lab in files:
        if lab.name.startswith(AGREEMENT_PREFIXES) or (names and lab.stem not in names):
            continue
        batch = BATCHES / lab.name
        # adjudications and written rounds are merged by their own tools (data.tools.adjudicate, data.tools.written)
        if not batch.exists() or lab.name.startswith(("adj", "written")):
            continue
        try:
            recs = check(batch, lab)
        except LabelError as e:  # still being written, or needs fixing: leave it for later
            print(f"not merged: {e}")
            continue
        if lab.name.startswith(AGENT_PREFIXES):
            for r in recs:
                r.pop("text", None)
                r["schema"] = SCHEMA_VERSION
            got = _upsert(AGENT_FILE, recs, key=lambda r: r["id"])
        elif lab.name.startswith("rejudge"):
            by_source: dict[str, list[dict[str, Any]]] = {}
            for r in recs:
                upd = {k: r[k] for k in ("id", "source", *LABEL_KEYS)}
                upd.update(rejudged_v12=True, rejudged_by=r.get("annotator"))
                by_source.setdefault(r["source"], []).append(upd)
            got = (0, 0)
            for source, rs in by_source.items():
                a, b = _upsert(ANNOTATIONS / f"{source}.jsonl", rs, key=lambda r: r["id"])
                got = (got[0] + a, got[1] + b)
        else:
            by_source = {}
            for r in recs:
                by_source.setdefault(r["source"], []).append(r)
            got = (0, 0)
            for source, rs in by_source.items():
                a, b = _upsert(ANNOTATIONS / f"{source}.jsonl", rs, key=lambda r: r["id"])
                got = (got[0] + a, got[1] + b)
        report[lab.name] = got
        if remove:
            lab.unlink()
    redact_label_files()  # the batch label files are committed too: no quotation of shared text in their notes
    return report


def write_splits(*, keep_stored: bool = False) -> dict[str, dict[str, int]]:
    """Compute the records' splits (``data.splits``) and store them in the label files.

    ``keep_stored`` (what ``merge`` uses): records that already have a split keep it, and new records that
    duplicate them join them; only ``splits`` on its own recomputes every record from the rule."""
    from collections import Counter

    from data.loader import AGENT_TURNS_FILE, annotation_files, load_agent_turns
    from data.sources import READERS, read_agent_turns, read_source
    from data.splits import assign

    files = annotation_files()
    recs = {p: read_jsonl(p) for p in files}
    source_split: dict[tuple[str, str], str] = {}
    texts: dict[tuple[str, str], str] = {}
    for source in {r["source"] for rs in recs.values() for r in rs if "text" not in r}:
        if source in READERS:
            for row in read_source(source):
                source_split[(source, row.id)] = row.split
                texts[(source, row.id)] = row.text
    agents = load_agent_turns()
    arecs = read_jsonl(AGENT_TURNS_FILE)  # as written: a missing split stays missing (the loader fills one in)
    for row in read_agent_turns(shared_dir_or_default()):
        source_split[(row.source, row.id)] = row.split
    everything = [
        {**r, "text": r.get("text") or texts.get((r["source"], r["id"]), "")} for rs in recs.values() for r in rs
    ] + [{**a, "source": a.get("source", WRITTEN_SOURCE), "region": a.get("region", "cn")} for a in agents]
    # stored = written in the label files; not the loader's fill-in for a record without one (a new record
    # would otherwise look stored, and carry a held-out duplicate that sorts after it into train)
    stored: dict[tuple[str, str], str] = {}
    if keep_stored:
        stored = {(r["source"], r["id"]): r["split"] for rs in recs.values() for r in rs if r.get("split")}
        stored |= {(a.get("source", WRITTEN_SOURCE), a["id"]): a["split"] for a in arecs if a.get("split")}
    split = assign([r for r in everything if r["text"]], source_split, stored)
    counts: dict[str, dict[str, int]] = {}
    for p, rs in recs.items():
        for r in rs:
            r["split"] = split[(r["source"], r["id"])]
        _write_jsonl(p, rs)
        counts[p.name] = dict(Counter(r["split"] for r in rs))
    for r in arecs:
        r["split"] = split.get((r.get("source", WRITTEN_SOURCE), r["id"]), r.get("split", "train"))
    _write_jsonl(AGENT_TURNS_FILE, arecs)
    counts[AGENT_TURNS_FILE.name] = dict(Counter(r["split"] for r in arecs))
    return counts


def shared_dir_or_default() -> Path:
    from data.sources import shared_data_dir

    return shared_data_dir()


if __name__ == "__main__":
    raise SystemExit(main())
