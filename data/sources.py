"""Readers for the public Chinese text sets in ``../shared/data``.

The project never commits these texts: label files carry a stable id per
record and the text is joined back from the original file at load time. Every
reader yields ``SourceText`` rows whose ``id`` is stable across runs (a row or
line number within the named file, or the source's own id), and whose
``split`` keeps the source's own train/dev/test split where it has one.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: Where a checkout finds the shared data by default (overridable).
DEFAULT_SHARED_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def shared_data_dir() -> Path:
    """The shared data folder: ``$CALMFIRST_SHARED_DATA`` or ``../shared/data``."""
    env = os.environ.get("CALMFIRST_SHARED_DATA")
    return Path(env) if env else DEFAULT_SHARED_DIR


@dataclass(frozen=True)
class SourceText:
    id: str
    source: str
    text: str
    split: str
    meta: dict[str, str]


def hash_split(key: str, *, dev: float = 0.1, test: float = 0.1) -> str:
    """Deterministic split for sources without one (stable across machines)."""
    h = int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
    if h < test:
        return "test"
    if h < test + dev:
        return "dev"
    return "train"


def _clean(text: str) -> str:
    return text.replace("\ufeff", "").strip()


def stc3_turns(dialogue: dict) -> list[tuple[str, str]]:
    """One STC-3 dialogue's turns as ``(role, text)``: ``customer`` or ``agent``, utterances joined."""
    return [
        ("customer" if t["sender"] == "customer" else "agent", _clean(" ".join(u.strip() for u in t["utterances"])))
        for t in dialogue["turns"]
    ]


def read_stc3(root: Path) -> Iterator[SourceText]:
    """Customer turns of the STC-3 helpdesk dialogues; id ``<dialogue>-t<turn>``.

    All turns of one dialogue share a split so a conversation never straddles two.
    ``meta['context']`` holds, as JSON, the last customer and agent turns before a later turn
    (``model.context.previous_turns``); a first turn has none.
    """
    from model.context import previous_turns

    with open(root / "stc3_helpdesk" / "train_data_cn.json", encoding="utf-8") as f:
        dialogues = json.load(f)
    for dia in dialogues:
        split = hash_split(f"stc3:{dia['id']}")
        turns = stc3_turns(dia)
        for i, (role, text) in enumerate(turns):
            if role != "customer" or not text:
                continue
            meta = {"turn": str(i)}
            ctx = previous_turns(turns, i)
            if ctx:
                meta["context"] = json.dumps(ctx, ensure_ascii=False)
            yield SourceText(f"{dia['id']}-t{i}", "stc3", text, split, meta)


def read_smp2020(root: Path) -> Iterator[SourceText]:
    """SMP2020-EWECT: train0/dev0 keep their split, the labelled eval sets are test.

    ids: ``train0:<row>``, ``dev0:<row>`` (0-based data rows), ``usual_eval:<id>``,
    ``virus_eval:<id>``, ``virus_train:<id>``.
    """
    base = root / "smp2020_ewect"
    for name, split in (("train0", "train"), ("dev0", "dev")):
        with open(base / f"{name}.csv", encoding="utf-8", newline="") as f:
            for row_no, row in enumerate(csv.DictReader(f)):
                text = _clean(row["content"])
                if text:
                    label = "neutral" if row["labels"] == "neural" else row["labels"]
                    yield SourceText(
                        f"{name}:{row_no}",
                        "smp2020_ewect",
                        text,
                        split,
                        {"emotion": label, "type": row.get("type", "")},
                    )
    for name, split in (
        ("usual_eval_labeled", "test"),
        ("virus_eval_labeled", "test"),
        ("virus_train", "train"),
    ):
        with open(base / f"{name}.txt", encoding="utf-8") as f:
            rows = json.load(f)
        key = name.replace("_labeled", "")
        for row in rows:
            text = _clean(row["content"])
            if text:
                yield SourceText(f"{key}:{row['id']}", "smp2020_ewect", text, split, {"emotion": row["label"]})


