"""The HTTP API, served by a real uvicorn server on loopback with the tiny model."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from data.schema import COMPLAINT_TYPES
from service.api import create_app
from service.settings import Settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(settings: Settings, analyzer) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    port = _free_port()
    app = create_app(settings, analyzer=analyzer)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "server did not start"
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        yield client
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def client(tiny_analyzer) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    yield from _serve(Settings(max_body_bytes=4096, max_batch_items=5, max_text_chars=300), tiny_analyzer)


def test_app_health_and_ready(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["model"]["name"] == "tiny"


def test_app_analyze_contract_fields(client: httpx.Client) -> None:
    r = client.post("/v1/analyze", json={"text": "為什麼7號還要算錢?你們到底怎麼算的!"})
    assert r.status_code == 200
    res = r.json()
    assert set(res) >= {"id", "anger", "complaint", "threat", "route", "script", "model"}
    assert res["anger"]["level"] in range(4)
    assert res["anger"]["label"] == ["calm", "displeased", "angry", "furious"][res["anger"]["level"]]
    assert sum(res["anger"]["probs"]) == pytest.approx(1.0, abs=1e-4)
    assert set(res["complaint"]["scores"]) == set(COMPLAINT_TYPES)
    assert res["complaint"]["types"][0] == res["complaint"]["type"]
    assert res["route"]["flag"] in {"calm_first", "ready_for_solutions"}
    assert res["route"]["flag"] == ("calm_first" if res["anger"]["level"] >= 2 else "ready_for_solutions")
    assert res["script"] == "hant" and res["route"]["next_step"]["lang"] == "zh-Hant"
    assert res["route"]["next_step"]["text"]


def test_app_lang_override_and_simplified(client: httpx.Client) -> None:
    r = client.post("/v1/analyze", json={"text": "退款什么时候到账", "lang": "en"})
    assert r.json()["route"]["next_step"]["lang"] == "en"
    r = client.post("/v1/analyze", json={"text": "退款什么时候到账"})
    assert r.json()["script"] == "hans" and r.json()["route"]["next_step"]["lang"] == "zh-Hans"


def test_app_batch_keeps_order_and_ids(client: httpx.Client) -> None:
    items = [{"id": "a", "text": "請問"}, {"text": "太離譜了!!"}, {"id": 7, "text": "包裹還沒到"}]
    r = client.post("/v1/analyze/batch", json={"items": items})
    assert r.status_code == 200
    assert [x["id"] for x in r.json()["results"]] == ["a", 1, 7]
    single = client.post("/v1/analyze", json={"text": "包裹還沒到"}).json()
    assert r.json()["results"][2]["anger"]["probs"] == pytest.approx(single["anger"]["probs"], abs=1e-5)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/analyze", {}, "text"),
        ("/v1/analyze", {"text": ""}, "text"),
        ("/v1/analyze", {"text": 5}, "text"),
        ("/v1/analyze", {"text": "hi", "lang": "fr"}, "lang"),
        ("/v1/analyze", {"text": "x" * 301}, "text"),
        ("/v1/analyze", {"text": "hi", "extra": 1}, "extra"),
        ("/v1/analyze/batch", {"items": []}, "items"),
        ("/v1/analyze/batch", {"items": [{"text": "ok"}, {"id": "b"}]}, "items.1.text"),
        ("/v1/analyze/batch", {"items": [{"text": "a"}] * 6}, "items"),
    ],
)
def test_app_bad_input_422_names_field(client: httpx.Client, path: str, body: dict, field: str) -> None:
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/analyze/batch", {"items": [{"id": 1.5, "text": "你好"}]}, "items.0.id"),
        ("/v1/analyze/batch", {"items": [{"id": True, "text": "你好"}]}, "items.0.id"),
        ("/v1/conversations/analyze", {"id": False, "turns": [{"role": "customer", "text": "你好"}]}, "id"),
        ("/v1/conversations/analyze", {"turns": [{"role": "customer", "text": "你好", "ts": {"a": 1}}]}, "turns.0.ts"),
        ("/v1/conversations/analyze", {"turns": [{"role": "customer", "text": "你好", "ts": True}]}, "turns.0.ts"),
    ],
)
def test_app_wrong_id_or_ts_type_is_one_error_at_the_field(
    client: httpx.Client, path: str, body: dict, field: str
) -> None:
    """Booleans came back as 1/0 and a float id gave one error per union member (``items.0.id.str``,
    ``items.0.id.int``); found by an outside walkthrough."""
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == [field]


def test_app_ids_and_timestamps_come_back_as_given(client: httpx.Client) -> None:
    batch = client.post("/v1/analyze/batch", json={"items": [{"id": "a", "text": "退款"}, {"id": 7, "text": "好"}]})
    assert [r["id"] for r in batch.json()["results"]] == ["a", 7]
    turns = [{"role": "customer", "text": "你好", "ts": 1.5}, {"role": "agent", "text": "您好", "ts": "10:02"}]
    conv = client.post("/v1/conversations/analyze", json={"id": 0, "turns": turns}).json()
    assert conv["id"] == 0 and [t["ts"] for t in conv["turns"]] == [1.5, "10:02"]


def test_app_malformed_json_is_422_not_500(client: httpx.Client) -> None:
    r = client.post("/v1/analyze", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_app_body_limit_413(client: httpx.Client) -> None:
    r = client.post("/v1/analyze", json={"text": "很" * 3000})
    assert r.status_code == 413
    assert "body" in r.json()["detail"]


def test_app_labels_show_policy_and_playbook(client: httpx.Client) -> None:
    r = client.get("/v1/labels").json()
    assert r["complaint_types"] == list(COMPLAINT_TYPES)
    assert r["policy"]["calm_first_level"] == 2
    assert "offer_options" in r["playbook"]["steps"]


def test_app_api_key_when_configured(tiny_analyzer) -> None:  # type: ignore[no-untyped-def]
    for c in _serve(Settings(api_key="s3cret"), tiny_analyzer):
        assert c.post("/v1/analyze", json={"text": "hi"}).status_code == 401
        assert c.post("/v1/analyze", json={"text": "hi"}, headers={"x-api-key": "s3cret"}).status_code == 200
        assert c.get("/healthz").status_code == 200


def test_app_model_loads_in_lifespan(tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    app = create_app(Settings(model_path=tiny_model_dir))
    assert app.state.analyzer is None  # nothing loaded at import/creation time
    with TestClient(app) as c:
        assert c.get("/readyz").status_code == 200
        assert c.post("/v1/analyze", json={"text": "請問"}).status_code == 200
        model = app.state.analyzer.model
        from model.onnx.runtime import onnxruntime_available

        assert model.backend == ("onnx" if onnxruntime_available() else "torch")  # no silent fall-back
        if model.backend == "onnx":  # the server's pool threads spin during a forward only (Settings.ort_spin)
            opts = model.session.get_session_options()
            assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "1"
            assert opts.get_session_config_entry("session.force_spinning_stop") == "1"
        batcher = app.state.analyzer.microbatcher
        lanes = Settings(model_path=tiny_model_dir).lanes() if model.backend == "onnx" else 0
        assert len(batcher.lanes) == lanes  # one-thread sessions per thread of the process (service.microbatch)
        assert batcher.max_concurrent == max(lanes, 1)
        threads = [m.session.get_session_options().intra_op_num_threads for m in app.state.analyzer.lane_models]
        assert threads == [1] * lanes
        assert f'lanes="{lanes}"' in c.get("/metrics").text  # calmfirst_model_info says how many


def test_app_conversation_state_fields(client: httpx.Client) -> None:
    body = {
        "id": "chat-1",
        "turns": [
            {"role": "customer", "text": "為什麼7號還要算錢?你們到底怎麼算的!"},
            {"role": "agent", "text": "非常抱歉造成您的困擾，我馬上幫您查詢。"},
            {"role": "customer", "text": "好，麻煩快一點"},
        ],
    }
    r = client.post("/v1/conversations/analyze", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "chat-1"
    assert [t["role"] for t in out["turns"]] == ["customer", "agent", "customer"]
    assert set(out["turns"][0]["result"]) >= {"anger", "complaint", "threat", "route", "script"}
    assert isinstance(out["turns"][1]["steps"], list) and isinstance(out["turns"][1]["mistakes"], list)
    state = out["state"]
    for key in (
        "flag",
        "escalate",
        "anger_series",
        "anger_trend",
        "peak_anger",
        "steps_taken",
        "mistakes",
        "next_step",
    ):
        assert key in state
    assert len(state["anger_series"]) == 2
    assert state["anger_trend"] in {"rising", "falling", "steady"}
    assert state["next_step"]["lang"] == "zh-Hant"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"turns": []}, "turns"),
        ({"turns": [{"role": "agent", "text": "您好"}]}, "turns"),
        ({"turns": [{"role": "boss", "text": "hi"}]}, "turns.0.role"),
        ({"turns": [{"role": "customer", "text": "  "}]}, "turns.0.text"),
        ({"turns": [{"role": "customer"}]}, "turns.0.text"),
    ],
)
def test_app_conversation_bad_input_names_field(client: httpx.Client, body: dict, field: str) -> None:
    r = client.post("/v1/conversations/analyze", json=body)
    assert r.status_code == 422
    assert field in r.json()["detail"]


def test_app_explain_returns_spans_inside_text(client: httpx.Client) -> None:
    text = "你們這什麼垃圾服務,退款拖了一個月!"
    r = client.post("/v1/analyze", json={"text": text, "explain": True})
    assert r.status_code == 200
    exp = r.json()["explanation"]
    assert exp["method"] == "occlusion" and exp["target"] == "anger.score"
    assert len(exp["char_weights"]) == len(text.replace(" ", ""))
    for span in exp["spans"]:
        assert text[span["start"] : span["end"]] == span["text"]
        assert span["weight"] > 0


def test_app_redact_masks_returned_text(client: httpx.Client) -> None:
    r = client.post("/v1/analyze", json={"text": "我電話0912345678,帳單多扣錢", "redact": True})
    assert r.status_code == 200
    assert r.json()["text"] == "我電話[PHONE],帳單多扣錢"
    r = client.post("/v1/analyze", json={"text": "我電話0912345678,帳單多扣錢"})
    assert "text" not in r.json()  # the service does not echo message text unless asked


def test_app_console_page_served(client: httpx.Client) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert "text/html" in r.headers["content-type"]
    assert "/v1/analyze" in r.text


def test_app_logs_carry_no_personal_data(tiny_analyzer, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    import logging

    text = "我的電話是0912345678身分證A123456789請回電"
    with caplog.at_level(logging.DEBUG):
        # one server answers it, one refuses it as too long: neither path may log or echo the numbers
        for settings, status in ((Settings(), 200), (Settings(max_text_chars=10), 422)):
            for c in _serve(settings, tiny_analyzer):
                r = c.post("/v1/analyze", json={"text": text})
                assert r.status_code == status, r.text
                assert "0912345678" not in r.text and "A123456789" not in r.text
                logging.getLogger("service.api.app").warning("echo %s", "0912345678 A123456789")
    assert "echo" in caplog.text  # the line was captured, masked
    assert "0912345678" not in caplog.text and "A123456789" not in caplog.text


def test_app_shutdown_stops_the_micro_batcher(tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    app = create_app(Settings(model_path=tiny_model_dir, backend="torch", microbatch_max_size=4))
    with TestClient(app) as c:
        loaded = app.state.analyzer
        assert loaded.microbatcher is not None
        assert c.post("/v1/analyze", json={"text": "請問"}).status_code == 200
    assert app.state.analyzer is None
    with pytest.raises(RuntimeError, match="closed"):
        loaded.microbatcher.submit("請問")


def test_app_single_messages_await_the_micro_batcher_and_answer_as_analyze(tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    """``POST /v1/analyze`` with micro-batching on: concurrent requests share forwards on the batcher's workers
    (``Analyzer.analyze_one``), each answer is what ``Analyzer.analyze`` gives; ``explain`` still works."""
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    texts = ["為什麼7號還要算錢?", "请问营业时间", "太离谱了，我要投诉", "你們客服態度太差了!", "包裹坏了", "好"] * 2
    app = create_app(Settings(model_path=tiny_model_dir, backend="torch", microbatch_max_size=8))
    with TestClient(app) as c:
        analyzer = app.state.analyzer
        expected = [analyzer.analyze([t], ids=[0], redact=True)[0].model_dump(mode="json") for t in texts]
        before = analyzer.microbatcher.stats.items
        with ThreadPoolExecutor(6) as pool:
            got = list(pool.map(lambda t: c.post("/v1/analyze", json={"text": t, "redact": True}), texts))
        assert analyzer.microbatcher.stats.items - before == len(texts)  # every one through the batcher
        for r, e in zip(got, expected, strict=True):
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["anger"]["probs"] == pytest.approx(e["anger"]["probs"], abs=1e-5)
            assert {k: body[k] for k in ("id", "route", "script", "text")} == {
                k: e[k] for k in ("id", "route", "script", "text")
            }
        explained = c.post("/v1/analyze", json={"text": texts[0], "explain": True})
        assert explained.status_code == 200 and explained.json()["explanation"]


def test_app_every_422_has_one_shape(client: httpx.Client) -> None:
    for path, body in [
        ("/v1/analyze", {"text": ""}),  # pydantic's validation
        ("/v1/analyze", {"text": "x" * 301}),  # the service's own limit
        ("/v1/analyze/batch", {"items": [{"text": "a"}] * 6}),
    ]:
        r = client.post(path, json=body)
        assert r.status_code == 422
        out = r.json()
        assert set(out) == {"detail", "errors"} and out["errors"][0]["field"] in out["detail"]


def test_a_language_the_playbook_lacks_is_a_422_naming_lang(tiny_analyzer) -> None:  # type: ignore[no-untyped-def]
    """A contact center's playbook without English loaded fine, then lang=en was a 500 (an outside walkthrough)."""
    import yaml

    from service.analyzer import Analyzer
    from service.routing.playbook import DEFAULT_PLAYBOOK, Playbook

    raw = yaml.safe_load(DEFAULT_PLAYBOOK.read_text(encoding="utf-8"))
    raw["languages"] = ["zh-Hant", "zh-Hans"]
    for variants in raw["steps"].values():
        for texts in variants.values():
            texts.pop("en", None)
    analyzer = Analyzer(tiny_analyzer.model, playbook=Playbook.from_dict(raw))
    for client in _serve(Settings(), analyzer):
        turns = [{"role": "customer", "text": "為什麼7號還要算錢?"}]
        for path, body in (
            ("/v1/analyze", {"text": "為什麼7號還要算錢?", "lang": "en"}),
            ("/v1/analyze/batch", {"items": [{"text": "為什麼7號還要算錢?"}], "lang": "en"}),
            ("/v1/conversations/analyze", {"turns": turns, "lang": "en"}),
        ):
            r = client.post(path, json=body)
            assert r.status_code == 422, (path, r.text)
            assert [e["field"] for e in r.json()["errors"]] == ["lang"] and "zh-Hant, zh-Hans" in r.json()["detail"]
        ok = client.post("/v1/analyze", json={"text": "為什麼7號還要算錢?", "lang": "zh-Hans"})
        assert ok.status_code == 200 and ok.json()["route"]["next_step"]["lang"] == "zh-Hans"
