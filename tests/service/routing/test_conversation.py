"""Conversation state and next step: hand-written chats for every rule and example of CONTRACT.md v1.1.

The customer turns' scores are given as contract results (what the model would return) and the agent
turns as detected steps and mistakes, so each case pins down the rules, not the models. The texts
matter only where the contract reads them (deferral, a reported fix, thanks, a question).
"""

from __future__ import annotations

import copy

import pytest
import yaml

from data.schema import ANGER_LABELS, COMPLAINT_TYPES
from service.analyzer import Analyzer, ConversationAnalyzer
from service.results import MessageResult
from service.routing.agent_steps import AgentTurn
from service.routing.conversation import Turn, anger_trend, choose_next, contains_any
from service.routing.playbook import DEFAULT_PLAYBOOK, USUAL_ORDER, ConversationRules, Playbook, PlaybookError

C, A = "customer", "agent"


def _result(level: int, ctype: str = "billing", *, threat: bool = False, script: str = "hant") -> MessageResult:
    probs = [0.0] * 4
    probs[level] = 1.0
    return MessageResult.model_validate(
        {
            "id": 0,
            "anger": {"level": level, "label": ANGER_LABELS[level], "score": level / 3, "probs": probs},
            "complaint": {"type": ctype, "types": [ctype], "scores": dict.fromkeys(COMPLAINT_TYPES, 0.0)},
            "threat": {"detected": threat, "score": float(threat)},
            "route": {
                "flag": "calm_first" if level >= 2 else "ready_for_solutions",
                "escalate": threat,
                "next_step": {"code": "thank", "text": "x", "lang": "en"},
            },
            "script": script,
            "model": {"name": "test", "version": "0"},
        }
    )


class _NoDetector:
    """The rules never need the detector: agent turns are given as steps."""

    def detect(self, texts, contexts=None, anger=None):  # type: ignore[no-untyped-def]
        return [AgentTurn(steps=[], mistakes=[], scores={}) for _ in texts]


@pytest.fixture(scope="module")
def conv(tiny_analyzer: Analyzer) -> ConversationAnalyzer:
    return ConversationAnalyzer(tiny_analyzer, _NoDetector())  # type: ignore[arg-type]


def c(level: int, text: str = "x", ctype: str = "billing", *, threat: bool = False, script: str = "hant"):  # type: ignore[no-untyped-def]
    return (C, text, _result(level, ctype, threat=threat, script=script))


def a(*steps: str, mistakes: tuple[str, ...] = (), text: str = "x"):  # type: ignore[no-untyped-def]
    return (A, text, AgentTurn(steps=list(steps), mistakes=list(mistakes), scores={}))


def state(conv: ConversationAnalyzer, *turns, lang=None) -> dict:  # type: ignore[no-untyped-def]
    ts = [Turn(role=r, text=t) for r, t, _ in turns]
    results = [x for r, _, x in turns if r == C]
    agents = [x for r, _, x in turns if r == A]
    return conv.build("c1", ts, results, agents, lang=lang).state.model_dump(mode="json")


def nxt(conv: ConversationAnalyzer, *turns) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    s = state(conv, *turns)
    return s["next_step"]["code"], s["next_step_rule"]


# ------------------------------------------------------------------ anger_trend, peak, final
@pytest.mark.parametrize(
    ("series", "trend"),
    [
        ([1, 0, 0], "falling"),  # the contract's four examples
        ([2, 0, 2], "steady"),
        ([1, 3, 2], "rising"),
        ([2, 1, 0, 1], "falling"),
        ([2], "steady"),  # a single customer turn
        ([3], "steady"),
        ([0, 3, 0], "steady"),  # first vs last, not the last two
        ([3, 3, 2], "falling"),
        ([0, 0, 1], "rising"),
    ],
)
def test_anger_trend_first_vs_last(series: list[int], trend: str) -> None:
    assert anger_trend(series) == trend


def test_state_series_peak_final_trend(conv: ConversationAnalyzer) -> None:
    s = state(conv, c(1), a("thank"), c(3), a("listen_acknowledge"), c(2))
    assert s["anger_series"] == [1, 3, 2]
    assert (s["anger_trend"], s["peak_anger"], s["final_anger"]) == ("rising", 3, 2)
    s = state(conv, c(2))
    assert (s["anger_trend"], s["peak_anger"], s["final_anger"]) == ("steady", 2, 2)


