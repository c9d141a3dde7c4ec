"""Pick candidate texts for human annotation from ../shared/data.

Keyword lists here only *pre-select* texts likely to be messages to a company
(and enrich the pool for strong anger, which is rare); they never assign a
label. Every selected text is read and judged by an annotator, who may skip it.
Output goes to an ignored work folder because the texts may not be committed.

    python -m data.tools.select_candidates --out work/batches --batches 6
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from data.sources import SourceText, read_source

SERVICE_WORDS = [
    "客服",
    "快递",
    "物流",
    "退款",
    "退货",
    "订单",
    "商家",
    "店家",
    "外卖",
    "骑手",
    "移动",
    "联通",
    "电信",
    "银行",
    "信用卡",
    "话费",
    "流量",
    "宽带",
    "套餐",
    "扣费",
    "扣钱",
    "收费",
    "投诉",
    "售后",
    "维修",
    "酒店",
    "航空",
    "航班",
    "机票",
    "携程",
    "淘宝",
    "京东",
    "天猫",
    "美团",
    "饿了么",
    "顺丰",
    "圆通",
    "中通",
    "申通",
    "韵达",
    "邮政",
    "手机",
    "系统",
    "账号",
    "app",
    "APP",
    "客户",
    "服务",
    "营业厅",
    "发票",
    "会员",
    "优惠",
]
STRONG_WORDS = [
    "骗子",
    "垃圾",
    "坑人",
    "黑心",
    "投诉",
    "工信部",
    "12315",
    "消协",
    "曝光",
    "媒体",
    "起诉",
    "法院",
    "律师",
    "报警",
    "差评",
    "TM",
    "尼玛",
    "妈的",
    "滚",
    "恶心",
    "无耻",
    "流氓",
    "气死",
    "什么玩意",
    "解约",
    "销户",
    "退网",
    "！！",
    "？？",
]


def _score(text: str, words: tuple[str, ...] | list[str]) -> int:
    return sum(1 for w in words if w in text)


def _pick(rows: list[SourceText], n: int, rng: random.Random, *, enrich: float = 0.5) -> list[SourceText]:
    """Half at random, half from the rows with the most strong-emotion cues."""
    rows = [r for r in rows if 6 <= len(r.text) <= 300]
    rng.shuffle(rows)
    n_enrich = int(n * enrich)
    strong = sorted(rows, key=lambda r: -_score(r.text, STRONG_WORDS))[: n_enrich * 2]
    rng.shuffle(strong)
    chosen = {r.id: r for r in strong[:n_enrich]}
    for r in rows:
        if len(chosen) >= n:
            break
        chosen.setdefault(r.id, r)
    return list(chosen.values())


def select(seed: int = 13) -> list[SourceText]:
    rng = random.Random(seed)
    out: list[SourceText] = []

    stc3 = list(read_source("stc3"))
    first_turns = [r for r in stc3 if r.meta["turn"] == "0"]
    later = [r for r in stc3 if r.meta["turn"] != "0"]
    out += _pick(first_turns, 1050, rng)
    out += _pick(later, 350, rng, enrich=0.3)

    smp = [r for r in read_source("smp2020_ewect") if not r.id.startswith("virus")]
    smp_service = [r for r in smp if _score(r.text, SERVICE_WORDS) > 0]
    out += _pick([r for r in smp_service if r.meta["emotion"] == "angry"], 600, rng)
    out += _pick([r for r in smp_service if r.meta["emotion"] == "neutral"], 200, rng, enrich=0.0)

    waimai = list(read_source("waimai_10k"))
    out += _pick([r for r in waimai if r.meta["polarity"] == "0"], 350, rng)
    out += _pick([r for r in waimai if r.meta["polarity"] == "1"], 100, rng, enrich=0.0)

    shop = list(read_source("online_shopping_10_cats"))
    shop_neg = [r for r in shop if r.meta["polarity"] == "0" and r.meta["cat"] != "书籍"]
    out += _pick(shop_neg, 500, rng)
    out += _pick([r for r in shop if r.meta["polarity"] == "1"], 100, rng, enrich=0.0)

    htl = list(read_source("chnsenticorp_htl"))
    out += _pick([r for r in htl if r.meta["polarity"] == "0"], 300, rng)
    out += _pick([r for r in htl if r.meta["polarity"] == "1"], 50, rng, enrich=0.0)

    osm = [
        r for r in read_source("osmdataset2022") if r.meta["label"] in {"1", "2"} and _score(r.text, SERVICE_WORDS) > 0
    ]
    out += _pick(osm, 100, rng)

    asap = list(read_source("asap"))
    out += _pick(asap, 100, rng, enrich=0.0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("work/batches"))
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--seed", type=int, default=13)
    args = ap.parse_args()
    rows = select(args.seed)
    rng = random.Random(args.seed + 1)
    rng.shuffle(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    for b in range(args.batches):
        part = rows[b :: args.batches]
        with open(args.out / f"batch_{b:02d}.jsonl", "w", encoding="utf-8") as f:
            for r in part:
                f.write(json.dumps({"id": r.id, "source": r.source, "text": r.text}, ensure_ascii=False) + "\n")
    print(f"{len(rows)} candidates in {args.batches} batches under {args.out}")


if __name__ == "__main__":
    main()
