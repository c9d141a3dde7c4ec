"""The HTTP edge as a hostile client meets it: bad bodies get a 4xx naming the field, fast, never a 5xx;
oversized bodies are drained and answered 413; API key, CORS and request ids.

Everything goes through a real uvicorn server on loopback (``live.py``) and, for the oversized
bodies, a raw socket: an HTTP library would hide exactly what is being tested.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from service.settings import Settings
from tests.service.api.live import live_client, live_server
from tests.service.api.prom import samples, value

JSON = {"content-type": "application/json"}
#: A hostile request must be answered within this many seconds (2 shared cores, generous).
FAST_S = 2.0


@pytest.fixture(scope="module")
def client(tiny_analyzer) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    # 4 MB bodies: big enough that the count limits, not the body limit, answer the 100,000-item batch
    settings = Settings(max_body_bytes=4_000_000, max_batch_items=256, max_text_chars=5000)
    with live_client(settings, tiny_analyzer) as c:
        yield c


@pytest.fixture(scope="module")
def default_url(tiny_analyzer) -> Iterator[str]:  # type: ignore[no-untyped-def]
    with live_server(Settings(), tiny_analyzer) as url:  # the shipped limits: 1 MB bodies
        yield url


@pytest.fixture(scope="module")
def guarded(tiny_analyzer) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    settings = Settings(api_key="s3cret", cors_origins=["https://console.example"])
    with live_client(settings, tiny_analyzer) as c:
        yield c


def _deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


HOSTILE: list[tuple[str, str, bytes, int, str]] = [
    # (name, path, raw body, status, field named in the answer)
    ("lone surrogate in text", "/v1/analyze", b'{"text": "\\ud800abc"}', 422, "text"),
    ("lone low surrogate", "/v1/analyze", b'{"text": "abc\\udfff", "redact": true}', 422, "text"),
    (
        "lone surrogate in an id",
        "/v1/analyze/batch",
        b'{"items": [{"id": "\\udc00", "text": "hi"}]}',
        422,
        "items.0.id",
    ),
    ("lone surrogate in a key", "/v1/analyze", b'{"text": "hi", "\\ud800": 1}', 422, "\\ud800"),
    (
        "lone surrogate in a turn's ts",
        "/v1/conversations/analyze",
        b'{"turns": [{"role": "customer", "text": "hi", "ts": "\\ud83d"}]}',
        422,
        "turns.0.ts",
    ),
    ("invalid UTF-8", "/v1/analyze", b'{"text": "\xff\xfe\xc3("}', 422, "body"),
    ("truncated UTF-8 sequence", "/v1/analyze", b'{"text": "\xe4\xbd"}', 422, "body"),
    ("NUL", "/v1/analyze", b'{"text": "abc\\u0000def"}', 422, "text"),
    ("escape sequence", "/v1/analyze", b'{"text": "\\u001b[31mred"}', 422, "text"),
    ("C1 control", "/v1/analyze", b'{"text": "ab\\u0085"}', 422, "text"),
    ("only controls", "/v1/analyze", b'{"text": "\\u0000\\u0001\\u0002"}', 422, "text"),
    (
        "NUL in a batch item",
        "/v1/analyze/batch",
        b'{"items": [{"text": "ok"}, {"text": "a\\u0000"}]}',
        422,
        "items.1.text",
    ),
    (
        "NUL in a turn",
        "/v1/conversations/analyze",
        b'{"turns": [{"role": "customer", "text": "\\u0000"}]}',
        422,
        "turns.0.text",
    ),
    ("100,000 levels of nesting", "/v1/analyze", _deep(100_000), 422, "body"),
    ("deep nesting inside a field", "/v1/analyze", b'{"text": "hi", "lang": ' + _deep(50_000) + b"}", 422, "body"),
    ("nesting the parser takes", "/v1/analyze", b'{"text": "hi", "lang": ' + _deep(500) + b"}", 422, "lang"),
    ("5000-digit integer", "/v1/analyze/batch", b'{"items": [{"id": ' + b"9" * 5000 + b', "text": "a"}]}', 422, "body"),
    ("1e999 as a boolean", "/v1/analyze", b'{"text": "hi", "explain": 1e999}', 422, "explain"),
    (
        "Infinity as ts",
        "/v1/conversations/analyze",
        b'{"turns": [{"role": "customer", "text": "a", "ts": 1e999}]}',
        422,
        "turns.0.ts",
    ),
    (
        "NaN as ts",
        "/v1/conversations/analyze",
        b'{"turns": [{"role": "customer", "text": "a", "ts": NaN}]}',
        422,
        "turns.0.ts",
    ),
    ("huge float as id", "/v1/analyze/batch", b'{"items": [{"id": 1e308, "text": "a"}]}', 422, "items.0.id"),
    ("not JSON", "/v1/analyze", b"{text: hi}", 422, "body"),
    ("JSON but a list", "/v1/analyze", b'["text"]', 422, "body"),
    ("JSON null", "/v1/analyze", b"null", 422, "body"),
    ("empty body", "/v1/analyze", b"", 422, "body"),
    ("text is an object", "/v1/analyze", b'{"text": {"a": 1}}', 422, "text"),
    ("UTF-8 BOM and garbage", "/v1/analyze", b"\xef\xbb\xbf\x00\x00", 422, "body"),
]


@pytest.mark.parametrize(("name", "path", "body", "status", "field"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_middleware_hostile_body_is_4xx_naming_the_field(
    client: httpx.Client, name: str, path: str, body: bytes, status: int, field: str
) -> None:
    started = time.perf_counter()
    r = client.post(path, content=body, headers=JSON)
    elapsed = time.perf_counter() - started
    assert r.status_code == status, r.text
    out = r.json()
    assert set(out) == {"detail", "errors"}
    # a union field (id: string or integer) is named with the member tried: items.0.id.int
    assert any(e["field"] == field or e["field"].startswith(field + ".") for e in out["errors"]), out
    assert elapsed < FAST_S, f"{name}: {elapsed:.2f} s"
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml"],
)
def test_middleware_wrong_content_type_is_415(client: httpx.Client, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    r = client.post("/v1/analyze", content=b'{"text": "hi"}', headers=headers)
    assert r.status_code == 415
    assert r.json()["detail"].startswith("content-type:")


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/problem+json"])
def test_middleware_json_content_types_accepted(client: httpx.Client, content_type: str) -> None:
    r = client.post("/v1/analyze", content=b'{"text": "hi"}', headers={"content-type": content_type})
    assert r.status_code == 200


@pytest.mark.parametrize(
    "text", ["tab\tand\nnewline\r\n", "😀 a valid pair", "\\ud800 is just text here", "全形　空白", "\u200b zero width"]
)
def test_middleware_clean_texts_still_pass(client: httpx.Client, text: str) -> None:
    r = client.post("/v1/analyze", json={"text": text, "explain": True, "redact": True})
    assert r.status_code == 200, r.text
    assert r.json()["text"] == text


def test_middleware_valid_surrogate_pair_escape_passes(client: httpx.Client) -> None:
    r = client.post("/v1/analyze", content=b'{"text": "\\ud83d\\ude00 ok", "redact": true}', headers=JSON)
    assert r.status_code == 200 and r.json()["text"] == "😀 ok"


def test_middleware_20000_turn_conversation_is_fast_422(client: httpx.Client) -> None:
    body = json.dumps({"turns": [{"role": "customer", "text": "你好"}] * 20_000}).encode()
    started = time.perf_counter()
    r = client.post("/v1/conversations/analyze", content=body, headers=JSON)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "turns"
    assert "more than 256 turns" in r.json()["detail"]
    assert time.perf_counter() - started < FAST_S


def test_middleware_100000_item_batch_is_fast_4xx(client: httpx.Client, default_url: str) -> None:
    body = json.dumps({"items": [{"text": "a"}] * 100_000}).encode()
    started = time.perf_counter()
    r = client.post("/v1/analyze/batch", content=body, headers=JSON)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "items"
    assert time.perf_counter() - started < FAST_S
    # with the default 1 MB body limit the same batch is a 413 naming the body
    r = httpx.post(f"{default_url}/v1/analyze/batch", content=body, headers=JSON)
    assert r.status_code == 413 and r.json()["detail"].startswith("body:")


def test_middleware_many_bad_items_answer_is_bounded(client: httpx.Client) -> None:
    r = client.post("/v1/analyze/batch", json={"items": [{"id": i} for i in range(200)]})
    assert r.status_code == 422
    out = r.json()
    assert len(out["errors"]) == 20 and out["errors"][0]["field"] == "items.0.text"
    assert out["detail"].endswith("and 180 more problems")


# ------------------------------------------------------------------ oversized bodies, raw sockets
def _raw_request(port: int, head: bytes, body_chunks: Iterator[bytes] | None = None, *, timeout: float = 30) -> bytes:
    """Send ``head`` then every chunk (blocking, as a naive client does), then read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head)
        for chunk in body_chunks or ():
            s.sendall(chunk)
        return _read_response(s)


