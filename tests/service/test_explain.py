"""Occlusion explanations (``service.explain``) on a scorer whose answer is known in advance.

The API and console tests run the real (tiny, random) model, whose spans are often empty; here
a deterministic scorer, angry exactly when 垃圾 is in the text, pins what the spans must be.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from service.explain import MAX_UNITS, occlusion_explanation, occlusion_forwards


@dataclass
class _Scored:
    anger_score: float


class _TrashScorer:
    """anger 0.9 when the text says 垃圾, else 0.1; counts the texts it scored."""

    def __init__(self) -> None:
        self.seen = 0

    def predict(self, texts: list[str], *, batch_size: int = 64) -> list[_Scored]:
        self.seen += len(texts)
        return [_Scored(0.9 if "垃圾" in t else 0.1) for t in texts]


TEXT = "你們的服務是垃圾嗎"  # 垃圾 at characters 6-7


def test_single_character_occlusion_finds_exactly_the_word() -> None:
    scorer = _TrashScorer()
    exp = occlusion_explanation(scorer, TEXT, window=1)
    assert exp.base_score == pytest.approx(0.9)
    assert [(s.text, s.start, s.end) for s in exp.spans] == [("垃圾", 6, 8)]
    assert exp.spans[0].weight == pytest.approx(0.8)
    assert [w.weight for w in exp.char_weights] == pytest.approx([0, 0, 0, 0, 0, 0, 0.8, 0.8, 0])
    assert scorer.seen == 1 + len(TEXT)  # the text, then each character left out once


def test_two_character_windows_weigh_the_word_highest() -> None:
    exp = occlusion_explanation(_TrashScorer(), TEXT, window=2)
    weights = [w.weight for w in exp.char_weights]
    assert weights[6] == weights[7] == pytest.approx(0.8) == max(weights)
    assert weights[:5] == pytest.approx([0, 0, 0, 0, 0])
    (span,) = exp.spans
    assert "垃圾" in span.text and TEXT[span.start : span.end] == span.text


def test_nothing_to_explain() -> None:
    calm = occlusion_explanation(_TrashScorer(), "請問什麼時候出貨", window=2)
    assert calm.spans == [] and calm.base_score == pytest.approx(0.1)
    empty = occlusion_explanation(_TrashScorer(), "   ")
    assert empty.spans == [] and empty.base_score is None


@pytest.mark.parametrize(
    ("text", "window"),
    [(TEXT, 2), (TEXT, 1), ("垃", 2), ("order 12345 還沒到", 2), ("慢" * (MAX_UNITS + 40), 2), ("   ", 2)],
)
def test_forwards_counted_before_running_are_the_texts_scored(text: str, window: int) -> None:
    """The bulk budget admits an explanation by this count, so it must be exactly what the explanation scores."""
    scorer = _TrashScorer()
    occlusion_explanation(scorer, text, window=window)
    assert occlusion_forwards(text, window=window) == scorer.seen
