"""The public contract (../shared/CONTRACT.md) against the response models, and /openapi.json.

The examples below are CONTRACT.md's, with its placeholders ("...") filled in; each must validate
as the response model and come back out of it unchanged, so the JSON a client sees keeps its names
and shapes. When ../shared/CONTRACT.md is present, the examples are checked to still be in it.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from data.schema import COMPLAINT_TYPES
from service.api import create_app
from service.results import BatchResult, ConversationResult, MessageResult
from service.settings import Settings

CONTRACT = Path(__file__).resolve().parents[3] / "shared" / "CONTRACT.md"

ONE_RESULT = """{
  "id": "as given, or the 0-based line number",
  "anger":     {"level": 2, "label": "angry", "score": 0.71, "probs": [0.05, 0.20, 0.55, 0.20]},
  "complaint": {"type": "billing", "types": ["billing", "staff_attitude"], "scores": {"billing": 0.83, "...": 0.0}},
  "threat":    {"detected": false, "score": 0.03},
  "route":     {"flag": "calm_first", "escalate": false,
                "next_step": {"code": "acknowledge_and_apologize", "text": "...", "lang": "zh-Hant"}},
  "script": "hant",
  "model": {"name": "...", "version": "..."}
}"""

CONVERSATION = """{"id": "...", "turns": [{"index": 0, "role": "customer", "result": {"...": "one result as above"}},
                        {"index": 1, "role": "agent", "steps": ["thank", "apologize"], "mistakes": []}],
 "state": {"flag": "calm_first", "escalate": false, "anger_series": [2, 3, 1], "anger_trend": "falling", "peak_anger": 3,
           "steps_taken": ["thank", "apologize"], "mistakes": ["argued"],
           "next_step": {"code": "offer_options", "text": "...", "lang": "zh-Hant"}}}"""


def _one_result() -> dict[str, Any]:
    r = json.loads(ONE_RESULT)
    scores = dict.fromkeys(COMPLAINT_TYPES, 0.0)  # "every type": the placeholder stands for the other nine
    scores["billing"] = 0.83
    r["complaint"]["scores"] = scores
    return r


def _subset(small: Any, big: Any, path: str = "") -> None:
    """Every key and value of ``small`` is in ``big`` (the contract may be extended, never changed)."""
    if isinstance(small, dict):
        assert isinstance(big, dict), path
        for k, v in small.items():
            assert k in big, f"{path}.{k} missing"
            _subset(v, big[k], f"{path}.{k}")
    elif isinstance(small, list):
        assert isinstance(big, list) and len(small) == len(big), path
        for i, (a, b) in enumerate(zip(small, big, strict=True)):
            _subset(a, b, f"{path}[{i}]")
    else:
        assert small == big, f"{path}: {small!r} != {big!r}"


def test_contract_examples_are_still_the_contract() -> None:
    if not CONTRACT.is_file():
        pytest.skip(f"{CONTRACT} not present")
    text = re.sub(r"\s+", " ", CONTRACT.read_text(encoding="utf-8"))
    for example in (ONE_RESULT, CONVERSATION):
        assert re.sub(r"\s+", " ", example) in text


def test_contract_one_result_round_trips_through_the_model() -> None:
    example = _one_result()
    assert MessageResult.model_validate(example).model_dump(mode="json") == example
    batch = {"results": [example, {**copy.deepcopy(example), "id": 1}]}
    assert BatchResult.model_validate(batch).model_dump(mode="json") == batch
    # opt-in extras appear only when asked for
    with_text = {**example, "text": "我電話[PHONE]"}
    assert MessageResult.model_validate(with_text).model_dump(mode="json") == with_text


def test_contract_conversation_fits_the_model() -> None:
    example = json.loads(CONVERSATION)
    example["turns"][0]["result"] = _one_result()
    # fields the service adds to the state ("extend freely")
    filled = copy.deepcopy(example)
    filled["state"] |= {
        "final_anger": 1, "situation": "recovered", "complaint_type": "billing", "types": ["billing"],
        "threat": False, "steps_missed": [],
    }  # fmt: skip
    dumped = ConversationResult.model_validate(filled).model_dump(mode="json")
    _subset(example, dumped)
    assert [t["role"] for t in dumped["turns"]] == ["customer", "agent"]


@pytest.mark.parametrize(
    "bad",
    [
        {"anger": {"level": 4}},
        {"anger": {"label": "livid"}},
        {"complaint": {"type": "weather"}},
        {"route": {"flag": "hug_first"}},
        {"script": "latin"},
        {"route": {"next_step": {"lang": "fr"}}},
    ],
)
def test_contract_models_reject_codes_outside_the_vocabulary(bad: dict[str, Any]) -> None:
    r = _one_result()
    for key, sub in bad.items():
        if isinstance(sub, dict):
            for k, v in sub.items():
                if isinstance(v, dict):
                    r[key][k] |= v
                else:
                    r[key][k] = v
        else:
            r[key] = sub
    with pytest.raises(ValueError):
        MessageResult.model_validate(r)


def test_contract_openapi_documents_every_response() -> None:
    schema = TestClient(create_app(Settings())).get("/openapi.json").json()
    expected = {
        ("/healthz", "get"): "Health",
        ("/readyz", "get"): "Ready",
        ("/v1/labels", "get"): "Labels",
        ("/v1/analyze", "post"): "MessageResult",
        ("/v1/analyze/batch", "post"): "BatchResult",
        ("/v1/conversations/analyze", "post"): "ConversationResult",
    }
    assert {(p, m) for p, ops in schema["paths"].items() for m in ops} == set(expected)
    for (path, method), name in expected.items():
        op = schema["paths"][path][method]
        ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/" + name), (path, ref)
        if method == "post":
            err = op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]
            assert err.endswith("/ErrorResponse"), (path, err)
    components = schema["components"]["schemas"]
    result = components["MessageResult"]
    assert {"id", "anger", "complaint", "threat", "route", "script", "model"} <= set(result["required"])
    assert components["Flag"]["enum"] == ["calm_first", "ready_for_solutions"]
