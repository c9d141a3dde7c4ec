"""Script detection (Traditional vs Simplified) and OpenCC conversion.

Detection counts characters that exist in only one script, using OpenCC's own
character tables, so it needs no model and works on a single short message.
"""

from __future__ import annotations

import functools
from pathlib import Path

HANT = "hant"
HANS = "hans"

# OpenCC lists these as Simplified, but Hong Kong Cantonese writes them in Traditional text
# (唔該晒, 等一吓): they must not vote for Simplified.
_CANTONESE_NEUTRAL = frozenset("晒吓")
# Written-Cantonese particles: Hong Kong customers type them with Traditional characters, so on a
# tie (a short message with no script-specific character) they decide for Traditional.
_CANTONESE_PARTICLES = frozenset("嘅咗喺哋嚟啲冇唔咩嘢畀")


@functools.cache
def _script_sets() -> tuple[frozenset[str], frozenset[str]]:
    import opencc

    base = Path(opencc.__file__).parent / "dictionary"

    def keys_that_change(name: str) -> set[str]:
        out: set[str] = set()
        for line in (base / name).read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            key, _, values = line.partition("\t")
            if key not in values.split():  # 了 -> 了|瞭 is valid in both scripts: not a marker
                out.add(key)
        return out

    trad = keys_that_change("TSCharacters.txt")
    simp = keys_that_change("STCharacters.txt")
    return frozenset(trad - simp), frozenset(simp - trad - _CANTONESE_NEUTRAL)


def script_counts(text: str) -> tuple[int, int]:
    """(Traditional-only characters, Simplified-only characters) in ``text``."""
    trad, simp = _script_sets()
    return sum(c in trad for c in text), sum(c in simp for c in text)


def telling_script(text: str) -> str | None:
    """``hant`` or ``hans`` when the text has a character that tells them apart, else None (an order number, 好)."""
    t, s = script_counts(text)
    if t > s:
        return HANT
    if s > t:
        return HANS
    if any(c in _CANTONESE_PARTICLES for c in text):
        return HANT
    return None


def detect_script(text: str, *, default: str = HANS) -> str:
    """``hant`` or ``hans``; ``default`` when the text has no telling character."""
    return telling_script(text) or default


@functools.cache
def _converter(config: str):  # type: ignore[no-untyped-def]
    import opencc

    return opencc.OpenCC(config)


def convert(text: str, config: str) -> str:
    """OpenCC conversion, e.g. ``s2twp`` (Taiwan phrases) or ``s2hk`` (Hong Kong)."""
    return str(_converter(config).convert(text))
