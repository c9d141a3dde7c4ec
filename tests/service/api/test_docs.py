"""``/docs`` and ``/redoc`` render offline: every script, style and icon they load comes from this server."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from service.api import create_app
from service.settings import Settings

ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url\(\s*["']?([^"')]+)""")
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def network_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection to an address other than loopback fails, as on a closed contact-center network."""
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if host not in LOOPBACK:
            raise OSError(f"network is off in this test (tried {address!r})")
        real_connect(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", _loopback_only(socket.getaddrinfo))


def _loopback_only(real):  # type: ignore[no-untyped-def]
    def getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host not in LOOPBACK:
            raise socket.gaierror(f"network is off in this test (tried to resolve {host!r})")
        return real(host, *args, **kwargs)

    return getaddrinfo


@pytest.fixture()
def client(tiny_analyzer, network_off) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(Settings(), analyzer=tiny_analyzer), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            yield c
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def _assets(html: str) -> list[str]:
    return [a or b for a, b in ASSET.findall(html)]


@pytest.mark.parametrize(
    ("page", "expected"),
    [("/docs", {"swagger-ui-bundle.js", "swagger-ui.css"}), ("/redoc", {"redoc.standalone.js"})],
)
def test_docs_pages_load_only_local_assets(client: httpx.Client, page: str, expected: set[str]) -> None:
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assets = _assets(r.text)
    assert "/openapi.json" in r.text
    assert not [a for a in assets if "://" in a or a.startswith("//")], f"{page} loads from another host: {assets}"
    assert "fonts.googleapis" not in r.text and "cdn" not in r.text.lower()
    assert expected <= {a.rsplit("/", 1)[-1] for a in assets}
    for asset in assets:
        got = client.get(asset)
        assert got.status_code == 200, asset
        assert len(got.content) > (100_000 if asset.endswith(".js") else 100), asset
        if asset.endswith(".js"):
            assert "javascript" in got.headers["content-type"]
        elif asset.endswith(".css"):
            assert got.headers["content-type"].startswith("text/css")
    spec = client.get("/openapi.json")
    assert spec.status_code == 200 and "/v1/analyze" in spec.json()["paths"]


def test_network_really_is_off(network_off) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises((OSError, httpx.ConnectError), match="network is off"):
        httpx.get("https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css", timeout=2)
