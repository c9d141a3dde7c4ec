"""The blind agreement study under schema v1.2 (labels v2).

300 real records (120+ Taiwan/Hong Kong) and 200 real agent turns, each first labelled in its
annotation batch (annotator A) and labelled again, blind, by a different annotator (B) who saw
neither A's labels nor the selection. Disagreements go to a third annotator who reads both and
decides (adjudication); the adjudicated label replaces the training label.

    python -m data.tools.agreement_v12 build        # A + B -> data/annotations/agreement_v12.jsonl
    python -m data.tools.agreement_v12 to-adjudicate --out work/batches
    python -m data.tools.agreement_v12 apply data/annotations/batches/adj-*.jsonl
    python -m data.tools.agreement_v12 metrics      # -> data/agreement_v12.json (+ markdown on stdout)
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from data.tools.batch import AGENT_FILE, ANNOTATIONS, BATCH_LABELS, BATCHES, MISTAKE_CODES, STEP_CODES, read_jsonl

CUSTOMER_FILE = ANNOTATIONS / "agreement_v12.jsonl"
AGENT_AGREEMENT_FILE = ANNOTATIONS.parent / "agent_steps" / "agreement_v12.jsonl"
METRICS_FILE = ANNOTATIONS.parent / "agreement_v12.json"
CUSTOMER_KEYS = ("anger_level", "complaint_type", "types", "threat")
AGENT_KEYS = ("steps", "mistakes")


def _first_labels() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for p in ANNOTATIONS.glob("*.jsonl"):
        if not p.name.startswith("agreement"):
            for r in read_jsonl(p):
                out[(r["source"], r["id"])] = r
    return out


def build() -> tuple[int, int]:
    first = _first_labels()
    agents = {r["id"]: r for r in read_jsonl(AGENT_FILE)}
    previous = {r["id"]: r for r in read_jsonl(CUSTOMER_FILE)} if CUSTOMER_FILE.exists() else {}
    prev_agent = {r["id"]: r for r in read_jsonl(AGENT_AGREEMENT_FILE)} if AGENT_AGREEMENT_FILE.exists() else {}
    rows: list[dict[str, Any]] = []
    arows: list[dict[str, Any]] = []
    for lab in sorted(BATCH_LABELS.glob("agr-r2-*.jsonl")) + sorted(BATCH_LABELS.glob("agragent-r2-*.jsonl")):
        agent = lab.name.startswith("agragent")
        meta = {r["id"]: r for r in read_jsonl(BATCHES / lab.name)}
        for b in read_jsonl(lab):
            if b.get("skip"):
                continue
            m = meta[b["id"]]
            keys = AGENT_KEYS if agent else CUSTOMER_KEYS
            old = (prev_agent if agent else previous).get(b["id"])
            if old:  # A's labels are kept from the first build: adjudication may since have changed the file
                a_lab, a_who = old["annotator_a"], old["annotator_a_id"]
            else:
                a_rec = agents[b["id"]] if agent else first[(m["source"], b["id"])]
                a_lab, a_who = {k: a_rec[k] for k in keys}, a_rec.get("annotator")
            b_lab = {k: b[k] for k in keys}
            agreed = _same(a_lab, b_lab, agent)
            row = {
                "id": b["id"],
                "source": m["source"],
                "script": m["script"],
                "region": m["region"],
                "schema": "1.2",
                **pair_fields(a_who, b.get("annotator"), a_lab, b_lab, agreed, old),
            }
            (arows if agent else rows).append(row)
    for path, rs in ((CUSTOMER_FILE, rows), (AGENT_AGREEMENT_FILE, arows)):
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rs), encoding="utf-8")
    return len(rows), len(arows)


def pair_fields(
    a_who: Any,
    b_who: Any,
    a_lab: dict[str, Any],
    b_lab: dict[str, Any],
    agreed: bool,
    old: dict[str, Any] | None,
    *,
    agreed_key: str = "agreed",
) -> dict[str, Any]:
    """Both annotators' labels and the decision, as every agreement file stores them: a decision from an
    earlier build is kept (adjudication may have happened since), else A's labels where the two agree."""
    return {
        "annotator_a_id": a_who,
        "annotator_b_id": b_who,
        "annotator_a": a_lab,
        "annotator_b": b_lab,
        agreed_key: agreed,
        "adjudicated": (old or {}).get("adjudicated") or (a_lab if agreed else None),
        "reason": (old or {}).get("reason"),
    }


