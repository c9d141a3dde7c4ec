"""The held-out agent-turn agreement study: build, adjudication batches, applying decisions, metrics."""

import json
from pathlib import Path

import pytest

from data.schema import LabelError
from data.tools import agreement_heldout as ah


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _turn(i: int, steps: list[str], mistakes: list[str], split: str = "test") -> dict:
    return {
        "id": f"{i}-t1",
        "source": "stc3",
        "script": "hans",
        "region": "cn",
        "selection": "random",
        "steps": steps,
        "mistakes": mistakes,
        "annotator": "a01",
        "schema": "1.2",
        "split": split,
    }


@pytest.fixture
def study(tmp_path: Path) -> dict[str, Path]:
    agent = _write(
        tmp_path / "agent_turns.jsonl",
        [
            _turn(1, ["thank"], []),
            _turn(2, ["answer_question"], ["argued"]),
            _turn(3, ["ask_details"], [], split="dev"),
            _turn(4, ["apologize"], ["last_word"]),
        ],
    )
    labels = tmp_path / "labels"
    labels.mkdir()
    _write(
        labels / "agragent-s2-001.jsonl",
        [
            {"id": "1-t1", "steps": ["thank"], "mistakes": [], "annotator": "a09"},
            {"id": "2-t1", "steps": ["answer_question"], "mistakes": [], "annotator": "a09"},
            {"id": "3-t1", "steps": ["ask_details"], "mistakes": ["interrogated"], "annotator": "a09"},
            {"id": "4-t1", "steps": ["apologize", "thank"], "mistakes": ["last_word"], "annotator": "a09"},
        ],
    )
    batches = tmp_path / "batches"
    batches.mkdir()
    _write(
        batches / "agragent-s2-001.jsonl",
        [
            {
                "id": f"{i}-t1",
                "source": "stc3",
                "script": "hans",
                "region": "cn",
                "text": f"reply {i}",
                "context": [{"role": "customer", "text": f"message {i}"}],
            }
            for i in range(1, 5)
        ],
    )
    return {
        "agent": agent,
        "labels": labels,
        "batches": batches,
        "agreement": tmp_path / "agreement.jsonl",
        "out": tmp_path / "adj",
    }


def test_study_builds_adjudicates_and_applies_the_decided_mistakes(study: dict[str, Path]) -> None:
    rows = ah.build(study["agent"], study["labels"], study["agreement"])
    assert [r["agreed_mistakes"] for r in rows] == [True, False, False, True]
    # agreed on mistakes: decided already, with the first annotator's labels (steps differ in 4-t1: not asked)
    assert rows[3]["adjudicated"] == {"steps": ["apologize"], "mistakes": ["last_word"]}

    study["out"].mkdir()
    paths = ah.to_adjudicate(study["out"], size=1, agreement=study["agreement"], batches=study["batches"])
    todo = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    assert [t["id"] for t in todo] == ["2-t1", "3-t1"]
    assert todo[0]["text"] == "reply 2" and todo[0]["context"][0]["text"] == "message 2"
    # the adjudicator sees the two mistake sets unnamed (no annotator ids, no steps)
    assert sorted(map(tuple, (todo[0]["label_1"]["mistakes"], todo[0]["label_2"]["mistakes"]))) == [(), ("argued",)]
    assert "annotator_a" not in todo[0] and "a09" not in json.dumps(todo)

    decisions = _write(
        study["out"] / "decided.jsonl",
        [
            {"id": "2-t1", "mistakes": ["argued"], "reason": "contradicts the account"},
            {"id": "3-t1", "mistakes": ["interrogated"], "reason": "demands with no reason"},
        ],
    )
    assert ah.apply([decisions], study["agreement"], study["agent"]) == 2
    turns = {json.loads(x)["id"]: json.loads(x) for x in study["agent"].read_text(encoding="utf-8").splitlines()}
    assert turns["3-t1"]["mistakes"] == ["interrogated"] and turns["3-t1"]["adjudicated"] is True
    assert turns["3-t1"]["split"] == "dev" and turns["3-t1"]["steps"] == ["ask_details"]  # other fields kept
    assert turns["1-t1"].get("adjudicated") is None

    # a rebuild after the label file changed keeps the first annotator's labels as they were
    again = {r["id"]: r for r in ah.build(study["agent"], study["labels"], study["agreement"])}
    assert again["3-t1"]["annotator_a"]["mistakes"] == [] and again["3-t1"]["adjudicated"]["mistakes"] == [
        "interrogated"
    ]

    res = ah.metrics(study["agreement"], out=None)
    assert res["a_vs_b"]["all"]["codes"]["argued"] == {"a": 1, "b": 0, "both": 0, "f1": 0.0, "kappa": 0.0}
    assert res["a_vs_b"]["all"]["mistakes_micro_f1"] == round(
        2 * 1 / (2 * 1 + 2), 3
    )  # last_word both; argued, interrogated one each
    assert res["annotator_b_vs_adjudicated"]["all"]["mistakes_micro_f1"] == round(2 * 2 / (2 * 2 + 1), 3)
    assert res["annotator_a_vs_adjudicated"]["test"]["mistakes_micro_f1"] == 1.0


def test_a_bad_decision_names_its_line_and_field(study: dict[str, Path]) -> None:
    ah.build(study["agent"], study["labels"], study["agreement"])
    bad = _write(
        study["agreement"].parent / "bad.jsonl",
        [
            {"id": "2-t1", "mistakes": ["argued"]},
            {"id": "3-t1", "mistakes": ["shouted"]},
        ],
    )
    before = study["agent"].read_text(encoding="utf-8")
    with pytest.raises(LabelError, match=r"bad.jsonl:2: mistakes"):
        ah.apply([bad], study["agreement"], study["agent"])
    assert study["agent"].read_text(encoding="utf-8") == before  # nothing half-applied


def test_a_mistakes_only_study_keeps_the_first_steps_and_its_own_files(study: dict[str, Path]) -> None:
    """The train pass asks for mistakes only: its rows carry A's steps (one shape), its batches have their own prefix."""
    only = ah.Study("agragent-s3", "adjagent-s3", study["agreement"], study["agreement"].with_suffix(".json"), False)
    _write(
        study["labels"] / "agragent-s3-001.jsonl",
        [{"id": "4-t1", "mistakes": ["argued"], "annotator": "a50"}],
    )
    rows = ah.build(study["agent"], study["labels"], study["agreement"], study=only)
    assert [r["id"] for r in rows] == ["4-t1"]  # the s2 batch of the fixture is not this study's
    assert rows[0]["annotator_b"] == {"steps": ["apologize"], "mistakes": ["argued"]}
    assert rows[0]["agreed_mistakes"] is False and rows[0]["adjudicated"] is None
    res = ah.metrics(study["agreement"], out=None, steps_asked=False)
    assert set(res["a_vs_b"]["all"]) == {"n", "mistakes_micro_f1", "codes"}  # no step figures: B was not asked
    assert "thank" not in res["a_vs_b"]["all"]["codes"] and res["a_vs_b"]["all"]["mistakes_micro_f1"] == 0.0