# ------------------------------------------------------------------ rule 1: threats
def test_rule1_threat_goes_to_supervisor_before_anything_else(conv: ConversationAnalyzer) -> None:
    assert nxt(conv, c(3, threat=True)) == ("escalate_supervisor", "threat")
    # even while the customer is furious and the agent already listened and apologised
    assert nxt(conv, c(3, threat=True), a("listen_acknowledge", "apologize"), c(3)) == ("escalate_supervisor", "threat")
    # the threat may be in an earlier turn
    assert nxt(conv, c(1, threat=True), a("thank"), c(0, ctype="none")) == ("escalate_supervisor", "threat")


def test_rule1_after_handover_a_callback_time_unless_given(conv: ConversationAnalyzer) -> None:
    assert nxt(conv, c(3, threat=True), a("apologize", "escalate_supervisor"), c(3)) == ("promise_callback", "threat")
    assert nxt(conv, c(2, threat=True), a("escalate_supervisor")) == ("promise_callback", "threat")
    # a time given with the hand-over: rule 1 is done, the next rules apply (here: still upset)
    code, rule = nxt(conv, c(3, threat=True), a("escalate_supervisor", "promise_callback"), c(3))
    assert (code, rule) == ("listen_acknowledge", "upset")
    # ... and once calmer, rule 7: nothing of the usual order taken but the hand-over and the time
    turns = (c(3, threat=True), a("escalate_supervisor"), c(2), a("promise_callback"), c(1))
    assert nxt(conv, *turns) == ("listen_acknowledge", "usual_order")


def test_rule1_beats_the_repair_step(conv: ConversationAnalyzer) -> None:
    assert nxt(conv, c(3, threat=True), a(mistakes=("argued",)), c(3)) == ("escalate_supervisor", "threat")
    # hand-over done and a time given: the repair comes first again
    turns = (c(3, threat=True), a("escalate_supervisor", "promise_callback"), c(2), a(mistakes=("last_word",)))
    assert nxt(conv, *turns) == ("apologize", "repair")


# ------------------------------------------------------------------ rule 2: the customer is upset
def test_rule2_upset_customer_is_listened_to(conv: ConversationAnalyzer) -> None:
    assert nxt(conv, c(2)) == ("listen_acknowledge", "upset")
    assert nxt(conv, c(3)) == ("listen_acknowledge", "upset")
    assert nxt(conv, c(1), a("offer_options"), c(2)) == ("listen_acknowledge", "upset")


def test_rule2_after_an_acknowledgement_comes_the_apology(conv: ConversationAnalyzer) -> None:
    assert nxt(conv, c(3), a("listen_acknowledge"), c(3)) == ("apologize", "upset")
    assert nxt(conv, c(2), a("listen_acknowledge", "thank")) == ("apologize", "upset")
    # acknowledged in an earlier turn only: the agent's *last* turn counts
    assert nxt(conv, c(3), a("listen_acknowledge"), c(3), a("ask_details"), c(2)) == ("listen_acknowledge", "upset")


@pytest.mark.parametrize("level", [2, 3])
@pytest.mark.parametrize(
    "history",
    [
        (),
        (("listen_acknowledge",),),
        (("listen_acknowledge", "thank", "apologize"),),
        (("ask_details",),),
        (("apologize",), ("listen_acknowledge", "thank", "apologize", "commit_action", "ask_details")),
    ],
)
def test_rule2_never_a_solution_while_the_customer_is_at_2_or_more(
    conv: ConversationAnalyzer, level: int, history: tuple[tuple[str, ...], ...]
) -> None:
    turns = [c(level, "我查一下好了，謝謝?")]
    for steps in history:
        turns += [a(*steps, text="好的，已經幫您辦好，我查一下"), c(level, "到底好了沒?謝謝")]
    code, rule = nxt(conv, *turns)
    assert code in ("listen_acknowledge", "apologize") and rule == "upset"