def _same(a: dict[str, Any], b: dict[str, Any], agent: bool) -> bool:
    if agent:
        return set(a["steps"]) == set(b["steps"]) and set(a["mistakes"]) == set(b["mistakes"])
    return (a["anger_level"], a["complaint_type"], a["threat"]) == (b["anger_level"], b["complaint_type"], b["threat"])


def to_adjudicate(out: Path) -> int:
    n = 0
    for path, name in ((CUSTOMER_FILE, "adj-001"), (AGENT_AGREEMENT_FILE, "adjagent-001")):
        texts = {}
        for p in BATCHES.glob("agr*.jsonl"):
            texts.update({r["id"]: r for r in read_jsonl(p)})
        todo = [r for r in read_jsonl(path) if r["adjudicated"] is None]
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for r in todo:
                t = texts[r["id"]]
                f.write(
                    json.dumps(
                        {
                            **{k: r[k] for k in ("id", "source", "script", "region")},
                            "selection": "adjudication",
                            "text": t["text"],
                            "context": t.get("context"),
                            "label_1": r["annotator_a"],
                            "label_2": r["annotator_b"],
                        },
                        ensure_ascii=False,
                    )
                    + "\n"
                )
        n += len(todo)
    return n


def apply(files: list[Path]) -> int:
    from data.tools.batch import _upsert

    decided = {r["id"]: r for f in files for r in read_jsonl(f)}
    n = 0
    for path, keys, target in ((CUSTOMER_FILE, CUSTOMER_KEYS, None), (AGENT_AGREEMENT_FILE, AGENT_KEYS, AGENT_FILE)):
        rows = read_jsonl(path)
        changes: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            d = decided.get(r["id"])
            if d is None:
                continue
            r["adjudicated"] = {k: d[k] for k in keys}
            r["reason"] = d.get("reason")
            dest_path = target or ANNOTATIONS / f"{r['source']}.jsonl"
            changes.setdefault(str(dest_path), []).append({"id": r["id"], **r["adjudicated"], "adjudicated": True})
            n += 1
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        for dest, recs in changes.items():
            _upsert(Path(dest), recs, key=lambda r: r["id"])
    return n


def _kappa(a: list[Any], b: list[Any], weights: str | None = None) -> float | None:
    """Cohen's kappa; None where only one value occurs (kappa is undefined there, not perfect)."""
    from sklearn.metrics import cohen_kappa_score

    if len(set(a) | set(b)) < 2:
        return None
    return round(float(cohen_kappa_score(a, b, weights=weights)), 3)


def customer_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    a = [r["annotator_a"] for r in rows]
    b = [r["annotator_b"] for r in rows]
    lv_a, lv_b = [x["anger_level"] for x in a], [x["anger_level"] for x in b]
    cf_a, cf_b = [x >= 2 for x in lv_a], [x >= 2 for x in lv_b]
    tp = sum(x and y for x, y in zip(cf_a, cf_b, strict=True))
    f1 = 2 * tp / max(1, sum(cf_a) + sum(cf_b))
    return {
        "n": len(rows),
        "anger_qwk": _kappa(lv_a, lv_b, "quadratic"),
        "anger_exact": round(sum(x == y for x, y in zip(lv_a, lv_b, strict=True)) / max(1, len(rows)), 3),
        "calm_first_agreement": round(sum(x == y for x, y in zip(cf_a, cf_b, strict=True)) / max(1, len(rows)), 3),
        "calm_first_kappa": _kappa(cf_a, cf_b),
        "calm_first_f1": round(f1, 3),
        "type_kappa": _kappa([x["complaint_type"] for x in a], [x["complaint_type"] for x in b]),
        "threat_kappa": _kappa([x["threat"] for x in a], [x["threat"] for x in b]),
        "threats": sum(x["threat"] or y["threat"] for x, y in zip(a, b, strict=True)),
    }


