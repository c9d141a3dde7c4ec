"""The text normaliser: properties over any string (hypothesis), and the tokenizer never sees a bad one."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from service.redact import redact
from service.text import REPLACEMENT, has_surrogate, normalize_text, printable, text_problem

#: Any code point, surrogates and controls included (what a JSON string can carry).
ANY_TEXT = st.text(st.characters(categories=["L", "M", "N", "P", "S", "Z", "C"]), max_size=300)
HOSTILE_CHARS = st.sampled_from(["\ud800", "\udfff", "\udc80", "\x00", "\x1b", "\x7f", "\x85", "\x9f", "\x0b", "\x0c"])
MIXED_TEXT = st.lists(st.one_of(HOSTILE_CHARS, st.text(max_size=5)), max_size=60).map("".join)

PROFILE = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@seed(20261124)
@PROFILE
@given(st.one_of(ANY_TEXT, MIXED_TEXT))
def test_text_normalised_is_clean_same_length_idempotent(text: str) -> None:
    out = normalize_text(text)
    assert len(out) == len(text)
    assert text_problem(out) is None and not has_surrogate(out)
    out.encode("utf-8")  # never raises
    assert normalize_text(out) == out
    for a, b in zip(text, out, strict=True):
        assert a == b or b in {REPLACEMENT, " "}


@seed(20261124)
@PROFILE
@given(st.text(st.characters(exclude_categories=["Cc", "Cs"]), max_size=200))
def test_text_clean_text_is_untouched(text: str) -> None:
    assert normalize_text(text) is text or normalize_text(text) == text
    assert text_problem(text) is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("\ud800abc", "lone surrogate U+D800 at position 0"),
        ("ab\udc00", "lone surrogate U+DC00 at position 2"),
        ("a\x00b", "control character U+0000 at position 1"),
        ("\x1b[31m", "control character U+001B at position 0"),
        ("ok\x85", "control character U+0085 at position 2"),
        ("tab\tnewline\ncr\r", None),
        ("😀 客戶", None),
    ],
)
def test_text_problem_names_character_and_position(text: str, problem: str | None) -> None:
    found = text_problem(text)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_text_printable_escapes_only_surrogates() -> None:
    assert printable("a\ud800b") == "a\\ud800b"
    assert printable("客戶😀") == "客戶😀"
    printable("x\udfff").encode("utf-8")


@seed(20261124)
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.one_of(ANY_TEXT, MIXED_TEXT), min_size=1, max_size=4))
def test_text_analyzer_scores_any_string(tiny_analyzer, texts: list[str]) -> None:  # type: ignore[no-untyped-def]
    """What a JSONL file may hold reaches the tokenizer only normalised: scoring never crashes."""
    texts = [t if t.strip() else t + "x" for t in texts]
    results = tiny_analyzer.analyze(texts, redact=True)
    assert len(results) == len(texts)
    for r, t in zip(results, texts, strict=True):
        r.to_json().encode("utf-8")
        assert r.text == redact(normalize_text(t))
