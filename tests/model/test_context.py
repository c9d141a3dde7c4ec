"""The conversation helpers that both the training data and a live chat use."""

from __future__ import annotations

import json

from data.sources import customer_turns_around as stc3_turns_around
from model.context import customer_turns_around, previous_turns


def test_customer_turns_around_each_agent_turn() -> None:
    # roles: agent, customer, agent, agent, customer, customer, agent
    is_customer = [False, True, False, False, True, True, False]
    assert customer_turns_around(is_customer) == [(None, 0), (0, 1), (0, 1), (2, None)]


def test_customer_turns_around_edge_cases() -> None:
    assert customer_turns_around([]) == []
    assert customer_turns_around([True, True]) == []
    assert customer_turns_around([False, False]) == [(None, None), (None, None)]


def test_labelled_dialogue_turns_around_skip_empty_turns_and_carry_their_context() -> None:
    turns = [
        ("customer", "帳單多了三百"),
        ("helpdesk", "您好，請提供帳號"),
        ("customer", ""),  # an empty customer turn is not the turn after
        ("helpdesk", ""),  # an empty agent turn is not read at all
        ("helpdesk", "已經為您退回"),
        ("customer", "還是不對"),
    ]
    out = stc3_turns_around(turns)
    assert len(out) == 2  # the two agent turns with text
    before, after = json.loads(out[0]["customer_before"]), json.loads(out[0]["customer_after"])
    assert before == ["帳單多了三百", []]
    assert after == ["還是不對", [list(t) for t in previous_turns(turns, 5)]]
    assert after[1] == [["customer", "帳單多了三百"], ["helpdesk", "已經為您退回"]]
    assert out[1] == out[0]  # the same customer turns are around the second reply
