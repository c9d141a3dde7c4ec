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


def read_stc3(root: Path) -> Iterator[SourceText]:
    """Customer turns of the STC-3 helpdesk dialogues; id ``<dialogue>-t<turn>``.

    All turns of one dialogue share a split so a conversation never straddles two.
    """
    with open(root / "stc3_helpdesk" / "train_data_cn.json", encoding="utf-8") as f:
        dialogues = json.load(f)
    for dia in dialogues:
        split = hash_split(f"stc3:{dia['id']}")
        for i, turn in enumerate(dia["turns"]):
            if turn["sender"] != "customer":
                continue
            text = _clean(" ".join(u.strip() for u in turn["utterances"]))
            if text:
                yield SourceText(f"{dia['id']}-t{i}", "stc3", text, split, {"turn": str(i)})


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


#: source name -> reader
READERS: dict[str, Callable[[Path], Iterator[SourceText]]] = {
    "stc3": read_stc3,
    "smp2020_ewect": read_smp2020,
    "waimai_10k": read_waimai,
    "online_shopping_10_cats": read_online_shopping,
    "chnsenticorp_htl": read_hotel,
    "osmdataset2022": read_osm,
    "asap": read_asap,
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
