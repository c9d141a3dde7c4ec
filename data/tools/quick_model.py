"""A quickly retrained model for uncertainty sampling (labels v2, round 2).

Full fine-tuning takes an hour on 2 cores, too slow to steer annotation. Instead the shipped
model's encoder (frozen) embeds every candidate once, and two logistic regressions (anger
level, complaint type) are refitted on the labels available *now* (v1 plus the round-1
batches). A candidate's score is the entropy of the anger prediction plus the entropy of the
type prediction (each divided by its maximum); ``select_v2 --round 2 --scores`` takes the
highest half of each quota by this score and the other half at random.

    python -m data.tools.quick_model embed --out work/quick
    python -m data.tools.quick_model score --out work/quick   # after round-1 labels exist
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

import numpy as np

from data.schema import COMPLAINT_TYPES
from data.sources import read_source
from data.tools import select_v2

ROOT = Path(__file__).resolve().parents[2]


def labelled_texts() -> list[dict[str, Any]]:
    """v1 records with their text, and every batch record (text from the batch file)."""
    recs: list[dict[str, Any]] = []
    need: dict[str, dict[str, dict[str, Any]]] = {}
    for p in sorted((ROOT / "data" / "annotations").glob("*.jsonl")):
        if p.name.startswith("agreement"):
            continue
        for line in p.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            if "text" in r:
                recs.append(r)
            else:
                need.setdefault(r["source"], {})[r["id"]] = r
    for source, ids in need.items():
        for row in read_source(source):
            if row.id in ids:
                recs.append({**ids[row.id], "text": row.text})
    return recs


def pool(rng: random.Random, factor: int = 3) -> list[dict[str, Any]]:
    """Unlabelled, unbatched candidates: a sample of each trad stratum and the STC-3 turns."""
    out_dir = ROOT / "work" / "batches"
    exclude = select_v2.labelled_ids() | select_v2.batched_ids(out_dir)
    quotas = {s: q * factor for s, q in select_v2.TRAD_QUOTAS.items()}
    trad = select_v2.trad_candidates(quotas, exclude, rng, None)
    stc3 = select_v2.stc3_candidates(10**6, 4000, exclude, rng, None)
    return trad + stc3


def embed(texts: list[str], model_dir: str, batch_size: int = 64) -> np.ndarray:
    import torch

    from model.classifier import CalmFirstModel

    torch.set_num_threads(2)
    model = CalmFirstModel.from_pretrained(model_dir)
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    feats = np.zeros((len(texts), model.anger_head.score.in_features))
    with torch.no_grad():
        for k in range(0, len(order), batch_size):
            idx = order[k : k + batch_size]
            enc = model.tokenize([texts[i][:300] for i in idx])
            enc = {key: v[:, :128] for key, v in enc.items()}
            feats[idx] = model.encode(enc["input_ids"], enc["attention_mask"]).numpy()
            if k % (batch_size * 20) == 0:
                print(f"embedded {k}/{len(texts)}", flush=True)
    return feats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cmd", choices=["embed", "score"])
    ap.add_argument("--out", type=Path, default=ROOT / "work" / "quick")
    ap.add_argument("--model", default=str(ROOT / "model" / "default"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.cmd == "embed":
        rng = random.Random(7)
        cands = pool(rng)
        batch_recs = [
            json.loads(line)
            for p in sorted((ROOT / "work" / "batches").glob("*-r1-*.jsonl"))
            if not p.name.startswith("agent")
            for line in p.read_text(encoding="utf-8").splitlines()
        ]
        rows = [{"key": f"{r['source']}|{r['id']}", "text": r["text"]} for r in labelled_texts() + batch_recs + cands]
        seen: set[str] = set()
        rows = [r for r in rows if not (r["key"] in seen or seen.add(r["key"]))]  # type: ignore[func-returns-value]
        feats = embed([r["text"] for r in rows], args.model)
        np.save(args.out / "features.npy", feats.astype(np.float32))
        (args.out / "keys.json").write_text(json.dumps([r["key"] for r in rows]), encoding="utf-8")
        (args.out / "pool.json").write_text(json.dumps([f"{r['source']}|{r['id']}" for r in cands]), encoding="utf-8")
        print(f"{len(rows)} texts embedded, {len(cands)} pool candidates")
        return 0
    from sklearn.linear_model import LogisticRegression

    feats = np.load(args.out / "features.npy")
    keys = json.loads((args.out / "keys.json").read_text())
    index = {k: i for i, k in enumerate(keys)}
    labels: dict[str, tuple[int, str]] = {}
    for p in sorted((ROOT / "data" / "annotations").glob("*.jsonl")):
        if not p.name.startswith("agreement"):
            for line in p.read_text(encoding="utf-8").splitlines():
                r = json.loads(line)
                labels[f"{r['source']}|{r['id']}"] = (r["anger_level"], r["complaint_type"])
    for p in sorted((ROOT / "data" / "annotations" / "batches").glob("*-r1-*.jsonl")):
        if p.name.startswith("agent"):
            continue
        meta = {r["id"]: r["source"] for r in map(json.loads, (ROOT / "work" / "batches" / p.name).open())}
        for line in p.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            if not r.get("skip"):
                labels[f"{meta[r['id']]}|{r['id']}"] = (r["anger_level"], r["complaint_type"])
    have = [k for k in labels if k in index]
    x = feats[[index[k] for k in have]]
    anger = LogisticRegression(max_iter=2000, C=1.0).fit(x, [labels[k][0] for k in have])
    ctype = LogisticRegression(max_iter=2000, C=1.0).fit(x, [COMPLAINT_TYPES.index(labels[k][1]) for k in have])
    pool_keys = [k for k in json.loads((args.out / "pool.json").read_text()) if k not in labels]
    xp = feats[[index[k] for k in pool_keys]]

    def entropy(p: np.ndarray) -> np.ndarray:
        return -(p * np.log(np.clip(p, 1e-12, 1))).sum(1) / np.log(p.shape[1])

    score = entropy(anger.predict_proba(xp)) + entropy(ctype.predict_proba(xp))
    with open(args.out / "entropy.jsonl", "w", encoding="utf-8") as f:
        for k, s in zip(pool_keys, score, strict=True):
            f.write(json.dumps({"id": k.split("|", 1)[1], "source": k.split("|", 1)[0], "entropy": float(s)}) + "\n")
    n_r1 = sum(1 for k in have if "|" in k) - 0
    print(f"fitted on {len(have)} labelled records ({n_r1}); scored {len(pool_keys)} candidates")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
