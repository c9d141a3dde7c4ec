"""Join the project's label files with their texts and build train/dev/test splits.

Label files in ``data/annotations`` hold ids and labels only, except the
project's own written messages, which carry their text. Texts of public sources
are read from ``../shared/data`` by path at load time, never committed.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from data.schema import RECORD_FIELDS, SPLITS, LabelError, validate_record
from data.sources import READERS, read_source, shared_data_dir
from data.splits import base_split

logger = logging.getLogger(__name__)

ANNOTATIONS_DIR = Path(__file__).resolve().parent / "annotations"
AGENT_TURNS_FILE = Path(__file__).resolve().parent / "agent_steps" / "agent_turns.jsonl"
#: Files in the annotations folder that are not training labels (agreement studies).
NON_LABEL_PREFIX = "agreement"


def annotation_files(directory: Path | None = None) -> list[Path]:
    directory = directory or ANNOTATIONS_DIR
    return sorted(p for p in directory.glob("*.jsonl") if not p.name.startswith(NON_LABEL_PREFIX))


def read_label_file(path: Path) -> list[dict[str, Any]]:
    """Read and validate one label file; errors name the file and line."""
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise LabelError(f"{path.name}:{n}: not valid JSON ({e.msg})") from e
            validate_record(rec, where=f"{path.name}:{n}")
            records.append(rec)
    return records


def load_annotations(
    directory: Path | None = None,
    *,
    shared_dir: Path | None = None,
    sources: Iterable[str] | None = None,
    on_missing: str = "raise",
) -> list[dict[str, Any]]:
    """All annotation records with ``text`` and ``split`` filled in.

    ``on_missing``: what to do when a record's text cannot be found ("raise" or
    "skip"); the shared folder being absent counts as missing for its records.
    """
    wanted = set(sources) if sources is not None else None
    records: list[dict[str, Any]] = []
    for path in annotation_files(directory):
        for rec in read_label_file(path):
            if wanted is None or rec["source"] in wanted:
                records.append(rec)
    need: dict[str, set[str]] = {}
    for rec in records:
        if "text" not in rec:
            need.setdefault(rec["source"], set()).add(rec["id"])
    texts: dict[tuple[str, str], tuple[str, str]] = {}
    contexts: dict[tuple[str, str], list[tuple[str, str]]] = {}
    root = shared_dir or shared_data_dir()
    for source, ids in need.items():
        if source not in READERS:
            raise LabelError(f"records of source {source!r} carry no text and no reader exists for it")
        if not root.is_dir():
            if on_missing == "skip":
                logger.warning("shared data not found at %s: skipping %d %s records", root, len(ids), source)
                continue
            raise FileNotFoundError(f"shared data not found at {root}; needed for {len(ids)} {source} records")
        for row in read_source(source, root):
            if row.id in ids:
                texts[(source, row.id)] = (row.text, row.split)
                if "context" in row.meta:  # later turns of a dialogue: the turns just before
                    contexts[(source, row.id)] = [tuple(t) for t in json.loads(row.meta["context"])]
    out: list[dict[str, Any]] = []
    missing = unsplit = 0
    for rec in records:
        rec = dict(rec)
        source_split = "train"
        if "text" not in rec:
            found = texts.get((rec["source"], rec["id"]))
            if found is None:
                missing += 1
                continue
            rec["text"], source_split = found
            if (rec["source"], rec["id"]) in contexts:
                rec["context"] = contexts[(rec["source"], rec["id"])]
        if "split" not in rec:
            # Why the project's rule and not the source's own split: a freshly merged batch must not train on
            # records that `data.tools.batch splits` will later put in dev or test
            rec["split"] = base_split(rec, source_split)
            unsplit += 1
        out.append(rec)
    if unsplit:
        logger.warning(
            "%d annotation records carry no stored split: split now by data.splits' rule; "
            "`python -m data.tools.batch splits` stores them and makes duplicates across files share one",
            unsplit,
        )
    if missing:
        msg = f"{missing} annotation records had no text in {root}"
        if on_missing == "raise" and root.is_dir():
            raise LabelError(msg)
        logger.warning(msg)
    return out


def load_agent_turns(
    path: Path | None = None, *, shared_dir: Path | None = None, on_missing: str = "raise"
) -> list[dict[str, Any]]:
    """Labelled agent turns with ``text`` (and ``context``, the customer's turn before, for real
    turns). The project's written turns carry their text; real ones are joined from
    ``../shared/data`` (STC-3 helpdesk replies, hospital and restaurant public replies)."""
    from data.sources import read_agent_turns

    path = path or AGENT_TURNS_FILE
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    need = {r["id"] for r in records if "text" not in r}
    found: dict[str, Any] = {}
    root = shared_dir or shared_data_dir()
    if need:
        if root.is_dir():
            found = {row.id: row for row in read_agent_turns(root) if row.id in need}
        elif on_missing == "raise":
            raise FileNotFoundError(f"shared data not found at {root}; needed for {len(need)} real agent turns")
    out = []
    for r in records:
        r = dict(r)
        if "text" not in r:
            row = found.get(r["id"])
            if row is None:
                if on_missing == "raise" and root.is_dir():
                    raise LabelError(f"agent turn {r['id']!r} has no text in {root}")
                continue
            r["text"], r["context"] = row.text, row.meta.get("context", "")
            for key in ("customer_before", "customer_after"):  # [text, context] of the customer turns around it
                if key in row.meta:
                    r[key] = json.loads(row.meta[key])
            r.setdefault("split", row.split)
        out.append(r)
    return out


def to_datasets(records: list[dict[str, Any]]) -> Any:
    """A ``datasets.DatasetDict`` with train/dev/test splits."""
    from datasets import Dataset, DatasetDict

    cols = [*RECORD_FIELDS, "text", "split"]
    parts = {}
    for split in SPLITS:
        rows = [r for r in records if r["split"] == split]
        parts[split] = Dataset.from_dict({c: [r.get(c) for r in rows] for c in cols})
    return DatasetDict(parts)


def load_splits(directory: Path | None = None, *, shared_dir: Path | None = None, on_missing: str = "raise") -> Any:
    return to_datasets(load_annotations(directory, shared_dir=shared_dir, on_missing=on_missing))


def summarize(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    recs = list(records)
    return {
        "records": len(recs),
        "anger_level": dict(sorted(Counter(r["anger_level"] for r in recs).items())),
        "complaint_type": dict(Counter(r["complaint_type"] for r in recs).most_common()),
        "threat": sum(bool(r["threat"]) for r in recs),
        "script": dict(Counter(r["script"] for r in recs)),
        "source": dict(Counter(r["source"] for r in recs).most_common()),
        "split": dict(Counter(r.get("split", "?") for r in recs)),
    }