# ------------------------------------------------------------------ rule 3: a deferral without a time
@pytest.mark.parametrize(
    "text", ["好的，我查一下。", "这个问题我们稍后回复您", "我幫您確認一下再回覆您", "已反馈相关部门，敬请等待"]
)
def test_rule3_deferral_without_a_time_gets_a_callback_time(conv: ConversationAnalyzer, text: str) -> None:
    assert nxt(conv, c(1), a("commit_action", text=text)) == ("promise_callback", "deferred")
    # also when the customer has answered (at a level below 2)
    assert nxt(conv, c(1), a("commit_action", text=text), c(1, "好")) == ("promise_callback", "deferred")


@pytest.mark.parametrize(
    "text",
    [
        "想跟您確認一下，問題都解決了嗎？還有其他我能幫忙的嗎？",  # confirm_satisfaction's own wording
        "謝謝您告訴我們，我想先了解一下，您是說上個月帳單多扣了100元對嗎？",  # listening
        "感谢您的反馈，已经为您退款100元了。",
    ],
)
def test_rule3_not_for_wording_that_defers_nothing(conv: ConversationAnalyzer, text: str) -> None:
    """These were read as deferrals (found by an outside walkthrough): the playbook's own confirm_satisfaction
    text then asked the agent to promise a callback."""
    assert nxt(conv, c(1), a("commit_action", text=text))[1] != "deferred"


def test_rule3_not_when_a_time_was_given(conv: ConversationAnalyzer) -> None:
    turns = (c(1), a("commit_action", "promise_callback", text="我查一下，15分鐘內回電給您"))
    assert nxt(conv, *turns) == ("listen_acknowledge", "usual_order")  # rule 7: the first step not taken


# ------------------------------------------------------------------ rule 4: the customer chose / supplied
def test_rule4_details_supplied_then_commit(conv: ConversationAnalyzer) -> None:
    turns = (c(1), a("listen_acknowledge", "thank", "apologize", "ask_details"), c(0, "訂單號碼是 A12345"))
    assert nxt(conv, *turns) == ("commit_action", "details_given")


def test_rule4_option_chosen_then_commit(conv: ConversationAnalyzer) -> None:
    turns = (c(1), a("apologize", "offer_options", text="可以退款或換貨，您看哪個方便"), c(1, "換貨好了"))
    assert nxt(conv, *turns) == ("commit_action", "details_given")


def test_rule4_not_before_the_customer_answers(conv: ConversationAnalyzer) -> None:
    turns = (c(1), a("listen_acknowledge", "thank", "apologize", "ask_details"))
    assert nxt(conv, *turns) == ("commit_action", "usual_order")  # rule 7, not 4: the customer has not answered


# ------------------------------------------------------------------ rule 5: a fix reported
def test_rule5_agent_reports_the_fix_and_customer_is_calm(conv: ConversationAnalyzer) -> None:
    turns = (c(1), a("apologize", "ask_details"), c(1), a("commit_action", text="已經幫您辦好退款了"), c(0, "好"))
    assert nxt(conv, *turns) == ("confirm_satisfaction", "fix_reported")
    # the fix reported in the agent's last turn, the customer's last level 0
    assert nxt(conv, c(0), a("commit_action", text="已经帮您重新寄出")) == ("confirm_satisfaction", "fix_reported")


def test_rule5_customer_confirms_and_thanks(conv: ConversationAnalyzer) -> None:
    turns = (c(2), a("listen_acknowledge", "commit_action", text="我現在幫您處理"), c(1, "可以了，謝謝你"))
    assert nxt(conv, *turns) == ("confirm_satisfaction", "fix_reported")


def test_rule5_needs_a_calm_or_thankful_customer(conv: ConversationAnalyzer) -> None:
    turns = (c(1), a("commit_action", text="已經幫您辦好"), c(1, "嗯"))
    assert nxt(conv, *turns) == ("listen_acknowledge", "usual_order")
    turns = (c(1), a("commit_action", text="我會處理"), c(0, "嗯"))  # no fix reported
    assert nxt(conv, *turns) == ("listen_acknowledge", "usual_order")


# ------------------------------------------------------------------ rule 6: no grievance, a new question
def test_rule6_question_without_grievance_gets_an_answer(conv: ConversationAnalyzer) -> None:
    s = state(conv, c(0, "请问你们几点开门?", "none", script="hans"))
    assert (s["next_step"]["code"], s["next_step_rule"], s["next_step"]["lang"]) == (
        "answer_question",
        "new_question",
        "zh-Hans",
    )


