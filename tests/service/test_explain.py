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


def test_an_explanation_with_redact_shows_no_fragment_of_personal_data(tiny_model) -> None:  # type: ignore[no-untyped-def]
    """redact=true with explain=true returned spans such as "-345" of a masked phone number, at offsets of the
    unmasked text (found by an outside walkthrough). Every span is now a piece of the masked text, at its offsets."""
    import re

    from service.analyzer import Analyzer, ConversationAnalyzer
    from service.routing.agent_steps import AgentStepDetector
    from service.routing.conversation import Turn

    texts = ["對,就是0912-345-678,快處理!", "卡號4111111111111111被你們亂扣款,太扯了!"]
    results = Analyzer(tiny_model).analyze(texts, explain=True, redact=True)
    for r in results:
        assert r.text is not None and "[" in r.text and r.explanation is not None
        for span in r.explanation.spans:
            assert span.text == r.text[span.start : span.end]
            assert not re.search(r"\d{3}", span.text), span
        for w in r.explanation.char_weights or []:
            assert 0 <= w.start < w.end <= len(r.text)
    # whole chats too: the explained last customer turn
    conv = ConversationAnalyzer(Analyzer(tiny_model), AgentStepDetector.from_data())
    out = conv.analyze([Turn(role="customer", text=texts[0])], explain=True, redact=True)
    explained = out.turns[0].result.explanation  # type: ignore[union-attr]
    assert explained is not None and all(s.text == out.turns[0].text[s.start : s.end] for s in explained.spans)
    assert not any(re.search(r"\d{3}", s.text) for s in explained.spans)
    # without redact the explanation is the original's, unchanged
    plain = Analyzer(tiny_model).analyze(texts[:1], explain=True)[0]
    assert all(s.text == texts[0][s.start : s.end] for s in plain.explanation.spans)  # type: ignore[union-attr]


def test_spans_move_onto_the_masked_text_and_widen_over_a_mask() -> None:
    from service.explain import on_masked_text
    from service.redact import redact
    from service.results import CharWeight, Explanation, Span

    original = "對,就是0912-345-678,快處理!"
    masked = redact(original)
    assert masked == "對,就是[PHONE],快處理!"
    explanation = Explanation(
        base_score=0.5,
        spans=[Span(start=8, end=12, text="-345", weight=0.3), Span(start=17, end=20, text="快處理", weight=0.2)],
        char_weights=[CharWeight(start=i, end=i + 1, weight=0.01 * i) for i in range(len(original))],
    )
    moved = on_masked_text(explanation, original, masked)
    assert [(s.start, s.end, s.text, s.weight) for s in moved.spans] == [
        (4, 11, "[PHONE]", 0.3),
        (12, 15, "快處理", 0.2),
    ]
    weights = {(w.start, w.end): w.weight for w in moved.char_weights or []}
    assert weights[(4, 11)] == pytest.approx(0.15)  # the phone's characters: one weight on the token, the largest
    assert weights[(0, 1)] == 0.0 and weights[(12, 13)] == pytest.approx(0.17)


def test_a_text_longer_than_an_explanation_reads_says_where_it_stopped(tiny_model) -> None:  # type: ignore[no-untyped-def]
    """Only the first MAX_UNITS units are occluded; the answer did not say so (found by an outside walkthrough)."""
    from service.analyzer import Analyzer

    short = "你們這群騙子!"
    long = "你們這群騙子!" + "好" * (MAX_UNITS + 20) + "垃圾公司!"
    assert occlusion_explanation(tiny_model, short).explained_to is None
    cut = occlusion_explanation(tiny_model, long)
    assert cut.explained_to == MAX_UNITS and all(w.end <= MAX_UNITS for w in cut.char_weights or [])
    body = Analyzer(tiny_model).analyze([short], explain=True)[0].model_dump(mode="json")
    assert "explained_to" not in body["explanation"]  # additive: absent unless the text was cut