def _read_polarity_csv(path: Path, source: str, prefix: str) -> Iterator[SourceText]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        for row_no, row in enumerate(csv.DictReader(f)):
            text = _clean(row.get("review") or "")
            if not text:
                continue
            rid = f"{prefix}:{row_no}"
            meta = {"polarity": row["label"]}
            if "cat" in row:
                meta["cat"] = row["cat"]
            yield SourceText(rid, source, text, hash_split(rid), meta)


def read_waimai(root: Path) -> Iterator[SourceText]:
    yield from _read_polarity_csv(root / "chinesenlpcorpus" / "waimai_10k.csv", "waimai_10k", "waimai")


def read_online_shopping(root: Path) -> Iterator[SourceText]:
    yield from _read_polarity_csv(
        root / "chinesenlpcorpus" / "online_shopping_10_cats.csv", "online_shopping_10_cats", "shopping"
    )


def read_hotel(root: Path) -> Iterator[SourceText]:
    yield from _read_polarity_csv(root / "chinesenlpcorpus" / "ChnSentiCorp_htl_all.csv", "chnsenticorp_htl", "htl")


def read_osm(root: Path) -> Iterator[SourceText]:
    """osmdataset2022; its word segmentation spaces are removed. ``evl`` is test."""
    base = root / "osmdataset2022"
    for name in ("train", "evl"):
        reviews = (base / f"{name}_review.txt").read_text(encoding="utf-8").splitlines()
        labels = (base / f"{name}_label.txt").read_text(encoding="utf-8").splitlines()
        for line_no, (review, label) in enumerate(zip(reviews, labels, strict=False)):
            text = _clean(review.replace(" ", ""))
            if not text:
                continue
            rid = f"{name}:{line_no}"
            split = "test" if name == "evl" else ("dev" if hash_split(rid) == "dev" else "train")
            yield SourceText(rid, "osmdataset2022", text, split, {"label": label.strip()})


def read_asap(root: Path) -> Iterator[SourceText]:
    base = root / "asap_samples"
    for split in ("train", "dev", "test"):
        with open(base / f"{split}_sample.csv", encoding="utf-8-sig", newline="") as f:
            for row in csv.DictReader(f):
                text = _clean(row["reviewbody"])
                if text:
                    yield SourceText(f"{split}:{row['index']}", "asap", text, split, {"star": row["star"]})


# --- Real Traditional-Chinese text from Taiwan and Hong Kong (labels v1.2) -------------------
# ids are ``<prefix>:<0-based data row>`` unless the source has its own stable id. These sources
# have no split of their own: the loader assigns one from the normalised text (data.splits), so
# the same text can never sit in two splits.

#: source -> region (``tw``, ``hk``); every other shared source is ``cn``
REGIONS: dict[str, str] = {
    "tw_hospital_reviews": "tw",
    "tw_taipei_restaurant_reviews": "tw",
    "tw_venue_reviews": "tw",
    "tw_restaurant_chain_reviews": "tw",
    "tw_icook_app_reviews": "tw",
    "hk_bank_app_reviews": "hk",
    "hk_openrice_senti": "hk",
    "hk_cantonese_forum_emotion": "hk",
}


def region_of(source: str) -> str:
    """``tw``, ``hk`` or ``cn`` for a shared source (the written set carries its own region)."""
    return REGIONS.get(source, "cn")


def known_region(source: str) -> str | None:
    """The region of a shared source, None for any other (a user's own file: its region is not known, and calling
    its Traditional rows mainland would put them in the wrong breakdown row)."""
    return region_of(source) if source in READERS else None


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        yield from enumerate(csv.DictReader(f))


def read_tw_hospital(root: Path) -> Iterator[SourceText]:
    """Google Maps reviews of Taiwanese hospitals; ``hosp:<row>``. The hospital's public reply,
    where there is one, is in ``meta['reply']`` (a real organisation-to-customer turn)."""
    for row_no, row in _csv_rows(root / "tw_hospital_reviews" / "hospital_reviews.csv"):
        text = _clean(row.get("review_text") or "")
        if text:
            rid = f"hosp:{row_no}"
            meta = {"star": row["rating"], "reply": _clean(row.get("response_text") or "")}
            yield SourceText(rid, "tw_hospital_reviews", text, hash_split(rid), meta)