def test_rule6_is_repeatable(conv: ConversationAnalyzer) -> None:
    turns = (c(0, "請問運費多少?", "none"), a("answer_question"), c(0, "那幾天會到呢", "none"))
    assert nxt(conv, *turns) == ("answer_question", "new_question")


def test_rule6_not_with_a_grievance(conv: ConversationAnalyzer) -> None:
    assert nxt(conv, c(1, "為什麼還沒到?", "delivery")) == ("listen_acknowledge", "usual_order")
    assert nxt(conv, c(2, "為什麼還沒到?", "none")) == ("listen_acknowledge", "upset")
    # a grievance earlier in the chat counts: rule 7, apologize already taken
    turns = (c(1, "太慢了", "delivery"), a("apologize"), c(0, "請問幾點到?", "none"))
    assert nxt(conv, *turns) == ("listen_acknowledge", "usual_order")


# ------------------------------------------------------------------ rule 7: the usual order
def test_rule7_first_step_of_the_usual_order_not_taken(conv: ConversationAnalyzer) -> None:
    assert nxt(conv, c(1)) == ("listen_acknowledge", "usual_order")
    assert nxt(conv, c(1), a("listen_acknowledge"), c(1)) == ("thank", "usual_order")
    assert nxt(conv, c(1), a("listen_acknowledge", "thank"), c(1)) == ("apologize", "usual_order")
    turns = (c(1), a("listen_acknowledge", "thank", "apologize"), c(1, "嗯"))
    assert nxt(conv, *turns) == ("commit_action", "usual_order")
    # the order, not what is missing last: a skipped thank comes before options
    turns = (c(1), a("listen_acknowledge", "apologize", "commit_action"), c(1, "嗯"))
    assert nxt(conv, *turns) == ("thank", "usual_order")
    everything = [s for s in USUAL_ORDER if s != "confirm_satisfaction"]
    assert nxt(conv, c(1), a(*everything)) == ("confirm_satisfaction", "usual_order")
    assert nxt(conv, c(1), a(*USUAL_ORDER)) == ("confirm_satisfaction", "usual_order")


def test_rule7_counts_steps_since_the_last_new_grievance(conv: ConversationAnalyzer) -> None:
    first = a("listen_acknowledge", "thank", "apologize", "commit_action")
    # same grievance again: the steps already taken still count
    assert nxt(conv, c(1, ctype="billing"), first, c(1, "嗯", ctype="billing")) == ("ask_details", "usual_order")
    # a new grievance (a complaint type not raised before): the order starts again
    assert nxt(conv, c(1, ctype="billing"), first, c(1, "嗯", ctype="delivery")) == (
        "listen_acknowledge",
        "usual_order",
    )


def test_rule7_without_grievance_answers_then_confirms(conv: ConversationAnalyzer) -> None:
    assert nxt(conv, c(0, "好的", "none")) == ("answer_question", "usual_order")
    assert nxt(conv, c(0, "請問幾點開門", "none"), a("answer_question")) == ("confirm_satisfaction", "usual_order")


# ------------------------------------------------------------------ the repair step after a mistake
@pytest.mark.parametrize("mistake", ["argued", "blamed_customer", "last_word", "interrogated"])
def test_repair_comes_first_after_a_mistake(conv: ConversationAnalyzer, mistake: str) -> None:
    assert nxt(conv, c(1), a("apologize", mistakes=(mistake,)), c(0, "好了，謝謝")) == ("apologize", "repair")
    assert nxt(conv, c(3), a(mistakes=(mistake,))) == ("apologize", "repair")


def test_repair_only_right_after_the_mistake_and_repeatable(conv: ConversationAnalyzer) -> None:
    turns = [c(1), a(mistakes=("argued",)), c(1), a("apologize", "listen_acknowledge"), c(1, "嗯")]
    assert nxt(conv, *turns) == ("thank", "usual_order")
    turns += [a(mistakes=("last_word",)), c(1, "嗯")]
    assert nxt(conv, *turns) == ("apologize", "repair")  # apologize again: steps are repeatable
    s = state(conv, *turns)
    assert s["mistakes"] == ["argued", "last_word"]


