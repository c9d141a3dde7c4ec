from __future__ import annotations

import pytest

from data.script import convert, detect_script


@pytest.mark.parametrize(
    ("text", "script"),
    [
        ("為什麼7號還要算錢?你們到底怎麼算的!", "hant"),
        ("为什么7号还要算钱?你们到底怎么算的!", "hans"),
        ("你哋csl又亂收我漫遊費", "hant"),
        ("退款什么时候到账", "hans"),
        ("收到退款喇,唔該晒。", "hant"),  # 晒 is Cantonese, not a Simplified marker
        ("我等咗好耐", "hant"),
    ],
)
def test_script_detect(text: str, script: str) -> None:
    assert detect_script(text) == script


def test_script_ambiguous_uses_default() -> None:
    assert detect_script("你好", default="hant") == "hant"
    assert detect_script("ok 123", default="hans") == "hans"


def test_script_convert_taiwan_phrases() -> None:
    out = convert("软件的网络设置", "s2twp")
    assert detect_script(out) == "hant"
    assert "軟體" in out and "網路" in out
