"""The conversation-level agreement check: the same conversation code on the models' reads and on people's labels."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from data.vocab import Role
from service.analyzer import Analyzer, ConversationAnalyzer
from service.qa.chat_agreement import GoldDetector, GoldModel, gold_prediction, labelled_dialogues, run


def _dia(did: str, *turns: tuple[str, str]) -> dict[str, Any]:
    return {"id": did, "turns": [{"sender": s, "utterances": [u]} for s, u in turns]}


def _cust(level: int, ctype: str = "billing", threat: bool = False, split: str = "test") -> dict[str, Any]:
    return {"anger_level": level, "complaint_type": ctype, "types": [ctype], "threat": threat, "split": split}


DIALOGUES = [
    _dia(
        "10", ("customer", "帳單多收了三百元"), ("helpdesk", "不好意思，我幫您查一下"), ("customer", "你們到底在搞什麼")
    ),
    _dia("11", ("customer", "請問營業時間"), ("helpdesk", "早上九點到晚上九點")),
    _dia("12", ("customer", "網速很慢"), ("helpdesk", ""), ("customer", "還是很慢")),
    _dia("13", ("customer", "我要退款"), ("helpdesk", "好的")),
]
CUSTOMER = {
    "10-t0": _cust(1),
    "10-t2": _cust(3),
    "11-t0": _cust(0, "none"),
    "12-t0": _cust(1, "service"),  # 12-t2 is not labelled: dialogue 12 is left out of every measure
    "13-t0": _cust(1, "refund", split="dev"),
}
AGENT = {
    "10-t1": {"steps": ["apologize", "ask_details"], "mistakes": [], "split": "test"},
    # 11-t1 is not labelled: dialogue 11 counts only for the measures that do not read agent turns
}


def test_labelled_dialogues_keep_turn_ids_skip_empty_turns_and_take_the_split() -> None:
    out = {d.id: d for d in labelled_dialogues(DIALOGUES, CUSTOMER, AGENT)}
    assert set(out) == {"10", "11", "12", "13"}
    assert [t.role for t in out["12"].turns] == [Role.CUSTOMER, Role.CUSTOMER]  # the empty reply is gone
    assert out["12"].labels == [CUSTOMER["12-t0"], None] and not out["12"].customers_labelled
    assert out["10"].all_labelled and out["11"].customers_labelled and not out["11"].all_labelled
    assert out["13"].split == "dev" and out["10"].customer_turns == 2


def test_gold_prediction_is_certain_of_the_label() -> None:
    p = gold_prediction(
        _cust(2, "refund", threat=True) | {"types": ["refund", "billing"]}, ["none", "refund", "billing"]
    )
    assert (p.anger_level, p.anger_label, p.calm_first_prob, p.threat) == (2, "angry", 1.0, True)
    assert p.types == ["refund", "billing"] and p.type_scores == {"none": 0.0, "refund": 1.0, "billing": 0.0}
    assert gold_prediction(_cust(0, "none") | {"types": ["none", "billing"]}, ["none"]).types == ["none"]


def test_agreement_counts_each_disagreement_where_the_models_read_differently(tiny_model) -> None:  # type: ignore[no-untyped-def]
    dialogues = [d for d in labelled_dialogues(DIALOGUES, CUSTOMER, AGENT) if d.split == "test"]
    # "models" that read every turn as people did except dialogue 10's last turn (furious read as displeased)
    misread = copy.deepcopy(dialogues)
    misread[0].labels[2] = _cust(1)
    models = ConversationAnalyzer(Analyzer(GoldModel(tiny_model.config, misread)), GoldDetector(misread))
    report = run(models, tiny_model.config, dialogues)

    assert report["dialogues"] == {
        "customer_turns_labelled": 2,
        "every_turn_labelled": 1,
        "two_or_more_customer_turns": 1,
    }
    # people: [1, 3] rising; models: [1, 1] steady. Dialogue 11 ([0]) is steady for both
    assert report["anger_trend"] == {"n": 2, "agreement": 0.5, "ci95": [0.0, 1.0]}
    assert report["anger_trend_2plus_turns"]["agreement"] == 0.0
    assert report["flag"]["agreement"] == 0.5  # calm_first (level 3) against ready_for_solutions (level 1)
    assert report["customer_turn_level"]["n"] == 3 and report["customer_turn_level"]["agreement"] == pytest.approx(
        2 / 3, abs=1e-3
    )
    # the next step reads agent turns: only dialogue 10, where every turn is labelled
    assert report["next_step"]["n"] == 1 and report["steps_taken"] == {"n": 1, "agreement": 1.0, "ci95": [1.0, 1.0]}

    # the one misread is a customer turn: with the models' agent reads alone the situation agrees, with their
    # customer reads alone it does not
    attribution = report["attribution"]
    assert attribution["models_agent_reads_only"]["situation"]["agreement"] == 1.0
    assert attribution["models_customer_reads_only"]["situation"] == {"n": 1, "agreement": 0.0, "ci95": [0.0, 0.0]}

    same = run(
        ConversationAnalyzer(Analyzer(GoldModel(tiny_model.config, dialogues)), GoldDetector(dialogues)),
        tiny_model.config,
        dialogues,
    )
    assert all(v["agreement"] == 1.0 for k, v in same.items() if k not in ("dialogues", "attribution"))
