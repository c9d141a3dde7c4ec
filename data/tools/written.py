"""Merge a round of the project's written chat lines into ``data/annotations/calmfirst_written.jsonl``.

A written round is lines the project's annotators wrote *and* labelled from LABELS v1.2 and the guideline
(``data/annotations/batches/written-vN-<group>.jsonl``, text included: the text is the project's own).
Why a tool of its own rather than ``batch merge``: written lines have no source text to check against, but
they can leak evaluation material in two ways that a labelled shared record cannot, and both are checked here
before anything is appended:

* a line that shares a run of ``overlap`` characters (after ``data.splits.normalise``) with a contrast item
  (``training.contrast.load_contrast``: the contrast set, read and checked as the evaluation reads it) or
  with an example quoted in an issue would teach the model the very sentence the project measures it on, so it
  is left out (and listed);
* a line equal to one already in the file (normalised) is a duplicate and left out.

Kept lines get ``selection = written_vN:<first written_for>`` and the round's annotator of their region, are
appended, and then every record's split is stored (``batch.write_splits(keep_stored=True)``); a stored split
that moves is an error and the label files are restored as they were.

    python -m data.tools.written merge 8 --annotator tw=a90 --annotator hk=a91 --annotator cn=a92 --overlap 6
    python -m data.tools.written merge 8 ... --write
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.schema import WRITTEN_SOURCE, LabelError, validate_record
from data.splits import normalise
from data.tools.batch import ANNOTATIONS, BATCH_LABELS, read_jsonl
from training.contrast import CONTRAST_PATH, load_contrast

WRITTEN_FILE = ANNOTATIONS / f"{WRITTEN_SOURCE}.jsonl"
#: messages quoted in the issues as misses or examples (#14, #15): the project reports them by hand, so no
#: written line may share a run with them
ISSUE_EXAMPLES: tuple[str, ...] = (
    "什麼態度!我要上網留言讓大家知道!",
    "再不處理我就上網留言",
    "什麼態度!我要投訴你",
    "我已经打了三次电话了,每次都说会回电,结果没有一个人回我!!!",
)
#: the default length of a shared run that leaves a line out
DEFAULT_OVERLAP = 8


@dataclass(frozen=True)
class RoundFiles:
    """Where a round is read from and merged into (the project's files unless a test says otherwise)."""

    batches: Path = BATCH_LABELS
    written: Path = WRITTEN_FILE
    contrast: Path = CONTRAST_PATH


@dataclass
class MergeReport:
    """What a merge kept and what it left out (id, why)."""

    kept: list[dict[str, Any]] = field(default_factory=list)
    left_out: list[tuple[str, str]] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)


def runs(form: str, k: int) -> set[str]:
    """Every run of ``k`` characters of a comparison form (``normalise``d text; the whole form when shorter)."""
    return {form[i : i + k] for i in range(max(len(form) - k + 1, 1))} if form else set()


def protected_runs(k: int, contrast: Path = CONTRAST_PATH, extra: Iterable[str] = ISSUE_EXAMPLES) -> dict[str, str]:
    """Run -> what it protects (a contrast item's id, or "issue example")."""
    out: dict[str, str] = {}
    for text in extra:
        out.update(dict.fromkeys(runs(normalise(text), k), "issue example"))
    for item in load_contrast(contrast):
        out.update(dict.fromkeys(runs(normalise(item.text), k), item.id))
    return out


def parse_annotators(pairs: Iterable[str]) -> dict[str, str]:
    """``["tw=a90", ...]`` -> ``{"tw": "a90", ...}`` (an error names the malformed pair)."""
    out: dict[str, str] = {}
    for p in pairs:
        group, sep, who = p.partition("=")
        if not sep or not group or not who:
            raise LabelError(f"--annotator: expected GROUP=ANNOTATOR (e.g. tw=a90), got {p!r}")
        out[group] = who
    return out