# ------------------------------------------------------------------ solution_while_furious
def test_solution_while_furious_is_a_mistake_and_not_a_step_taken(conv: ConversationAnalyzer) -> None:
    s = state(conv, c(3), a("offer_options"), c(3))
    assert s["mistakes"] == ["solution_while_furious"] and "offer_options" not in s["steps_taken"]
    assert (s["next_step"]["code"], s["next_step_rule"]) == ("apologize", "repair")
    # made again once the customer is calmer
    turns = (
        c(3),
        a("offer_options"),
        c(2),
        a("listen_acknowledge", "thank", "apologize", "commit_action", "ask_details"),
    )
    turns += (c(1), a("apologize"), c(1, "嗯"))  # type: ignore[assignment]
    s = state(conv, *turns)
    assert "offer_options" not in s["steps_taken"]
    assert (s["next_step"]["code"], s["next_step_rule"]) == ("offer_options", "usual_order")


@pytest.mark.parametrize("steps", [("answer_question",), ("commit_action",), ("offer_options", "thank")])
def test_solution_while_furious_any_solution_content(conv: ConversationAnalyzer, steps: tuple[str, ...]) -> None:
    s = state(conv, c(3), a(*steps))
    assert "solution_while_furious" in s["mistakes"]
    assert "solution_while_furious" in s_turn_mistakes(conv, c(3), a(*steps))


def s_turn_mistakes(conv: ConversationAnalyzer, *turns) -> list[str]:  # type: ignore[no-untyped-def]
    ts = [Turn(role=r, text=t) for r, t, _ in turns]
    out = conv.build("c", ts, [x for r, _, x in turns if r == C], [x for r, _, x in turns if r == A], lang=None)
    return [m for t in out.turns if t.role == "agent" for m in t.mistakes]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("level", "steps"),
    [
        (3, ("apologize", "offer_options")),  # with an apology
        (3, ("listen_acknowledge", "answer_question")),  # with an acknowledgement
        (2, ("offer_options",)),  # the customer is angry, not furious
        (3, ("thank", "ask_details")),  # no solution content
    ],
)
def test_not_solution_while_furious(conv: ConversationAnalyzer, level: int, steps: tuple[str, ...]) -> None:
    s = state(conv, c(level), a(*steps))
    assert "solution_while_furious" not in s["mistakes"]
    assert set(steps) <= set(s["steps_taken"])


def test_solution_while_furious_looks_at_the_last_customer_turn_before(conv: ConversationAnalyzer) -> None:
    s = state(conv, c(3), a("listen_acknowledge", "apologize"), c(1), a("offer_options"))
    assert s["mistakes"] == [] and "offer_options" in s["steps_taken"]


def test_a_step_inside_a_turn_with_another_mistake_still_counts(conv: ConversationAnalyzer) -> None:
    s = state(conv, c(1), a("apologize", "offer_options", mistakes=("last_word",)))
    assert {"apologize", "offer_options"} <= set(s["steps_taken"]) and s["mistakes"] == ["last_word"]


# ------------------------------------------------------------------ rules are playbook data
def _rules(**changes) -> ConversationRules:  # type: ignore[no-untyped-def]
    raw = yaml.safe_load(DEFAULT_PLAYBOOK.read_text(encoding="utf-8"))
    raw["conversation"] |= changes
    return Playbook.from_dict(raw).conversation


def test_shipped_playbook_rules_are_the_contract_defaults() -> None:
    assert Playbook.load(DEFAULT_PLAYBOOK).conversation == ConversationRules()
    assert [r.rule for r in ConversationRules().rules] == [
        "threat", "upset", "deferred", "details_given", "fix_reported", "new_question", "usual_order",
    ]  # fmt: skip
    assert list(USUAL_ORDER) == [s for s in ConversationRules().rules[-1].order]


def test_a_contact_center_edits_the_rules(tiny_analyzer: Analyzer) -> None:
    raw = yaml.safe_load(DEFAULT_PLAYBOOK.read_text(encoding="utf-8"))
    edited = copy.deepcopy(raw)
    edited["conversation"]["rules"][1]["min_level"] = 3  # only furious customers are "upset"
    edited["conversation"]["rules"].pop(2)  # no deferral rule
    pb = Playbook.from_dict(edited)
    an = Analyzer(tiny_analyzer.model, playbook=pb)
    conv = ConversationAnalyzer(an, _NoDetector())  # type: ignore[arg-type]
    assert nxt(conv, c(2)) == ("listen_acknowledge", "usual_order")
    assert (
        nxt(conv, c(1), a("listen_acknowledge", "thank", "apologize", "commit_action", text="我查一下"), c(1, "嗯"))[1]
        == "usual_order"
    )