def _star_reviews(
    path: Path, source: str, prefix: str, text_column: str, extra: tuple[str, ...] = ()
) -> Iterator[SourceText]:
    """Rows of a review CSV with a ``rating`` column; id ``<prefix>:<0-based data row>``."""
    for row_no, row in _csv_rows(path):
        text = _clean(row.get(text_column) or "")
        if text:
            rid = f"{prefix}:{row_no}"
            meta = {"star": row["rating"], **{k: row.get(k, "") for k in extra}}
            yield SourceText(rid, source, text, hash_split(rid), meta)


def read_tw_taipei_restaurant(root: Path) -> Iterator[SourceText]:
    path = root / "tw_taipei_restaurant_reviews" / "taipei_restaurant_reviews.csv"
    yield from _star_reviews(path, "tw_taipei_restaurant_reviews", "tpe", "comment_text", ("service_kw_hit",))


def read_tw_venue(root: Path) -> Iterator[SourceText]:
    yield from _star_reviews(root / "tw_venue_reviews" / "venue_reviews.csv", "tw_venue_reviews", "venue", "text")


def read_tw_restaurant_chain(root: Path) -> Iterator[SourceText]:
    """Reviews of a Taipei restaurant group; ``chain:<the review's own id>``; reply in meta."""
    with open(root / "tw_restaurant_chain_reviews" / "reviews.json", encoding="utf-8") as f:
        rows = json.load(f)
    for row in rows:
        text = _clean(row.get("content") or "")
        if text:
            rid = f"chain:{row['id']}"
            meta = {"star": str(row.get("rating", "")), "reply": _clean(row.get("replyContent") or "")}
            yield SourceText(rid, "tw_restaurant_chain_reviews", text, hash_split(rid), meta)


def read_tw_icook(root: Path) -> Iterator[SourceText]:
    path = root / "tw_icook_app_reviews" / "icook_reviews.csv"
    yield from _star_reviews(path, "tw_icook_app_reviews", "icook", "review_text")


def read_hk_bank(root: Path) -> Iterator[SourceText]:
    """Hong Kong virtual-bank app reviews; ``hkbank:<review_id>``; the title leads the text."""
    for _, row in _csv_rows(root / "hk_bank_app_reviews" / "hk_bank_reviews.csv"):
        title, content = _clean(row.get("title") or ""), _clean(row.get("content") or "")
        text = content if not title or title in content else f"{title}\n{content}"
        if text:
            rid = f"hkbank:{row['review_id']}"
            yield SourceText(rid, "hk_bank_app_reviews", text, hash_split(rid), {"star": row["rating"]})