def agent_metrics(rows: list[dict[str, Any]], a_key: str = "annotator_a", b_key: str = "annotator_b") -> dict[str, Any]:
    """Per-code and micro agreement between two label sets of each row (``a_key`` against ``b_key``);
    ``mistakes_micro_f1`` and ``steps_micro_f1`` are the agent-turn model's two targets' measures."""
    out: dict[str, Any] = {"n": len(rows), "codes": {}}
    tp_all = fp_fn = 0
    part = {"steps": [0, 0], "mistakes": [0, 0]}
    for code in (*STEP_CODES, *MISTAKE_CODES):
        key = "steps" if code in STEP_CODES else "mistakes"
        a = [code in r[a_key][key] for r in rows]
        b = [code in r[b_key][key] for r in rows]
        tp = sum(x and y for x, y in zip(a, b, strict=True))
        either = sum(x or y for x, y in zip(a, b, strict=True))
        tp_all += tp
        fp_fn += either - tp
        part[key][0] += tp
        part[key][1] += either - tp
        out["codes"][code] = {
            "a": sum(a),
            "b": sum(b),
            "both": tp,
            "f1": round(2 * tp / max(1, sum(a) + sum(b)), 3),
            "kappa": _kappa(a, b),
        }
    out["micro_f1"] = round(2 * tp_all / max(1, 2 * tp_all + fp_fn), 3)
    for key, (tp, miss) in part.items():
        out[f"{key}_micro_f1"] = round(2 * tp / max(1, 2 * tp + miss), 3)
    out["exact_match"] = round(sum(_same(r[a_key], r[b_key], True) for r in rows) / max(1, len(rows)), 3)
    return out


def metrics() -> dict[str, Any]:
    rows = read_jsonl(CUSTOMER_FILE)
    groups: dict[str, Callable[[dict[str, Any]], bool]] = {
        "all": lambda r: True,
        "hans (cn)": lambda r: r["script"] == "hans",
        "hant": lambda r: r["script"] == "hant",
        "tw": lambda r: r["region"] == "tw",
        "hk": lambda r: r["region"] == "hk",
    }
    res = {
        "customer": {g: customer_metrics([r for r in rows if f(r)]) for g, f in groups.items()},
        "agent": agent_metrics(read_jsonl(AGENT_AGREEMENT_FILE)),
        "disagreements_adjudicated": sum(not r["agreed"] for r in rows),
    }
    METRICS_FILE.write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return res


def markdown(res: dict[str, Any]) -> str:
    """The card's agreement tables (customer records by group; agent codes)."""

    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    out = [
        "| group | n | anger QWK | anger exact | calm_first agreement | calm_first kappa | calm_first F1 | type kappa | threat kappa (threats) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for g, m in res["customer"].items():
        out.append(
            f"| {g} | {m['n']} | {f(m['anger_qwk'])} | {f(m['anger_exact'])} | {f(m['calm_first_agreement'])} | "
            f"{f(m['calm_first_kappa'])} | {f(m['calm_first_f1'])} | {f(m['type_kappa'])} | {f(m['threat_kappa'])} ({m['threats']}) |"
        )
    a = res["agent"]
    out += [
        "",
        f"Agent turns ({a['n']} real): micro-F1 between the two annotators **{a['micro_f1']:.3f}**, "
        f"all codes of a turn equal in {a['exact_match']:.1%}.",
        "",
        "| code | A | B | both | F1 | kappa |",
        "|---|---|---|---|---|---|",
    ]
    for code, m in a["codes"].items():
        out.append(f"| {code} | {m['a']} | {m['b']} | {m['both']} | {f(m['f1'])} | {f(m['kappa'])} |")
    return "\n".join(out) + "\n"


def study_commands(description: str) -> tuple[argparse.ArgumentParser, Any, argparse.ArgumentParser]:
    """The commands every agreement study has (build, to-adjudicate --out, apply FILES, metrics): the parser,
    its subparsers (for more commands) and the to-adjudicate parser (for more options)."""
    ap = argparse.ArgumentParser(description=description)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build")
    t = sub.add_parser("to-adjudicate")
    t.add_argument("--out", type=Path, default=BATCHES)
    sub.add_parser("apply").add_argument("files", nargs="+", type=Path)
    sub.add_parser("metrics")
    return ap, sub, t


def main(argv: list[str] | None = None) -> int:
    ap, sub, _ = study_commands(__doc__.splitlines()[0])
    md = sub.add_parser("markdown", help="replace the agreement section of a card file")
    md.add_argument("card", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "markdown":
        from data.stats import write_card

        write_card(args.card, markdown(metrics()), begin="<!-- agreement: begin -->", end="<!-- agreement: end -->")
        return 0
    if args.cmd == "build":
        rows, arows = build()
        print(f"customer rows {rows}, agent rows {arows}")
    elif args.cmd == "to-adjudicate":
        print(to_adjudicate(args.out), "records to adjudicate")
    elif args.cmd == "apply":
        print(apply(args.files), "adjudicated labels applied")
    else:
        print(json.dumps(metrics(), indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