def test_without_the_usual_order_rule_the_situations_sequence_gives_the_step(tiny_analyzer: Analyzer) -> None:
    """The fallback walked every step code: a calm chat with the usual steps taken was told to escalate to a
    supervisor (found by an outside walkthrough)."""
    raw = yaml.safe_load(DEFAULT_PLAYBOOK.read_text(encoding="utf-8"))
    raw["conversation"]["rules"] = [r for r in raw["conversation"]["rules"] if r["rule"] != "usual_order"]
    raw.pop("order")
    pb = Playbook.from_dict(raw)
    conv = ConversationAnalyzer(Analyzer(tiny_analyzer.model, playbook=pb), _NoDetector())  # type: ignore[arg-type]
    rest = ("listen_acknowledge", "thank", "apologize", "commit_action", "promise_callback", "confirm_satisfaction")
    code, rule = nxt(conv, c(1), a("ask_details", "offer_options"), c(0, "好的"), a(*rest))
    assert rule == "none" and code in pb.conversation.sequence("recovered") + pb.conversation.sequence(
        "ready_for_solutions"
    )
    assert code != "escalate_supervisor"
    assert nxt(conv, c(1))[0] == pb.conversation.sequence("ready_for_solutions")[0]


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda r: r["rules"][1].__setitem__("min_level", 5), "conversation.rules[1].min_level"),
        (lambda r: r["rules"][0].__setitem__("step", "hug"), "conversation.rules[0].step"),
        (lambda r: r["rules"][6]["order"].append("dance"), "conversation.rules[6].order[8]"),
        (lambda r: r["rules"][2].__setitem__("phrases", []), "conversation.rules[2].phrases"),
        (lambda r: r["rules"][3].__setitem__("colour", "red"), "conversation.rules[3].colour"),
        (lambda r: r["rules"].append({"rule": "astrology"}), "conversation.rules[7]"),
        (lambda r: r.__setitem__("repair_unless", ["moon"]), "conversation.repair_unless"),
        (lambda r: r.__setitem__("repair", "hug"), "conversation.repair"),
        (lambda r: r.__setitem__("solution_steps", ["teleport"]), "conversation.solution_steps"),
    ],
)
def test_invalid_rules_name_the_key(mutate, key: str) -> None:  # type: ignore[no-untyped-def]
    raw = yaml.safe_load(DEFAULT_PLAYBOOK.read_text(encoding="utf-8"))
    mutate(raw["conversation"])
    with pytest.raises(PlaybookError, match=key.replace("[", r"\[").replace("]", r"\]")):
        Playbook.from_dict(raw)


def test_phrases_match_in_both_scripts() -> None:
    assert contains_any("我们稍后回复您", ["稍後回覆"])
    assert contains_any("我們稍後回覆您", ["稍后回复"])
    assert not contains_any("15分鐘內回電給您", ["稍後"])


# ------------------------------------------------------------------ kept helpers and structure
def test_choose_next_skips_optional_once_past() -> None:
    seq = ["listen_acknowledge", "thank", "apologize", "ask_details", "offer_options", "confirm_satisfaction"]
    opt = frozenset({"listen_acknowledge", "ask_details", "thank"})
    assert choose_next(seq, set(), opt) == "listen_acknowledge"
    assert choose_next(seq, {"offer_options"}, opt) == "apologize"


def test_situation_and_language(conv: ConversationAnalyzer) -> None:
    s = state(conv, c(3), lang="en")
    assert s["flag"] == "calm_first" and s["situation"] == "calm_first" and s["next_step"]["lang"] == "en"
    s = state(conv, c(1, ctype="delivery"))
    assert s["situation"] == "ready_for_solutions" and s["complaint_type"] == "delivery"
    assert s["next_step"]["lang"] == "zh-Hant"


def test_conversation_needs_a_customer_turn(conv: ConversationAnalyzer) -> None:
    with pytest.raises(ValueError, match="turns"):
        conv.build("c", [Turn(role="agent", text="您好")], [], [AgentTurn([], [], {})], lang=None)
