from __future__ import annotations

import copy

import pytest
import yaml

from data.schema import COMPLAINT_TYPES
from service.routing.playbook import CORE_STEPS, DEFAULT_PLAYBOOK, LANGS, Playbook, PlaybookError


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(DEFAULT_PLAYBOOK.read_text(encoding="utf-8"))


def test_playbook_shipped_file_is_valid_and_complete(raw) -> None:  # type: ignore[no-untyped-def]
    pb = Playbook.from_dict(raw)
    assert set(CORE_STEPS) <= set(pb.steps)
    for code in CORE_STEPS:
        for lang in LANGS:
            for ctype in COMPLAINT_TYPES:
                assert pb.step(code, complaint_type=ctype, lang=lang).text.strip()


def test_playbook_type_specific_text_and_fallback() -> None:
    pb = Playbook.load(DEFAULT_PLAYBOOK)
    billing = pb.step("listen_acknowledge", complaint_type="billing", lang="zh-Hant")
    default = pb.step("listen_acknowledge", complaint_type="other", lang="zh-Hant")
    assert billing.text != default.text and "帳單" in billing.text
    assert default.text == pb.steps["listen_acknowledge"]["default"]["zh-Hant"]
    assert pb.route("escalate", complaint_type="billing", lang="en").code == "escalate_supervisor"


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda r: r["steps"]["thank"]["default"].pop("en"), "steps.thank.default.en"),
        (lambda r: r["routes"].__setitem__("calm_first", "hug"), "routes.calm_first"),
        (lambda r: r["steps"]["apologize"].__setitem__("shipping", {"en": "x"}), "steps.apologize.shipping"),
        (lambda r: r["routes"].pop("escalate"), "routes.escalate"),
        (lambda r: r.__setitem__("languages", ["fr"]), "languages"),
        (lambda r: r["order"].append("dance"), "order[8]"),
        (lambda r: r["steps"]["thank"]["default"].__setitem__("en", 5), "steps.thank.default.en"),
        (lambda r: r["conversation"].__setitem__("solution_block_level", 7), "conversation.solution_block_level"),
        (lambda r: r["conversation"]["sequences"]["recovered"].append("hug"), "conversation.sequences.recovered[4]"),
        (lambda r: r["thresholds"].__setitem__("calm_first_level", 5), "thresholds.calm_first_level"),
        (lambda r: r.__setitem__("colour", "red"), "colour"),
        # found by an outside walkthrough: each loaded silently and changed or broke behaviour
        (lambda r: r["thresholds"].__setitem__("calm_first_levle", 3), "thresholds.calm_first_levle"),
        (lambda r: r["conversation"].__setitem__("repair_after", ["argud"]), "conversation.repair_after[0]"),
        (lambda r: r["order"].reverse(), "order: differs from conversation.rules[6].order"),
        (lambda r: r.__setitem__("languages", ["zh-Hant", "en"]), "languages: 'zh-Hans' missing"),
    ],
)
def test_playbook_invalid_names_the_key(raw, mutate, key) -> None:  # type: ignore[no-untyped-def]
    bad = copy.deepcopy(raw)
    mutate(bad)
    with pytest.raises(PlaybookError, match=key.replace("[", r"\[").replace("]", r"\]")):
        Playbook.from_dict(bad)


def test_playbook_bad_yaml_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "pb.yaml"
    p.write_text("steps: [unclosed", encoding="utf-8")
    with pytest.raises(PlaybookError, match="not valid YAML"):
        Playbook.load(p)


def test_playbook_calm_first_level_is_the_policy_default(tmp_path, raw, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from service.settings import Settings

    changed = copy.deepcopy(raw)
    changed["thresholds"]["calm_first_level"] = 3
    pb = Playbook.from_dict(changed)
    assert Settings().policy(default_level=pb.thresholds.calm_first_level).calm_first_level == 3
    monkeypatch.setenv("CALMFIRST_CALM_FIRST_LEVEL", "1")  # an explicit setting wins over the playbook
    assert Settings().policy(default_level=3).calm_first_level == 1
    assert Playbook.from_dict(raw).to_dict()["thresholds"] == raw["thresholds"]


def test_callback_minutes_is_written_into_the_step_texts(raw) -> None:  # type: ignore[no-untyped-def]
    """thresholds.callback_minutes was read by nothing: the texts said 15 minutes whatever it was."""
    assert "15分鐘" in Playbook.from_dict(raw).step("promise_callback", complaint_type="none", lang="zh-Hant").text
    raw["thresholds"]["callback_minutes"] = 10
    pb = Playbook.from_dict(raw)
    for lang, expected in (("zh-Hant", "10分鐘"), ("zh-Hans", "10分钟"), ("en", "10 minutes")):
        text = pb.step("promise_callback", complaint_type="none", lang=lang).text
        assert expected in text and "{" not in text