def _read_response(s: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        part = s.recv(65536)
        if not part:
            return data
        data += part
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
        0,
    )
    while len(rest) < length:
        part = s.recv(65536)
        if not part:
            break
        rest += part
    return head + b"\r\n\r\n" + rest


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


TWELVE_MB = 12 * 1024 * 1024


def _chunks(total: int, size: int = 256 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        yield b"x" * n
        sent += n


def test_middleware_12mb_body_reads_413_not_a_reset(default_url: str) -> None:
    url = default_url
    port = _port(url)
    head = (
        b"POST /v1/analyze HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % TWELVE_MB
    )
    for _ in range(3):  # "sometimes": it must hold every time
        answer = _raw_request(port, head, _chunks(TWELVE_MB))
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"larger than the limit" in answer
        assert b"x-request-id:" in answer.lower()
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_middleware_12mb_chunked_body_reads_413(default_url: str) -> None:
    url = default_url
    head = (
        b"POST /v1/analyze/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )

    def chunked() -> Iterator[bytes]:
        for c in _chunks(TWELVE_MB):
            yield b"%x\r\n" % len(c) + c + b"\r\n"
        yield b"0\r\n\r\n"

    answer = _raw_request(_port(url), head, chunked())
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_middleware_drained_413_keeps_the_connection_usable(default_url: str) -> None:
    with socket.create_connection(("127.0.0.1", _port(default_url))) as s:
        big = 2 * 1024 * 1024
        s.sendall(b"POST /v1/analyze HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        s.sendall(b"Content-Length: %d\r\n\r\n" % big)
        for c in _chunks(big):
            s.sendall(c)
        assert _read_response(s).startswith(b"HTTP/1.1 413")
        body = b'{"text": "hi"}'
        s.sendall(b"POST /v1/analyze HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        s.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        assert _read_response(s).startswith(b"HTTP/1.1 200")


def test_middleware_expect_continue_gets_413_before_sending(default_url: str) -> None:
    url = default_url
    head = (
        b"POST /v1/analyze HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % TWELVE_MB
    )
    started = time.perf_counter()
    answer = _raw_request(_port(url), head)  # sends no body: waits for "100 Continue" that never comes
    assert answer.startswith(b"HTTP/1.1 413") and time.perf_counter() - started < FAST_S


def test_middleware_unauthorised_big_body_reads_401(guarded: httpx.Client) -> None:
    url = str(guarded.base_url).rstrip("/")
    size = 3 * 1024 * 1024
    head = (
        b"POST /v1/analyze HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % size
    )
    assert _raw_request(_port(url), head, _chunks(size)).startswith(b"HTTP/1.1 401")


# ------------------------------------------------------------------ API key
def test_middleware_api_key_covers_every_route_but_the_public_ones(guarded: httpx.Client) -> None:
    c = guarded
    for method, path in [
        ("POST", "/v1/analyze"),
        ("POST", "/v1/analyze/batch"),
        ("POST", "/v1/conversations/analyze"),
        ("GET", "/v1/labels"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/redoc"),
        ("GET", "/no/such/route"),
    ]:
        r = c.request(method, path, json={"text": "hi"} if method == "POST" else None)
        assert r.status_code == 401, (method, path)
        assert r.json() == {"detail": "x-api-key: missing or wrong API key"}
        wrong = c.request(method, path, headers={"x-api-key": "s3cre"})
        assert wrong.status_code == 401
    for path in ["/healthz", "/readyz", "/"]:
        assert c.get(path).status_code == 200, path
    ok = {"x-api-key": "s3cret"}
    assert c.post("/v1/analyze", json={"text": "hi"}, headers=ok).status_code == 200
    assert c.get("/openapi.json", headers=ok).status_code == 200
    assert c.get("/v1/labels", headers=ok).status_code == 200


def test_middleware_public_paths_are_configurable() -> None:
    from service.api.middleware import is_public

    settings = Settings(api_key="k", public_paths=["/healthz", "/openapi.json", "/docs*"])
    assert is_public("/healthz", settings) and is_public("/openapi.json", settings)
    assert is_public("/docs", settings) and is_public("/docs/oauth2-redirect", settings)
    assert not is_public("/readyz", settings) and not is_public("/", settings)
    assert not is_public("/healthz/x", settings) and not is_public("/v1/analyze", settings)
    default = Settings(api_key="k")
    assert [p for p in ("/healthz", "/readyz", "/", "/docs", "/v1/labels") if is_public(p, default)] == [
        "/healthz",
        "/readyz",
        "/",
    ]


def test_middleware_key_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    from service.api import middleware

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(middleware.hmac, "compare_digest", spy)
    assert middleware.key_matches("abc", "abc") and not middleware.key_matches("abd", "abc")
    assert not middleware.key_matches(None, "abc") and not middleware.key_matches("abcd", "abc")
    assert len(calls) == 4
    assert all(len(a) == len(b) == 32 for a, b in calls)  # digests: the key's length does not leak either


# ------------------------------------------------------------------ CORS
def test_middleware_cors_off_by_default(client: httpx.Client) -> None:
    origin = {"origin": "https://evil.example"}
    r = client.options("/v1/analyze", headers={**origin, "access-control-request-method": "POST"})
    assert "access-control-allow-origin" not in r.headers
    r = client.post("/v1/analyze", json={"text": "hi"}, headers=origin)
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_middleware_cors_configured_origins_only(guarded: httpx.Client) -> None:
    c = guarded
    pre = {
        "origin": "https://console.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type, x-api-key",
    }
    r = c.options("/v1/analyze", headers=pre)  # a preflight carries no key: it must not need one
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://console.example"
    assert "x-api-key" in r.headers["access-control-allow-headers"].lower()
    r = c.post("/v1/analyze", json={"text": "hi"}, headers={"origin": "https://console.example", "x-api-key": "s3cret"})
    assert r.headers["access-control-allow-origin"] == "https://console.example"
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
    r = c.options("/v1/analyze", headers={**pre, "origin": "https://evil.example"})
    assert r.headers.get("access-control-allow-origin") != "https://evil.example"


# ------------------------------------------------------------------ request ids
def test_middleware_request_id_generated_or_honoured(client: httpx.Client) -> None:
    r = client.get("/healthz")
    rid = r.headers["x-request-id"]
    assert len(rid) == 32 and int(rid, 16) >= 0
    assert client.get("/healthz").headers["x-request-id"] != rid
    given = "trace-42:abc.DEF_9"
    assert client.get("/healthz", headers={"x-request-id": given}).headers["x-request-id"] == given
    for bad in ["has space", "x" * 129, "semi;colon", "new\\nline", "中文"]:
        got = client.get("/healthz", headers={"x-request-id": bad.encode("utf-8")}).headers["x-request-id"]
        assert got != bad and len(got) == 32


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("POST", "/v1/analyze", {"json": {"text": ""}}, 422),
        ("POST", "/v1/analyze", {"content": b"\xff", "headers": JSON}, 422),
        ("POST", "/v1/analyze", {"content": b"{}", "headers": {"content-type": "text/plain"}}, 415),
        ("POST", "/v1/analyze", {"content": b"x" * 4_000_001, "headers": JSON}, 413),
        ("GET", "/nowhere", {}, 404),
        ("POST", "/v1/analyze", {"json": {"text": "hi"}}, 200),
    ],
)
def test_middleware_request_id_on_every_answer(
    client: httpx.Client, method: str, path: str, kwargs: dict, status: int
) -> None:
    r = client.request(method, path, headers={"x-request-id": "req-1", **kwargs.pop("headers", {})}, **kwargs)
    assert r.status_code == status
    assert r.headers["x-request-id"] == "req-1"


def test_middleware_request_id_on_log_records(exploding: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        exploding.get("/v1/labels", headers={"x-request-id": "abc-123"})
        generated = exploding.get("/readyz").headers["x-request-id"]
    ids = {getattr(r, "request_id", None) for r in caplog.records if r.name == "uvicorn.access"}
    assert {"abc-123", generated} <= ids


def test_middleware_log_config_puts_the_id_on_every_line() -> None:
    from service.api.logs import bind_request_id, install_request_id_logging, log_config, unbind_request_id

    install_request_id_logging()
    config = log_config()
    formatter = logging.Formatter(config["formatters"]["default"]["fmt"].replace("%(levelprefix)s", "%(levelname)s"))

    def line(rid: str, *, generated: bool) -> str:
        tokens = bind_request_id(rid, generated=generated)
        try:
            record = logging.getLogger("service.x").makeRecord("service.x", logging.INFO, __file__, 1, "hi", (), None)
        finally:
            unbind_request_id(tokens)
        return formatter.format(record)

    assert "[rid-7]" in line("rid-7", generated=False)
    # a client's id is masked like any logged text; the server's own random hex is left searchable
    assert "[[PHONE]]" in line("0912345678", generated=False)
    assert "[a1b2c3d4e5f60912345678abcdef0123]" in line("a1b2c3d4e5f60912345678abcdef0123", generated=True)
    assert all("request_id" in h["filters"] for h in config["handlers"].values())


# ------------------------------------------------------------------ unexpected errors
class _Exploding:
    """An analyzer whose every call fails, with personal data in the exception's message."""

    def __init__(self, real):  # type: ignore[no-untyped-def]
        self.real = real

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.real, name)

    def analyze(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("cannot score the message of 0912345678 / A123456789")


@pytest.fixture(scope="module")
def exploding(tiny_analyzer) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    """A server that logs like a real one (access log on) and whose analyzer raises."""
    with pytest.MonkeyPatch.context() as mp:
        # uvicorn's own logging config stops its records at the "uvicorn" loggers; caplog listens at the root
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            mp.setattr(logging.getLogger(name), "propagate", True)
        with live_client(Settings(), _Exploding(tiny_analyzer), log_level="info", log_config=None) as c:
            yield c


def test_middleware_unexpected_error_is_json_500_with_masked_log(
    exploding: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        r = exploding.post("/v1/analyze", json={"text": "hi"}, headers={"x-request-id": "boom-1"})
        assert r.status_code == 500
        assert r.json() == {"detail": "internal error (request id boom-1)"}
        assert r.headers["x-request-id"] == "boom-1" and r.headers["connection"] == "close"
        assert exploding.get("/healthz").status_code == 200
    assert "RuntimeError" in caplog.text and "[PHONE]" in caplog.text
    assert "0912345678" not in caplog.text and "A123456789" not in caplog.text


def test_middleware_request_id_is_masked_in_logs(exploding: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        r = exploding.get("/readyz", headers={"x-request-id": "A123456789"})
    assert r.headers["x-request-id"] == "A123456789"  # the client gets its own id back
    ids = {getattr(rec, "request_id", None) for rec in caplog.records if rec.name == "uvicorn.access"}
    assert "[ID]" in ids and "A123456789" not in ids


def test_middleware_soak_hostile_bodies_get_their_4xx(default_url: str) -> None:
    """What ``make soak`` sends as its 5% hostile bodies, against the shipped limits: each its 4xx, fast."""
    from bench.soak_data import HOSTILE

    with httpx.Client(base_url=default_url, timeout=60) as c:
        for name, path, body, content_type, ok in HOSTILE:
            started = time.perf_counter()
            r = c.post(path, content=body, headers={"content-type": content_type})
            assert r.status_code in ok, (name, r.status_code, r.text[:200])
            assert time.perf_counter() - started < FAST_S, name


def test_middleware_sheds_load_past_max_inflight_with_503(tiny_model) -> None:  # type: ignore[no-untyped-def]
    """Two batch requests held inside the model fill ``max_inflight=2``: the third POST is a 503 at once, with
    Retry-After and the setting named; GETs (probes, metrics) still answer; once the two finish, POSTs pass again
    and the held ones got their full answers."""
    from concurrent.futures import ThreadPoolExecutor

    from service.analyzer import Analyzer
    from tests.service.api.live import HeldModel

    held = HeldModel(tiny_model)
    analyzer = Analyzer(held)  # type: ignore[arg-type]
    entered, release = held.entered, held.release
    body = {"items": [{"id": "a", "text": "你们的快递到现在还没到!"}, {"id": "b", "text": "謝謝"}]}
    settings = Settings(max_inflight=2, retry_after_s=3)
    with live_client(settings, analyzer) as c, ThreadPoolExecutor(2) as pool:
        try:
            pending = [pool.submit(c.post, "/v1/analyze/batch", json=body) for _ in range(2)]
            for _ in range(2):
                assert entered.acquire(timeout=30), "a held request never reached the model"
            started = time.perf_counter()
            shed = c.post("/v1/analyze", json={"text": "什麼態度!我要投訴你"})
            assert time.perf_counter() - started < FAST_S
            assert shed.status_code == 503
            assert shed.headers["retry-after"] == "3"
            assert "max_inflight" in shed.json()["detail"]
            assert shed.headers["x-request-id"]
            assert c.get("/healthz").status_code == 200
            assert c.get("/readyz").status_code == 200
            assert c.post("/v1/no-such-route", json={}).status_code == 503  # full is full
            metrics = samples(c.get("/metrics").text)
            assert value(metrics, "calmfirst_http_requests_total", route="/v1/analyze", status="503") == 1
            assert value(metrics, "calmfirst_http_requests_total", route="<unmatched>", status="503") == 1
        finally:
            release.set()
        for fut in pending:
            answer = fut.result(timeout=60)
            assert answer.status_code == 200
            assert [r["id"] for r in answer.json()["results"]] == ["a", "b"]
        after = c.post("/v1/analyze/batch", json=body)
        assert after.status_code == 200


def test_middleware_max_inflight_zero_means_no_limit() -> None:
    import asyncio

    from service.api.middleware import LoadShedder

    calls = 0

    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)

    async def run(limit: int) -> int:
        nonlocal calls
        calls = 0
        shedder = LoadShedder(app, Settings(max_inflight=limit))
        sent: list[dict] = []  # type: ignore[type-arg]

        async def receive() -> dict:  # type: ignore[type-arg]
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message) -> None:  # type: ignore[no-untyped-def]
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v1/analyze", "headers": []}
        await asyncio.gather(*(shedder(scope, receive, send) for _ in range(5)))
        assert shedder.shed == 5 - calls
        assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [503] * (5 - calls)
        return calls

    assert asyncio.run(run(0)) == 5
    assert asyncio.run(run(3)) == 3


def test_middleware_slow_senders_hold_no_inflight_slot(tiny_analyzer) -> None:  # type: ignore[no-untyped-def]
    """A request counts against ``max_inflight`` only once its body has arrived: clients that send their bodies
    slowly (or never finish) cannot fill the slots and get everyone else a 503."""
    from urllib.parse import urlsplit

    with live_server(Settings(max_inflight=1), tiny_analyzer) as url:
        port = urlsplit(url).port
        slow = []
        try:
            for _ in range(3):
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                s.sendall(
                    b"POST /v1/analyze HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                    b"content-length: 100\r\n\r\n" + b'{"text": "'  # 10 of the 100 bytes, and then nothing
                )
                slow.append(s)
            time.sleep(0.3)
            with httpx.Client(base_url=url, timeout=30) as c:
                for _ in range(3):
                    r = c.post("/v1/analyze", json={"text": "快递还没到!"})
                    assert r.status_code == 200, r.text
        finally:
            for s in slow:
                s.close()
