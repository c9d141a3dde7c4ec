"""Train/dev/test assignment: one rule, stored in every label record.

Why stored: the split depends on the text (duplicates must share a split), and a fresh
machine without ``../shared`` must still know every record's split (``data-stats``, the card).
``python -m data.tools.batch merge`` writes it after each merge (``splits`` alone recomputes it); a record
without one (a label file edited by hand) is split by the same rule at load time, with a warning.

The rule:
* sources with a split of their own keep it (SMP2020 eval sets are test, osm ``evl`` is test,
  ASAP's sample files); STC-3 splits by dialogue, so a conversation never straddles two splits;
* every other record is split by a hash of its *normalised* text (whitespace and punctuation
  removed, full-width folded, lower case), so the same text lands in the same split wherever it
  occurs; records from Taiwan and Hong Kong (real or written: the fractions are per region) put more in
  dev and test (0.15 / 0.20) because their test split must hold at least 400 records;
* where normalised duplicates still disagree (an STC-3 turn equal to a written message, say),
  every copy takes the split of the copy whose (source, id) sorts first; after a merge, a record that
  already has a stored split keeps it and decides its duplicates' (``assign(stored=...)``).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from typing import Any

from data.sources import hash_split

#: sources whose own split (or dialogue) decides
OWN_SPLIT = frozenset({"stc3", "smp2020_ewect", "osmdataset2022", "asap"})
#: (dev, test) fractions by region for text-hashed records
FRACTIONS = {"tw": (0.15, 0.20), "hk": (0.15, 0.20), "cn": (0.1, 0.1)}
_PUNCT = re.compile(r"[\s\W_]+", re.UNICODE)


def normalise(text: str) -> str:
    """The comparison form of a text: NFKC, lower case, no whitespace or punctuation."""
    return _PUNCT.sub("", unicodedata.normalize("NFKC", text).lower())


def text_key(text: str) -> str:
    return hashlib.sha1(normalise(text).encode("utf-8")).hexdigest()


def base_split(rec: dict[str, Any], source_split: str) -> str:
    if rec["source"] in OWN_SPLIT:
        return source_split
    dev, test = FRACTIONS.get(rec.get("region", "cn"), FRACTIONS["cn"])
    return hash_split(text_key(rec["text"]), dev=dev, test=test)


def assign(
    records: Iterable[dict[str, Any]],
    source_splits: dict[tuple[str, str], str],
    stored: dict[tuple[str, str], str] | None = None,
) -> dict[tuple[str, str], str]:
    """(source, id) -> split for records that carry ``text``; duplicates share one split.

    ``stored``: splits already stored for labelled records, which then decide their duplicate clusters.
    Why: a new record whose (source, id) sorts first would otherwise carry its whole cluster with it, and a
    merge would move dev and test records that models were already measured on into train (round 5 of the
    agent turns did, for 4 turns). With ``stored`` a merge never moves a labelled record; a new duplicate of a
    held-out record joins it in dev or test."""
    recs = sorted(records, key=lambda r: (r["source"], r["id"]))
    first: dict[str, str] = {}
    for r in recs:
        if (kept := (stored or {}).get((r["source"], r["id"]))) is not None:
            first.setdefault(text_key(r["text"]), kept)
    out: dict[tuple[str, str], str] = {}
    for r in recs:
        key = text_key(r["text"])
        split = first.setdefault(key, base_split(r, source_splits.get((r["source"], r["id"]), "train")))
        out[(r["source"], r["id"])] = split
    return out
