"""Which phrases drove the anger score: occlusion over the message's characters."""

from __future__ import annotations

import re
from typing import Any

from service.results import CharWeight, Explanation, Span

#: Units to occlude: each CJK character alone, Latin words and numbers whole.
_UNIT = re.compile(r"[A-Za-z0-9]+|\S")


def _units(text: str) -> list[tuple[int, int]]:
    """Character spans to occlude."""
    return [(m.start(), m.end()) for m in _UNIT.finditer(text)]


#: At most this many units are occluded (a longer text's tail is not explained).
MAX_UNITS = 160
#: Units removed together.
WINDOW = 2


def _plan(text: str, window: int, max_units: int) -> tuple[list[tuple[int, int]], int, list[int]]:
    """The units occluded, the window used, and where each occluded variant starts (no units: nothing to do)."""
    units = _units(text)[:max_units]
    window = max(1, min(window, len(units)))
    return units, window, list(range(0, len(units) - window + 1)) if units else []


def occlusion_forwards(text: str, *, window: int = WINDOW, max_units: int = MAX_UNITS) -> int:
    """Texts one explanation scores (the text and each occluded variant): what it costs, before running it."""
    units, _, starts = _plan(text, window, max_units)
    return 1 + len(starts) if units else 0


def occlusion_explanation(
    model: Any, text: str, *, window: int = WINDOW, max_units: int = MAX_UNITS, batch_size: int = 64, top_k: int = 6
) -> Explanation:
    """Which phrases drove the anger score: remove each window of characters and measure the drop.

    Occlusion (Zeiler & Fergus 2014) is model-agnostic and its numbers mean something a QA
    lead can check: "without these characters the anger score falls by w". Windows of two
    characters catch two-character words (垃圾, 騙子) that single-character removal misses.
    Each character's weight is the mean drop of the windows that cover it.
    """
    units, window, starts = _plan(text, window, max_units)
    if not units:
        return Explanation(base_score=None, spans=[])
    variants = [text[: units[i][0]] + text[units[i + window - 1][1] :] for i in starts]
    preds = model.predict([text, *variants], batch_size=batch_size)
    base = float(preds[0].anger_score)
    drops = [base - float(p.anger_score) for p in preds[1:]]
    weight = [0.0] * len(units)
    count = [0] * len(units)
    for i, d in zip(starts, drops, strict=True):
        for j in range(i, i + window):
            weight[j] += d
            count[j] += 1
    weight = [w / c if c else 0.0 for w, c in zip(weight, count, strict=True)]
    top = max(weight) if weight else 0.0
    cutoff = max(0.01, 0.3 * top)
    spans: list[Span] = []
    j = 0
    while j < len(units):
        if weight[j] >= cutoff:
            k = j
            while k + 1 < len(units) and weight[k + 1] >= cutoff:
                k += 1
            start, end = units[j][0], units[k][1]
            spans.append(Span(start=start, end=end, text=text[start:end], weight=round(max(weight[j : k + 1]), 4)))
            j = k + 1
        else:
            j += 1
    spans.sort(key=lambda s: -s.weight)
    return Explanation(
        window=window,
        base_score=round(base, 4),
        spans=sorted(spans[:top_k], key=lambda s: s.start),
        char_weights=[CharWeight(start=u[0], end=u[1], weight=round(w, 4)) for u, w in zip(units, weight, strict=True)],
        explained_to=units[-1][1] if len(_units(text)) > len(units) else None,
    )


def on_masked_text(explanation: Explanation, original: str, masked: str) -> Explanation:
    """The explanation of ``original`` told on ``masked`` (the same text after ``service.redact``), for an answer
    with ``redact=true``: every span and character weight is moved onto the masked text, and one that touches
    masked personal data widens to the whole mask token. A span's text is then always a piece of the masked text,
    so no fragment of a phone or card number leaves through the explanation (it did: ``-345``), and its offsets
    slice the text the answer returns. The weights stay the ones the model gave the original."""
    from difflib import SequenceMatcher

    n = len(original)
    lo, hi = [0] * (n + 1), [0] * (n + 1)  # where an original position lands as a range's start / end
    lo[n] = len(masked)
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, original, masked, autojunk=False).get_opcodes():
        for i in range(i1, i2):
            lo[i] = j1 + (i - i1) if tag == "equal" else j1
        for i in range(i1 + 1, i2 + 1):
            hi[i] = j1 + (i - i1) if tag == "equal" else j2

    def moved(start: int, end: int) -> tuple[int, int]:
        return lo[min(start, n)], max(lo[min(start, n)], hi[min(end, n)])

    spans = []
    for s in explanation.spans:
        a, b = moved(s.start, s.end)
        spans.append(Span(start=a, end=b, text=masked[a:b], weight=s.weight))
    weights = None
    if explanation.char_weights is not None:
        merged: dict[tuple[int, int], float] = {}
        for w in explanation.char_weights:
            key = moved(w.start, w.end)
            merged[key] = max(merged.get(key, w.weight), w.weight)
        weights = [CharWeight(start=a, end=b, weight=v) for (a, b), v in sorted(merged.items())]
    update: dict[str, Any] = {"spans": spans, "char_weights": weights}
    if explanation.explained_to is not None:
        update["explained_to"] = hi[min(explanation.explained_to, n)]
    return explanation.model_copy(update=update)
