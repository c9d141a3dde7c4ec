"""The agent console (GET /) in a real headless Chromium against a real uvicorn server on the tiny model.

Chromium and chromedriver come from Debian (`make browser`); the module is skipped, with the reason, only
where they or selenium are missing. The tiny model's scores are random: the tests check structure, script and
that what is shown is what the API returned, never specific labels.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from data.script import detect_script
from service.api import create_app
from service.settings import Settings

CHROMIUM = os.environ.get("CALMFIRST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CALMFIRST_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROME_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
API_KEY = "s3cret-console"


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for what, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)):
        if not (Path(path).is_file() and os.access(path, os.X_OK)) and shutil.which(path) is None:
            return f"{what} not found at {path}: install Debian's chromium + chromium-driver (`make browser`)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=f"agent console browser tests: {_missing()}")

TRAD_CANDIDATES = [
    "包裹還沒到",
    "太離譜了!!",
    "你們的服務態度太差了，我要退款！",
    "為什麼7號還要算錢?你們到底怎麼算的!",
]
SIMP_MESSAGE = "退款什么时候到账?你们太离谱了!"
CHAT = [
    ("客戶：", "customer", "你們的服務態度太差了，我要退款！"),
    ("客服:", "agent", "很抱歉造成您的困擾，謝謝您告訴我們。"),
    ("customer: ", "customer", "包裹還沒到，到底什麼時候會到？"),
    ("A：", "agent", "這是您自己填錯地址。"),
]


class _FittedDetector:
    """Stands in for AgentStepDetector in service.api.app so both servers share one fit (it takes seconds)."""

    def __init__(self, detector: Any) -> None:
        self._detector = detector

    def from_data(self, *args: Any, **kwargs: Any) -> Any:
        return self._detector


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(settings: Settings, analyzer: Any) -> Iterator[str]:
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, analyzer=analyzer), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 120
    while not server.started and thread.is_alive() and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def servers(tiny_analyzer: Any) -> Iterator[dict[str, str]]:
    """Two servers on one fitted agent-step detector: open, and one that wants API_KEY."""
    import sklearn.linear_model  # noqa: F401  (loads scipy's BLAS before the limit below applies to it)
    from threadpoolctl import threadpool_limits

    import service.api.app
    from service.routing.agent_steps import AgentStepDetector

    # One BLAS thread: on a busy 2-core machine the threaded fit is ~10x slower (oversubscription).
    with threadpool_limits(limits=1):
        detector = AgentStepDetector.from_data()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(service.api.app, "AgentStepDetector", _FittedDetector(detector), raising=False)
        open_server = _serve(Settings(), tiny_analyzer)
        keyed_server = _serve(Settings(api_key=API_KEY), tiny_analyzer)
        urls = {"open": next(open_server), "keyed": next(keyed_server)}
        yield urls
        for gen in (open_server, keyed_server):
            next(gen, None)


@pytest.fixture(scope="module")
def url(servers: dict[str, str]) -> str:
    return servers["open"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    opts.add_argument("--window-size=1280,1000")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


# ---- helpers ---------------------------------------------------------------------------------------------------


def _open(driver: Any, base: str) -> None:
    driver.get(base + "/")
    driver.get_log("browser")  # drop what earlier pages logged


def _by_id(driver: Any, id_: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, id_)


def _all(driver: Any, css: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, css))


def _submit(driver: Any, text: str, *, key: str | None = None, lang: str | None = None) -> str:
    """Type ``text`` like a user (newlines included), click Analyze, wait for the page to settle."""
    from selenium.webdriver.support.ui import Select, WebDriverWait

    box = _by_id(driver, "text")
    box.clear()
    if text:
        box.send_keys(text)
    if key is not None:
        field = _by_id(driver, "api-key")
        field.clear()
        field.send_keys(key)
    if lang is not None:
        Select(_by_id(driver, "lang")).select_by_value(lang)
    driver.execute_script("document.body.dataset.state = 'idle'")
    _by_id(driver, "analyze").click()
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script("return document.body.dataset.state") in {"done", "error"}
    )
    return str(driver.execute_script("return document.body.dataset.state"))


def _labels(driver: Any) -> str:
    return "".join(e.text for e in _all(driver, "[data-i18n]"))


def _severe(driver: Any, *, allow: tuple[str, ...] = ()) -> list[str]:
    return [
        e["message"]
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and not any(a in e["message"] for a in allow)
    ]


def _api(base: str, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(base + path, json=body, headers=headers, timeout=60)


def _check_summary(driver: Any, result: dict[str, Any], *, flag: str, next_step: dict[str, str]) -> None:
    level = _by_id(driver, "anger-level")
    assert level.is_displayed() and level.text.strip()
    assert level.get_attribute("data-level") == str(result["anger"]["level"])
    bars = _all(driver, "#probs .prob-bar")
    assert [b.get_attribute("data-level") for b in bars] == ["0", "1", "2", "3"]
    shown = [float(b.find_element("css selector", ".prob-value").text.rstrip("%")) for b in bars]
    assert sum(shown) == pytest.approx(100.0, abs=0.5)
    assert shown == pytest.approx([100 * p for p in result["anger"]["probs"]], abs=0.06)
    assert _by_id(driver, "flag").text.strip()
    assert _by_id(driver, "flag").get_attribute("data-code") == flag
    assert _by_id(driver, "next-step").text == next_step["text"]
    assert next_step["code"] in _by_id(driver, "next-step-code").text
    assert _by_id(driver, "complaint-type").text.strip()
    assert _by_id(driver, "threat").text.strip() and _by_id(driver, "escalate").text.strip()
    assert not _by_id(driver, "error").is_displayed()


def _marks(driver: Any) -> list[Any]:
    return _all(driver, "#highlighted mark")


# ---- tests -----------------------------------------------------------------------------------------------------


def test_console_page_loads_without_console_errors(browser: Any, url: str) -> None:
    browser.get(url + "/")
    assert browser.title == "CalmFirst"
    assert _by_id(browser, "analyze").is_displayed() and _by_id(browser, "text").is_displayed()
    assert all(e.text.strip() for e in _all(browser, "[data-i18n]") if e.is_displayed())
    assert not _by_id(browser, "result").is_displayed() and not _by_id(browser, "error").is_displayed()
    assert _severe(browser) == []
    # self-contained: nothing is fetched from anywhere but the app itself
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(r.startswith(url) or r.startswith("data:") for r in resources), resources


def test_console_traditional_message_shows_result_and_highlights(browser: Any, url: str) -> None:
    # the tiny model is random: pick a message whose explanation has at least one span
    picked = None
    for text in TRAD_CANDIDATES:
        res = _api(url, "/v1/analyze", {"text": text, "explain": True}).json()
        if res["explanation"]["spans"]:
            picked = (text, res)
            break
    assert picked is not None, "no candidate message got an explanation span from the tiny model"
    text, res = picked
    _open(browser, url)
    assert _submit(browser, text) == "done"
    _check_summary(browser, res, flag=res["route"]["flag"], next_step=res["route"]["next_step"])
    assert detect_script(_by_id(browser, "next-step").text) == "hant"
    assert detect_script(_labels(browser)) == "hant"
    assert browser.execute_script("return document.body.dataset.uiLang") == "zh-Hant"
    marks = _marks(browser)
    assert marks, "no highlighted phrase"
    for m in marks:
        assert m.text and m.text in text
        float(m.get_attribute("title"))
    assert [m.text for m in marks] == [s["text"] for s in res["explanation"]["spans"]]
    assert _by_id(browser, "highlighted").text == text
    assert not _by_id(browser, "conversation").is_displayed()
    assert _severe(browser) == []


def test_console_simplified_message_gets_simplified_labels(browser: Any, url: str) -> None:
    _open(browser, url)
    assert _submit(browser, SIMP_MESSAGE) == "done"
    assert browser.execute_script("return document.body.dataset.uiLang") == "zh-Hans"
    assert detect_script(_labels(browser)) == "hans"
    assert detect_script(_by_id(browser, "next-step").text) == "hans"
    assert _by_id(browser, "highlighted").text == SIMP_MESSAGE


def test_console_english_selector_gives_english(browser: Any, url: str) -> None:
    _open(browser, url)
    assert _submit(browser, TRAD_CANDIDATES[0], lang="en") == "done"
    assert _by_id(browser, "analyze").text == "Analyze"
    assert _by_id(browser, "next-step").get_attribute("lang") == "en"
    labels = _labels(browser)
    assert labels and not re.search(r"[\u3400-\u9fff]", labels), labels  # no Chinese left in the labels


def test_console_chat_shows_conversation_state(browser: Any, url: str) -> None:
    chat_text = "\n".join(prefix + text for prefix, _, text in CHAT)
    turns = [{"role": role, "text": text} for _, role, text in CHAT]
    res = _api(url, "/v1/conversations/analyze", {"turns": turns, "explain": True}).json()
    state = res["state"]
    _open(browser, url)
    assert _submit(browser, chat_text) == "done"
    last_customer = res["turns"][2]["result"]
    _check_summary(browser, last_customer, flag=state["flag"], next_step=state["next_step"])
    assert _by_id(browser, "conversation").is_displayed()
    series = [e.text for e in _all(browser, "#anger-series .badge-level")]
    assert series == [str(lv) for lv in state["anger_series"]]
    assert _by_id(browser, "anger-trend").get_attribute("data-code") == state["anger_trend"]
    assert _by_id(browser, "anger-trend").text.strip()
    taken = [e.get_attribute("data-code") for e in _all(browser, "#steps-taken li[data-code]")]
    assert taken == state["steps_taken"]
    assert _all(browser, "#steps-taken li"), "steps taken not shown"
    mistakes = [e.get_attribute("data-code") for e in _all(browser, "#mistakes li[data-code]")]
    assert mistakes == state["mistakes"]
    assert _all(browser, "#mistakes li") and all(e.text.strip() for e in _all(browser, "#mistakes li"))
    shown_turns = _all(browser, "#turns li")
    assert [t.get_attribute("data-role") for t in shown_turns] == [role for _, role, _ in CHAT]
    for li, (_, _, text) in zip(shown_turns, CHAT, strict=True):
        assert text in li.text
    # highlights are on the last customer turn
    assert _by_id(browser, "highlighted").text == CHAT[2][2]
    for m in _marks(browser):
        assert m.text in CHAT[2][2]
    assert detect_script(_labels(browser)) == "hant"
    assert _severe(browser) == []


def test_console_escapes_user_text(browser: Any, url: str) -> None:
    nasty = '<img src=x onerror="window.__pwned=1"><b>太離譜了</b>'
    _open(browser, url)
    assert _submit(browser, nasty) == "done"
    assert _by_id(browser, "highlighted").text == nasty
    assert _all(browser, "#highlighted img, #highlighted b") == []
    assert browser.execute_script("return window.__pwned === undefined")


def test_console_empty_submit_shows_server_422(browser: Any, url: str) -> None:
    expected = _api(url, "/v1/analyze", {"text": "", "explain": True})
    assert expected.status_code == 422
    _open(browser, url)
    assert _submit(browser, "") == "error"
    err = _by_id(browser, "error")
    assert err.is_displayed()
    assert "422" in err.text and expected.json()["detail"] in err.text and "text" in err.text
    assert not _by_id(browser, "result").is_displayed()
    assert _severe(browser, allow=("422",)) == []


def test_console_wrong_api_key_shows_server_401(browser: Any, servers: dict[str, str]) -> None:
    base = servers["keyed"]
    expected = _api(base, "/v1/analyze", {"text": "包裹還沒到"}, **{"x-api-key": "wrong"})
    assert expected.status_code == 401
    _open(browser, base)
    assert _submit(browser, "包裹還沒到", key="wrong") == "error"
    err = _by_id(browser, "error")
    assert "401" in err.text and expected.json()["detail"] in err.text
    # the same page with the right key goes through: the field is sent as x-api-key
    assert _submit(browser, "包裹還沒到", key=API_KEY) == "done"
    assert not _by_id(browser, "error").is_displayed()
    assert _severe(browser, allow=("401",)) == []
