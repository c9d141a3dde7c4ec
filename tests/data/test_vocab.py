"""The one vocabulary: codes match the public contract and serialise as plain strings."""

from __future__ import annotations

import csv
import io
import json

from data import vocab
from data.schema import ANGER_LABELS, COMPLAINT_TYPES
from data.vocab import AngerLabel, Flag, Mistake, Step


def test_vocab_matches_the_contract() -> None:
    assert ANGER_LABELS == ("calm", "displeased", "angry", "furious")
    assert [a.level for a in AngerLabel] == [0, 1, 2, 3]
    assert COMPLAINT_TYPES[-1] == "none" and len(COMPLAINT_TYPES) == 10
    assert vocab.values(Flag) == ("calm_first", "ready_for_solutions")
    assert vocab.values(Step)[:8] == (
        "listen_acknowledge", "thank", "apologize", "commit_action", "ask_details", "offer_options",
        "promise_callback", "confirm_satisfaction",
    )  # fmt: skip
    assert set(vocab.values(Mistake)) == {
        "argued", "blamed_customer", "last_word", "solution_while_furious", "interrogated",
    }  # fmt: skip
    assert Mistake.SOLUTION_WHILE_FURIOUS not in vocab.TURN_MISTAKES


def test_vocab_members_are_their_strings() -> None:
    assert Flag.CALM_FIRST == "calm_first" and f"{Flag.CALM_FIRST}" == "calm_first"
    assert json.dumps({Step.THANK: [Mistake.ARGUED]}) == '{"thank": ["argued"]}'
    buf = io.StringIO()
    csv.writer(buf).writerow([Flag.READY_FOR_SOLUTIONS])
    assert buf.getvalue().strip() == "ready_for_solutions"
    assert all(type(x) is str for x in ANGER_LABELS + COMPLAINT_TYPES)