def read_hk_openrice(root: Path) -> Iterator[SourceText]:
    """OpenRice reviews in written Cantonese; ``openrice:<test|valid>:<row>``."""
    for name in ("test", "valid"):
        with open(root / "hk_openrice_senti" / f"{name}.tsv", encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            for row_no, row in enumerate(reader):
                text = _clean(row.get("text_a") or "")
                if text:
                    rid = f"openrice:{name}:{row_no}"
                    yield SourceText(rid, "hk_openrice_senti", text, hash_split(rid), {"label": row["label"]})


def read_hk_forum(root: Path) -> Iterator[SourceText]:
    """Cantonese forum comments; ``hkforum:<index>``."""
    with open(root / "hk_cantonese_forum_emotion" / "training_data.json", encoding="utf-8") as f:
        rows = json.load(f)
    for i, row in enumerate(rows):
        text = _clean(row.get("text") or "")
        if text:
            rid = f"hkforum:{i}"
            meta = {"sentiment": str(row.get("sentiment", "")), "anger": str(row.get("anger", ""))}
            yield SourceText(rid, "hk_cantonese_forum_emotion", text, hash_split(rid), meta)


def read_stc3_dialogues(root: Path) -> list[dict]:
    """The STC-3 dialogues as stored (turns with sender and utterances, 19 annotators' quality)."""
    with open(root / "stc3_helpdesk" / "train_data_cn.json", encoding="utf-8") as f:
        return json.load(f)


#: source name -> reader
READERS: dict[str, Callable[[Path], Iterator[SourceText]]] = {
    "stc3": read_stc3,
    "smp2020_ewect": read_smp2020,
    "waimai_10k": read_waimai,
    "online_shopping_10_cats": read_online_shopping,
    "chnsenticorp_htl": read_hotel,
    "osmdataset2022": read_osm,
    "asap": read_asap,
    "tw_hospital_reviews": read_tw_hospital,
    "tw_taipei_restaurant_reviews": read_tw_taipei_restaurant,
    "tw_venue_reviews": read_tw_venue,
    "tw_restaurant_chain_reviews": read_tw_restaurant_chain,
    "tw_icook_app_reviews": read_tw_icook,
    "hk_bank_app_reviews": read_hk_bank,
    "hk_openrice_senti": read_hk_openrice,
    "hk_cantonese_forum_emotion": read_hk_forum,
}


def read_source(source: str, root: Path | None = None) -> Iterator[SourceText]:
    """Yield every text of one shared source; raises a clear error when absent."""
    if source not in READERS:
        raise KeyError(f"unknown source {source!r}; known: {sorted(READERS)}")
    root = root or shared_data_dir()
    if not root.is_dir():
        raise FileNotFoundError(
            f"shared data folder not found: {root} (set CALMFIRST_SHARED_DATA or place ../shared/data)"
        )
    yield from READERS[source](root)


def customer_turns_around(turns: list[tuple[str, str]]) -> list[dict[str, str]]:
    """For each agent turn of a dialogue, in order: the customer turns just before and just after it, each as
    the JSON of ``[text, context]`` (``context``: ``model.context.previous_turns`` of that turn, which a model
    that reads context takes with it, as a conversation gives it): the agent-turn model reads their anger.
    Absent turns are left out; an empty turn is neither a customer turn nor an agent turn to read."""
    from model.context import customer_turns_around as around
    from model.context import previous_turns

    customers = [j for j, (role, text) in enumerate(turns) if role == "customer" and text]
    out: list[dict[str, str]] = []
    for before, after in around([role == "customer" for role, text in turns if text]):
        found: dict[str, str] = {}
        for key, k in (("customer_before", before), ("customer_after", after)):
            if k is not None:
                j = customers[k]
                found[key] = json.dumps([turns[j][1], previous_turns(turns, j)], ensure_ascii=False)
        out.append(found)
    return out


def read_agent_turns(root: Path) -> Iterator[SourceText]:
    """Real organisation-to-customer turns, ids as in ``data/agent_steps``: STC-3 helpdesk
    replies ``<dialogue>-t<turn>`` (split by dialogue, like the customer turns), and the public
    replies of the Taiwan hospital and restaurant sources ``<review id>:reply``. ``meta['context']``
    holds the customer's turn just before. A source whose folder is absent yields nothing (the
    loader then reports every id it could not find)."""
    dialogues = read_stc3_dialogues(root) if (root / "stc3_helpdesk").is_dir() else []
    for dia in dialogues:
        split = hash_split(f"stc3:{dia['id']}")
        turns = stc3_turns(dia)
        around = iter(customer_turns_around(turns))
        last = ""
        for i, (role, text) in enumerate(turns):
            if role == "customer":
                last = text
            elif text:
                meta = {"context": last, **next(around)}
                yield SourceText(f"{dia['id']}-t{i}", "stc3", text, split, meta)
    readers = (("tw_hospital_reviews", read_tw_hospital), ("tw_restaurant_chain_reviews", read_tw_restaurant_chain))
    for source, reader in readers:
        if not (root / source).is_dir():
            continue
        for row in reader(root):
            if row.meta.get("reply"):
                rid = f"{row.id}:reply"
                yield SourceText(rid, source, row.meta["reply"], hash_split(rid), {"context": row.text})
