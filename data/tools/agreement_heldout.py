"""Blind second annotation of the real agent turns the agent-turn model is measured on (dev and test).

Why: the agent-turn model's mistake figures were measured against one annotator's labels, and the
only double annotation before this (agreement v1.2: 200 turns drawn at random) held 15 mistakes, too
few to say how far people agree on the held-out turns, which are rich in hard, pre-selected ones.
So every real dev and test turn is labelled again by a different annotator who sees neither the first
labels nor how the turn was chosen (batches ``agragent-s2-NNN``). Where the two disagree on a mistake,
an adjudicator reads the turn and both mistake sets (unnamed, in random order) and decides the
mistakes; the decided mistakes replace the first annotator's in ``agent_turns.jsonl`` (the steps stay
the first annotator's: people agree on them at micro-F1 0.95 and they are not what is in question).

The same is then done for the real train turns (``--study train``: batches ``agragent-s3-NNN``, mistakes only,
the second annotator given the adjudicators' rulings; ``data/agent_steps/agreement_train.jsonl``), so that the
labels the model learns from follow the reading of the labels it is measured against.

    python -m data.tools.agreement_heldout build            # A + B -> data/agent_steps/agreement_heldout.jsonl
    python -m data.tools.agreement_heldout to-adjudicate --out work/batches --size 60
    python -m data.tools.agreement_heldout apply data/annotations/batches/adjagent-s2-*.jsonl
    python -m data.tools.agreement_heldout metrics          # -> data/agent_steps/agreement_heldout.json
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.schema import LabelError
from data.tools.agreement_v12 import AGENT_KEYS, agent_metrics, pair_fields, study_commands
from data.tools.batch import (
    AGENT_FILE,
    BATCH_LABELS,
    BATCHES,
    MISTAKE_CODES,
    _upsert,
    _write_jsonl,
    check_codes,
    read_jsonl,
)


@dataclass(frozen=True)
class Study:
    """One double-annotation pass: its batch prefix, its adjudication batches and its files.
    ``steps_asked``: whether the second annotator labelled steps too (else only mistakes, and the
    study reports mistakes only)."""

    name: str
    adjudication: str
    agreement_file: Path
    metrics_file: Path
    steps_asked: bool = True


HELDOUT = Study(
    "agragent-s2",
    "adjagent-s2",
    AGENT_FILE.parent / "agreement_heldout.jsonl",
    AGENT_FILE.parent / "agreement_heldout.json",
)
#: the real train turns (the STC-3 held-out dialogues aside), mistakes only, with the rulings the held-out
#: study's adjudicators used, so that training labels follow the same reading as the labels measured against
TRAIN = Study(
    "agragent-s3",
    "adjagent-s3",
    AGENT_FILE.parent / "agreement_train.jsonl",
    AGENT_FILE.parent / "agreement_train.json",
    steps_asked=False,
)
STUDIES = {"heldout": HELDOUT, "train": TRAIN}
STUDY, ADJUDICATION = HELDOUT.name, HELDOUT.adjudication
AGREEMENT_FILE, METRICS_FILE = HELDOUT.agreement_file, HELDOUT.metrics_file


def _labels(rec: dict[str, Any]) -> dict[str, list[str]]:
    return {k: sorted(rec[k]) for k in AGENT_KEYS}


def build(
    agent_file: Path = AGENT_FILE,
    labels_dir: Path = BATCH_LABELS,
    out: Path = AGREEMENT_FILE,
    study: Study = HELDOUT,
) -> list[dict[str, Any]]:
    """One row per turn of the study's finished label files: the first annotator's labels (A, kept from
    the first build, since ``apply`` later changes the label file), the second's (B), and the decision."""
    first = {r["id"]: r for r in read_jsonl(agent_file)}
    previous = {r["id"]: r for r in read_jsonl(out)} if out.exists() else {}
    rows = []
    for lab in sorted(labels_dir.glob(f"{study.name}-*.jsonl")):
        for b in read_jsonl(lab):
            old = previous.get(b["id"])
            a_rec = first[b["id"]]
            a_lab = old["annotator_a"] if old else _labels(a_rec)
            # steps not asked: the row carries A's, so that the rows keep one shape (the study reports mistakes only)
            b_lab = _labels(b) if study.steps_asked else {"steps": a_lab["steps"], "mistakes": sorted(b["mistakes"])}
            agreed = a_lab["mistakes"] == b_lab["mistakes"]
            rows.append(
                {
                    "id": b["id"],
                    **{k: a_rec[k] for k in ("source", "script", "region", "split")},
                    "selection": a_rec.get("selection", "random"),
                    **pair_fields(
                        old["annotator_a_id"] if old else a_rec.get("annotator"),
                        b.get("annotator"),
                        a_lab,
                        b_lab,
                        agreed,
                        old,
                        agreed_key="agreed_mistakes",
                    ),
                }
            )
    _write_jsonl(out, rows)
    return rows


