"""Weak anger signals from real text: named as weak, down-weighted, never mixed with annotations.

Each weak row says only "anger_level > k" is true or false for one threshold k (the ordinal
head's k-th cumulative logit), which is all these signals honestly support:

* ``smp2020_ewect``: SMP2020-EWECT's usual training posts, labelled by its annotators with one
  emotion. ``angry`` -> level > 1 (angry or furious); ``neutral`` and ``happy`` -> not level > 1.
  Sad, fear and surprise are left out (they may be displeased).
* ``review_stars``: the Taiwan and Hong Kong reviews' own star ratings (OpenRice: smile/cry).
  1 star / cry -> level > 0 (some displeasure); 5 stars / smile -> not level > 1. Stars say nothing
  reliable about fury, so no row claims more.

Rows whose text (normalised) is annotated anywhere in the project's labels, in any split, are
left out, so a weak signal can never leak a dev or test text into training.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from data.sources import SourceText, read_source, shared_data_dir
from data.splits import text_key


@dataclass(frozen=True)
class WeakRow:
    id: str
    source: str
    text: str
    k: int
    y: int


@functools.cache
def _annotated(shared_dir: Path) -> tuple[set[tuple[str, str]], set[str]]:
    """(source, id) and normalised-text keys of every annotated record, in every split."""
    from data.loader import load_annotations

    recs = load_annotations(shared_dir=shared_dir, on_missing="skip")
    return {(r["source"], r["id"]) for r in recs}, {text_key(r["text"]) for r in recs}


def _ewect(root: Path) -> Iterator[tuple[SourceText, int, int]]:
    for row in read_source("smp2020_ewect", root):
        if not row.id.startswith("train0:"):
            continue
        emotion = row.meta.get("emotion")
        if emotion == "angry":
            yield row, 1, 1
        elif emotion in ("neutral", "happy"):
            yield row, 1, 0


STAR_SOURCES = (
    "tw_hospital_reviews",
    "tw_taipei_restaurant_reviews",
    "tw_venue_reviews",
    "tw_icook_app_reviews",
    "tw_restaurant_chain_reviews",
    "hk_bank_app_reviews",
    "hk_openrice_senti",
)


def _stars(root: Path) -> Iterator[tuple[SourceText, int, int]]:
    for source in STAR_SOURCES:
        for row in read_source(source, root):
            if not 2 <= len(row.text) <= 350:
                continue
            star = row.meta.get("star") or {"cry": "1", "smile": "5"}.get(row.meta.get("label", ""), "")
            if star == "1":
                yield row, 0, 1
            elif star == "5":
                yield row, 1, 0


WEAK_SOURCES = {"smp2020_ewect": _ewect, "review_stars": _stars}


def weak_rows(name: str, *, shared_dir: Path | None = None, limit: int | None = None, seed: int = 0) -> list[WeakRow]:
    """A seeded sample (``limit``, balanced between y=0 and y=1) of one weak source."""
    if name not in WEAK_SOURCES:
        raise KeyError(f"unknown weak source {name!r}; known: {sorted(WEAK_SOURCES)}")
    root = shared_dir or shared_data_dir()
    ids, keys = _annotated(root)
    pos: list[WeakRow] = []
    neg: list[WeakRow] = []
    for row, k, y in WEAK_SOURCES[name](root):
        if (row.source, row.id) in ids or text_key(row.text) in keys:
            continue
        (pos if y else neg).append(WeakRow(row.id, row.source, row.text, k, y))
    rng = random.Random(seed)
    rng.shuffle(pos)
    rng.shuffle(neg)
    if limit:
        pos, neg = pos[: limit // 2], neg[: limit - limit // 2]
    return pos + neg