def collect(
    round_no: int,
    annotators: Mapping[str, str],
    *,
    overlap: int = DEFAULT_OVERLAP,
    files: RoundFiles = RoundFiles(),
) -> MergeReport:
    """Validate the round's batch files and decide which lines go in (nothing is written)."""
    batches, written = files.batches, files.written
    round_files = sorted(batches.glob(f"written-v{round_no}-*.jsonl"))
    if not round_files:
        raise LabelError(f"no batch files written-v{round_no}-*.jsonl in {batches}")
    existing = read_jsonl(written) if written.exists() else []
    ids = {r["id"] for r in existing}
    seen = {normalise(r["text"]) for r in existing}
    avoid = protected_runs(overlap, files.contrast)
    report = MergeReport()
    for path in round_files:
        group = path.stem.removeprefix(f"written-v{round_no}-")
        if group not in annotators:
            raise LabelError(f"{path.name}: no annotator given for group {group!r} (--annotator {group}=ID)")
        for n, rec in enumerate(read_jsonl(path), 1):
            where = f"{path.name}:{n}"
            validate_record(rec, where=where)
            if rec.get("source") != WRITTEN_SOURCE:
                raise LabelError(f"{where}: source must be {WRITTEN_SOURCE!r}, got {rec.get('source')!r}")
            if rec["id"] in ids:
                raise LabelError(f"{where}: id {rec['id']!r} is already in {written.name} or this round")
            purposes = rec.get("written_for")
            if not isinstance(purposes, list) or not purposes or not all(isinstance(p, str) for p in purposes):
                raise LabelError(f"{where}: written_for must be a non-empty list of strings, got {purposes!r}")
            form = normalise(rec["text"])
            hit = sorted({avoid[g] for g in runs(form, overlap) if g in avoid})
            if hit:
                report.left_out.append((rec["id"], f"shares {overlap} characters with {', '.join(hit[:3])}"))
                continue
            if form in seen:
                report.left_out.append((rec["id"], "duplicates a line already written"))
                continue
            ids.add(rec["id"])
            seen.add(form)
            report.kept.append(
                {**rec, "selection": f"written_v{round_no}:{purposes[0]}", "annotator": annotators[group]}
            )
    return report


def stored_splits(files: Iterable[Path]) -> dict[tuple[str, str, str], str]:
    """(file, source, id) -> stored split, for every record that has one."""
    out: dict[tuple[str, str, str], str] = {}
    for path in files:
        for r in read_jsonl(path):
            if r.get("split"):
                out[(path.name, r.get("source", WRITTEN_SOURCE), r["id"])] = r["split"]
    return out


def moved(before: Mapping[tuple[str, str, str], str], after: Mapping[tuple[str, str, str], str]) -> list[str]:
    """Records whose stored split changed (or vanished)."""
    return [
        f"{f}:{i} {s} -> {after.get((f, src, i))}" for (f, src, i), s in before.items() if after.get((f, src, i)) != s
    ]


def merge(
    round_no: int,
    annotators: Mapping[str, str],
    *,
    overlap: int = DEFAULT_OVERLAP,
    files: RoundFiles = RoundFiles(),
    label_files: Iterable[Path] | None = None,
    store_splits: Callable[[], object] | None = None,
) -> MergeReport:
    """Append the round's kept lines, store every split, and undo everything if a stored split moved.

    ``label_files`` are the files whose stored splits must not move (default: every label file and the
    agent turns); ``store_splits`` stores the splits (default ``batch.write_splits(keep_stored=True)``)."""
    from data.loader import AGENT_TURNS_FILE, annotation_files
    from data.tools.batch import write_splits

    report = collect(round_no, annotators, overlap=overlap, files=files)
    written = files.written
    watched = sorted({*(label_files if label_files is not None else [*annotation_files(), AGENT_TURNS_FILE]), written})
    backup = {p: p.read_bytes() for p in watched if p.exists()}
    before = stored_splits(watched)
    with written.open("a", encoding="utf-8") as f:
        for rec in report.kept:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    (store_splits or (lambda: write_splits(keep_stored=True)))()
    report.moved = moved(before, stored_splits(watched))
    if report.moved:
        for p in watched:
            if p in backup:
                p.write_bytes(backup[p])
            else:
                p.unlink(missing_ok=True)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("merge", help="check a written round and (with --write) append it")
    m.add_argument("round", type=int, help="the round number N of written-vN-*.jsonl")
    m.add_argument("--annotator", action="append", default=[], help="GROUP=ID for each batch file's group")
    m.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP, help="shared run length that leaves a line out")
    m.add_argument("--write", action="store_true", help="append and store splits (default: report only)")
    args = ap.parse_args(argv)
    try:
        annotators = parse_annotators(args.annotator)
        if args.write:
            report = merge(args.round, annotators, overlap=args.overlap)
        else:
            report = collect(args.round, annotators, overlap=args.overlap)
    except LabelError as e:
        print(f"error: {e}")
        return 1
    for rid, why in report.left_out:
        print(f"left out {rid}: {why}")
    if report.moved:
        print("error: stored splits moved; nothing written:\n  " + "\n  ".join(report.moved[:20]))
        return 1
    by_split: Counter[str] = Counter()
    if args.write:
        now = {r["id"]: r.get("split") for r in read_jsonl(WRITTEN_FILE)}
        by_split.update(str(now.get(r["id"])) for r in report.kept)
    print(
        f"{'merged' if args.write else 'would merge'} {len(report.kept)} lines"
        + (f" {dict(by_split)}" if by_split else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