def to_adjudicate(
    out_dir: Path,
    size: int,
    agreement: Path = AGREEMENT_FILE,
    batches: Path = BATCHES,
    seed: int = 0,
    study: Study = HELDOUT,
) -> list[Path]:
    """Batches of the turns the two annotators disagree on (mistakes), each with the two mistake sets as
    ``label_1``/``label_2`` in an order drawn per turn, so the adjudicator cannot tell whose is whose."""
    texts: dict[str, dict[str, Any]] = {}
    for p in sorted(batches.glob(f"{study.name}-*.jsonl")):
        texts.update({r["id"]: r for r in read_jsonl(p)})
    rng = random.Random(seed)
    todo = []
    for r in read_jsonl(agreement):
        if r["adjudicated"] is not None:
            continue
        pair = [r["annotator_a"]["mistakes"], r["annotator_b"]["mistakes"]]
        rng.shuffle(pair)
        t = texts[r["id"]]
        todo.append(
            {
                **{k: r[k] for k in ("id", "source", "script", "region")},
                "selection": "adjudication",
                "text": t["text"],
                "context": t.get("context"),
                "label_1": {"mistakes": pair[0]},
                "label_2": {"mistakes": pair[1]},
            }
        )
    paths = []
    for i in range(0, len(todo), size):
        path = out_dir / f"{study.adjudication}-{i // size + 1:03d}.jsonl"
        _write_jsonl(path, todo[i : i + size])
        paths.append(path)
    return paths


def read_decisions(files: list[Path]) -> dict[str, dict[str, Any]]:
    """The adjudicators' decisions, each checked: ``mistakes`` a list of distinct mistake codes
    (errors name the file, line and field)."""
    out: dict[str, dict[str, Any]] = {}
    for f in files:
        for n, d in enumerate(read_jsonl(f), start=1):
            check_codes(d, "mistakes", MISTAKE_CODES, f"{f.name}:{n}")
            if d.get("id") in out:
                raise LabelError(f"{f.name}:{n}: id {d.get('id')!r} decided twice")
            out[d["id"]] = d
    return out


def apply(files: list[Path], agreement: Path = AGREEMENT_FILE, agent_file: Path = AGENT_FILE) -> int:
    """Write the decided mistakes into the agreement rows and the training label file (steps: A's;
    ``interrogated`` brings ``ask_details``, as the contract says it always does)."""
    decided = read_decisions(files)
    rows = read_jsonl(agreement)
    known = {r["id"] for r in rows}
    if unknown := sorted(set(decided) - known):
        raise LabelError(f"decisions for ids not in the study: {unknown[:5]}")
    changes = []
    for r in rows:
        d = decided.get(r["id"])
        if d is None:
            continue
        steps = list(r["annotator_a"]["steps"])
        if "interrogated" in d["mistakes"] and "ask_details" not in steps:
            steps.append("ask_details")
        r["adjudicated"] = {"steps": sorted(steps), "mistakes": sorted(d["mistakes"])}
        r["reason"] = d.get("reason")
        changes.append({"id": r["id"], **r["adjudicated"], "adjudicated": True})
    _write_jsonl(agreement, rows)
    _upsert(agent_file, changes, key=lambda r: r["id"])
    return len(changes)


def metrics(
    agreement: Path = AGREEMENT_FILE, out: Path | None = METRICS_FILE, *, steps_asked: bool = True
) -> dict[str, Any]:
    """A against B (how far two people agree), and each against the adjudicated labels (the reference the
    model is measured on), overall and per split and source. Without ``steps_asked`` the rows carry A's steps
    for B, so the step figures would be agreement with itself: only the mistake figures are reported."""
    rows = read_jsonl(agreement)
    groups = {
        "all": rows,
        "dev": [r for r in rows if r["split"] == "dev"],
        "test": [r for r in rows if r["split"] == "test"],
        "test, not pre-selected": [r for r in rows if r["split"] == "test" and not r["selection"].startswith("model")],
        "stc3": [r for r in rows if r["source"] == "stc3"],
        "tw replies": [r for r in rows if r["source"] != "stc3"],
    }
    res: dict[str, Any] = {"a_vs_b": {g: agent_metrics(rs) for g, rs in groups.items() if rs}}
    done = [r for r in rows if r["adjudicated"] is not None]
    res["adjudicated"] = len(done)
    res["disagreements_on_mistakes"] = sum(not r["agreed_mistakes"] for r in rows)
    if done and len(done) == len(rows):
        for who in ("annotator_a", "annotator_b"):
            res[f"{who}_vs_adjudicated"] = {g: agent_metrics(rs, who, "adjudicated") for g, rs in groups.items() if rs}
    if not steps_asked:
        res = _mistakes_only(res)
    if out is not None:
        out.write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return res


def _mistakes_only(res: dict[str, Any]) -> dict[str, Any]:
    def trim(m: dict[str, Any]) -> dict[str, Any]:
        return {
            "n": m["n"],
            "mistakes_micro_f1": m["mistakes_micro_f1"],
            "codes": {c: v for c, v in m["codes"].items() if c in MISTAKE_CODES},
        }

    return {k: {g: trim(m) for g, m in v.items()} if isinstance(v, dict) else v for k, v in res.items()}


def main(argv: list[str] | None = None) -> int:
    ap, _, t = study_commands(__doc__.splitlines()[0])
    t.add_argument("--size", type=int, default=60)
    ap.add_argument("--study", choices=sorted(STUDIES), default="heldout")
    args = ap.parse_args(argv)
    st = STUDIES[args.study]
    try:
        if args.cmd == "build":
            print(len(build(out=st.agreement_file, study=st)), "turns in the study")
        elif args.cmd == "to-adjudicate":
            for p in to_adjudicate(args.out, args.size, st.agreement_file, study=st):
                print(p)
        elif args.cmd == "apply":
            print(apply(args.files, st.agreement_file), "decisions applied")
        else:
            print(
                json.dumps(
                    metrics(st.agreement_file, st.metrics_file, steps_asked=st.steps_asked),
                    indent=1,
                    ensure_ascii=False,
                )
            )
    except LabelError as e:
        print(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
