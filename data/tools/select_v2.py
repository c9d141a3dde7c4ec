"""Choose the texts for labels v2 and cut them into annotation batches.

Keyword lists and star ratings here only *pre-select* or stratify candidates; they
never assign a label. Each batch record carries how it was selected (``selection``),
which the merge step copies into the label file. Batches hold text, so they go to the
ignored ``work/`` folder; annotators write ids + labels only.

Round 1 (``--round 1``) draws at random within strata (star rating, source); round 2
(``--round 2 --scores FILE``) draws half of each quota by the entropy of a quickly
retrained model (``data.tools.quick_model``) and half at random, as the labels-v2 issue
asks. ``selection`` is one of ``random``, ``stratified:<stratum>``,
``keyword:<type>`` (keyword pre-selection), ``entropy:<model>``, ``model_score:<what>``.

Round 3 of the agent turns (``agent_mistakes --scores FILE``) aims at the rarest codes, the
mistakes: most of a draw is the unlabelled STC-3 agent turns the shipped agent-turn model
scores highest for any mistake (``FILE``: JSONL of ``{id, score}``), the rest at random from
the others, so what the model misses is drawn too. Dialogues of the handling score's
held-out validation (id % 5 == 0) are drawn only when their split is test: training and
threshold fitting never read them.

    python -m data.tools.select_v2 trad --round 3 --scale 0.5 --out work/batches
    python -m data.tools.select_v2 agent --out work/batches
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from data.script import detect_script
from data.sources import (
    SourceText,
    hash_split,
    read_agent_turns,
    read_source,
    read_stc3_dialogues,
    region_of,
    shared_data_dir,
    stc3_turns,
)

ROOT = Path(__file__).resolve().parents[2]
ANNOTATIONS = ROOT / "data" / "annotations"
AGENT_TURNS = ROOT / "data" / "agent_steps"

#: real Taiwan/Hong Kong quotas per source (records); stars stratified by STAR_SHARE
TRAD_QUOTAS = {
    "tw_hospital_reviews": 600,
    "tw_taipei_restaurant_reviews": 550,
    "tw_venue_reviews": 200,
    "tw_restaurant_chain_reviews": 150,
    "tw_icook_app_reviews": 250,
    "hk_bank_app_reviews": 450,
    "hk_openrice_senti": 450,
    "hk_cantonese_forum_emotion": 150,
}
#: share of a quota per star stratum (reviews are mostly 1 or 5 stars; complaints matter most)
STAR_SHARE = {"low": 0.6, "mid": 0.15, "high": 0.25}
OPENRICE_STRATA = {"cry": "low", "ok": "mid", "smile": "high"}
#: a message, not an essay: annotators read every word
MIN_CHARS, MAX_CHARS = 2, 350

#: Simplified keyword pre-selection for the weak types (candidates only; annotators judge)
WEAK_TYPE_KEYWORDS = {
    "refund_return": ["退款", "退货", "退钱", "换货", "退换", "不给退", "拒绝退"],
    "staff_attitude": ["态度", "服务员", "客服", "骂", "不耐烦", "爱理不理", "甩脸", "凶"],
    "policy_promotion": ["套餐", "合约", "活动", "优惠券", "规则", "条款", "违约金", "承诺", "宣传", "会员"],
    "billing": ["扣费", "收费", "多扣", "扣钱", "话费", "账单", "乱收", "费用", "价格"],
}
WEAK_TYPE_SOURCES = ("stc3", "waimai_10k", "online_shopping_10_cats", "chnsenticorp_htl")


def labelled_ids() -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for p in list(ANNOTATIONS.glob("*.jsonl")) + list((ANNOTATIONS / "batches").glob("*.jsonl")):
        for line in p.read_text(encoding="utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                out.add((r.get("source", ""), r["id"]))
    return out


def batched_ids(out: Path) -> set[tuple[str, str]]:
    seen: set[tuple[str, str]] = set()
    for p in out.glob("**/*.jsonl"):
        for line in p.read_text(encoding="utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                seen.add((r["source"], r["id"]))
    return seen


def star_stratum(row: SourceText) -> str:
    if row.source == "hk_openrice_senti":
        return OPENRICE_STRATA.get(row.meta.get("label", ""), "mid")
    if row.source == "hk_cantonese_forum_emotion":
        return "low" if row.meta.get("anger", "0") not in ("", "0") else "high"
    star = row.meta.get("star", "3")
    return "low" if star in ("1", "2") else "mid" if star == "3" else "high"


def record(row: SourceText, selection: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "source": row.source,
        "script": detect_script(row.text),
        "region": region_of(row.source),
        "selection": selection,
        "text": row.text,
        **extra,
    }


def fits(text: str) -> bool:
    return MIN_CHARS <= len(text) <= MAX_CHARS


def trad_candidates(
    quotas: dict[str, int], exclude: set[tuple[str, str]], rng: random.Random, scores: dict[str, float] | None
) -> list[dict[str, Any]]:
    """Star-stratified draws per source; with ``scores`` half of each stratum by entropy."""
    chosen: list[dict[str, Any]] = []
    for source, quota in quotas.items():
        pool: dict[str, list[SourceText]] = {"low": [], "mid": [], "high": []}
        for row in read_source(source):
            if (source, row.id) not in exclude and fits(row.text):
                pool[star_stratum(row)].append(row)
        for stratum, share in STAR_SHARE.items():
            rows = pool[stratum]
            rng.shuffle(rows)
            n = min(len(rows), round(quota * share))
            chosen += draw(rows, n, scores, f"stratified:{stratum}_star")
    return chosen


def draw(rows: list[SourceText], n: int, scores: dict[str, float] | None, random_label: str) -> list[dict[str, Any]]:
    if not scores:
        return [record(r, random_label) for r in rows[:n]]
    by_entropy = sorted((r for r in rows if r.id in scores), key=lambda r: -scores[r.id])
    top = by_entropy[: n // 2]
    taken = {r.id for r in top}
    rest = [r for r in rows if r.id not in taken][: n - len(top)]
    return [record(r, "entropy:quick-v2") for r in top] + [record(r, random_label) for r in rest]


def stc3_candidates(
    n_first: int, n_later: int, exclude: set[tuple[str, str]], rng: random.Random, scores: dict[str, float] | None
) -> list[dict[str, Any]]:
    """First customer turns of unlabelled dialogues, and later turns with the turns before them."""
    first: list[dict[str, Any]] = []
    later: list[dict[str, Any]] = []
    for dia in read_stc3_dialogues(shared_data_dir()):
        ctx: list[dict[str, str]] = []
        seen_customer = False
        for i, (role, text) in enumerate(stc3_turns(dia)):
            if role == "customer" and text:
                tid = f"{dia['id']}-t{i}"
                row = SourceText(tid, "stc3", text, "", {})
                if ("stc3", tid) not in exclude:
                    if not seen_customer:
                        first.append(record(row, "random"))
                    else:
                        later.append(record(row, "random", context=ctx[-2:]))
                seen_customer = True
            if text:
                ctx.append({"role": role, "text": text})
    rng.shuffle(first)
    rng.shuffle(later)
    if scores:
        for group in (first, later):
            group.sort(key=lambda r: -scores.get(r["id"], -1.0))
        first = mix(first, n_first, rng)
        later = mix(later, n_later, rng)
    return first[:n_first] + later[:n_later]


def mix(sorted_rows: list[dict[str, Any]], n: int, rng: random.Random) -> list[dict[str, Any]]:
    top = sorted_rows[: n // 2]
    for r in top:
        r["selection"] = "entropy:quick-v2"
    rest = sorted_rows[n // 2 :]
    rng.shuffle(rest)
    return top + rest[: n - len(top)]


def weak_type_candidates(per_type: int, exclude: set[tuple[str, str]], rng: random.Random) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    taken: set[str] = set()
    pools: dict[str, list[SourceText]] = {t: [] for t in WEAK_TYPE_KEYWORDS}
    for source in WEAK_TYPE_SOURCES:
        for row in read_source(source):
            if (source, row.id) in exclude or not fits(row.text):
                continue
            for t, words in WEAK_TYPE_KEYWORDS.items():
                if any(w in row.text for w in words):
                    pools[t].append(row)
                    break
    for t, rows in pools.items():
        rng.shuffle(rows)
        for r in rows:
            if len([x for x in out if x["selection"] == f"keyword:{t}"]) >= per_type:
                break
            if r.id not in taken:
                taken.add(r.id)
                out.append(record(r, f"keyword:{t}"))
    return out


#: the hospital replies are mostly a few templates: a sample of them is enough
HOSPITAL_REPLIES = 500


def agent_candidates(n_stc3: int, exclude: set[str], rng: random.Random) -> list[dict[str, Any]]:
    """Real organisation-to-customer turns: STC-3 helpdesk replies and the public replies in the
    Taiwan hospital and restaurant sources, each with the customer's turn before it."""
    out: list[dict[str, Any]] = []
    for source in ("tw_hospital_reviews", "tw_restaurant_chain_reviews"):
        for row in read_source(source):
            reply = row.meta.get("reply", "")
            rid = f"{row.id}:reply"
            if reply and rid not in exclude:
                out.append(
                    {
                        "id": rid,
                        "source": source,
                        "script": detect_script(reply),
                        "region": "tw",
                        "selection": "all_replies",
                        "text": reply,
                        "context": [{"role": "customer", "text": row.text[: MAX_CHARS * 2]}],
                    }
                )
    hosp = [r for r in out if r["source"] == "tw_hospital_reviews"]
    rng.shuffle(hosp)
    out = [r for r in out if r["source"] != "tw_hospital_reviews"] + hosp[:HOSPITAL_REPLIES]
    for r in hosp[:HOSPITAL_REPLIES]:
        r["selection"] = "random"
    stc3 = stc3_agent_turns(exclude)
    rng.shuffle(stc3)
    # long, multi-clause replies are what the detector missed: half of the draw is > 50 characters
    long_ = [r for r in stc3 if len(r["text"]) > 50]
    short = [r for r in stc3 if len(r["text"]) <= 50]
    for r in long_[: n_stc3 // 2]:
        r["selection"] = "stratified:long"
    picked = long_[: n_stc3 // 2] + short[: n_stc3 - n_stc3 // 2]
    rng.shuffle(picked)
    return out + picked


def _outside_holdout_or_test(dialogue: str) -> bool:
    """False for the handling score's held-out dialogues (id % 5 == 0) unless their split is test."""
    return int(dialogue) % 5 != 0 or hash_split(f"stc3:{dialogue}") == "test"


def stc3_agent_turns(exclude: set[str]) -> list[dict[str, Any]]:
    """Every STC-3 helpdesk reply not in ``exclude`` that follows a customer turn, as a batch record with
    that turn as its context: the same text and context the labels are later joined with
    (``data.sources.read_agent_turns``)."""
    return [
        {
            "id": row.id,
            "source": "stc3",
            "script": "hans",
            "region": "cn",
            "selection": "random",
            "text": row.text,
            "context": [{"role": "customer", "text": row.meta["context"]}],
        }
        for row in read_agent_turns(shared_data_dir())
        if row.source == "stc3" and row.meta["context"] and row.id not in exclude
    ]


def agent_mistake_candidates(
    n: int, scores: dict[str, float], exclude: set[str], rng: random.Random, *, top_fraction: float = 0.7
) -> list[dict[str, Any]]:
    """Unlabelled STC-3 agent turns: ``top_fraction`` of ``n`` by the highest mistake score, the
    rest at random from the others (each record's ``selection`` says which)."""
    pool = [
        r for r in stc3_agent_turns(exclude) if r["id"] in scores and _outside_holdout_or_test(r["id"].split("-t")[0])
    ]
    pool.sort(key=lambda r: (-scores[r["id"]], r["id"]))
    n_top = round(n * top_fraction)
    top, rest = pool[:n_top], pool[n_top:]
    for r in top:
        r["selection"] = "model_score:mistakes"
    rng.shuffle(rest)
    picked = top + rest[: n - n_top]
    rng.shuffle(picked)
    return picked


def write_batches(records: Iterable[dict[str, Any]], out: Path, name: str, size: int) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    recs = list(records)
    paths = []
    for k in range(0, len(recs), size):
        p = out / f"{name}-{k // size + 1:03d}.jsonl"
        with open(p, "w", encoding="utf-8") as f:
            for r in recs[k : k + size]:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        paths.append(p)
    return paths


def load_scores(path: Path | None, field: str = "entropy") -> dict[str, float] | None:
    if path is None:
        return None
    return {r["id"]: r[field] for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["trad", "stc3", "weak_types", "agent", "agent_mistakes"])
    ap.add_argument("--round", type=int, default=1)
    ap.add_argument("--scores", type=Path, help="JSONL of {id, entropy} from data.tools.quick_model")
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the quotas to draw now")
    ap.add_argument("--out", type=Path, default=ROOT / "work" / "batches")
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--n-first", type=int, default=1700)
    ap.add_argument("--n-later", type=int, default=1150)
    ap.add_argument("--n-agent", type=int, default=1000)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed * 100 + args.round)
    exclude = labelled_ids() | batched_ids(args.out)
    scores = load_scores(args.scores, "score" if args.what == "agent_mistakes" else "entropy")
    tag = f"r{args.round}"
    if args.what == "trad":
        quotas = {s: round(q * args.scale) for s, q in TRAD_QUOTAS.items()}
        recs = trad_candidates(quotas, exclude, rng, scores)
        hk = [r for r in recs if r["region"] == "hk"]
        tw = [r for r in recs if r["region"] == "tw"]
        rng.shuffle(hk)
        rng.shuffle(tw)
        paths = write_batches(hk, args.out, f"hk-{tag}", args.size) + write_batches(
            tw, args.out, f"tw-{tag}", args.size
        )
    elif args.what == "stc3":
        recs = stc3_candidates(round(args.n_first * args.scale), round(args.n_later * args.scale), exclude, rng, scores)
        paths = write_batches(recs, args.out, f"stc3-{tag}", args.size)
    elif args.what == "weak_types":
        recs = weak_type_candidates(round(200 * args.scale), exclude, rng)
        rng.shuffle(recs)
        paths = write_batches(recs, args.out, f"weak-{tag}", args.size)
    else:
        done = {r["id"] for r in map(json.loads, (AGENT_TURNS / "agent_turns.jsonl").read_text().splitlines())}
        if args.what == "agent":
            recs = agent_candidates(args.n_agent, done | {i for _, i in exclude}, rng)
        else:
            if scores is None:
                ap.error("agent_mistakes needs --scores FILE (JSONL of {id, score})")
            recs = agent_mistake_candidates(args.n_agent, scores, done | {i for _, i in exclude}, rng)
        paths = write_batches(recs, args.out, f"agent-{tag}", args.size)
    print(f"{sum(1 for p in paths for _ in p.open())} records in {len(paths)} batches under {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
