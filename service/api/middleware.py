"""The HTTP edge: request ids, API-key auth, CORS, and the body guard, as plain ASGI middleware.

Outermost first:

1. :class:`RequestIdMiddleware`: every answer carries ``X-Request-ID`` (the client's own when it is
   a sane token, else a fresh one); the id is on every log line of the request; an unexpected
   exception becomes a JSON 500 naming the id (and is logged, masked, with its traceback).
2. CORS (Starlette's), only when ``CALMFIRST_CORS_ORIGINS`` lists origins: off by default.
3. :class:`ApiKeyMiddleware`: with ``CALMFIRST_API_KEY`` set, every path except
   ``CALMFIRST_PUBLIC_PATHS`` (``/healthz``, ``/readyz`` and the console page by default) wants the key
   in ``x-api-key``, compared in constant time; new routes are covered without doing anything.
4. :class:`BodyGuard`: what the routes' models cannot see. A body over ``max_body_bytes`` is a 413
   (on ``Content-Length`` before reading, or while reading a chunked body); a body that is not JSON
   (content type), not in a JSON encoding (UTF-8, or UTF-16/32 as RFC 8259 detects), not parseable,
   nested too deeply, holding an over-long number or a lone surrogate is a 415/422 naming ``body`` or
   the field. The body is read once and replayed.
5. :class:`LoadShedder`: with ``max_inflight`` POST requests already being answered, the next one is a
   503 with ``Retry-After`` at once. Why: past what the cores can score, a queue only grows, every
   answer in it comes later, and clients time out on work the server still does; a fast 503 lets a
   load balancer or the client retry elsewhere or later, while the requests already admitted keep
   their latency. Inside the API key check (a client without the key learns nothing about the load)
   and inside the body guard: a request counts only once its body has arrived, so clients that send
   slowly cannot hold the slots and shut everyone else out.

Every early answer first *drains* what the client is still sending (reads and discards it, up to
``drain_max_bytes`` and ``drain_timeout_s``), as nginx's lingering close does: a server that answers
and closes with unread data in its socket makes the kernel reset the connection, and a client still
busy sending its 12 MB then sees "connection reset" instead of the 413.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.middleware.cors import CORSMiddleware

from service.api.logs import bind_request_id, unbind_request_id
from service.api.schemas import ACTIVE_LIMITS, Limits
from service.settings import Settings
from service.text import has_surrogate, printable

if TYPE_CHECKING:
    from fastapi import FastAPI

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: A client's request id is honoured when it is 1-128 of these characters (UUIDs, trace ids, ULIDs).
_VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
#: A JSON escape that may encode half of a surrogate pair; only then is the parsed body walked.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_BODY_METHODS = {"POST", "PUT", "PATCH"}


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


def _json_bytes(content: dict[str, Any]) -> bytes:
    return json.dumps(content, ensure_ascii=False).encode("utf-8")


async def drain(receive: Receive, *, max_bytes: int, timeout_s: float) -> bool:
    """Read and discard the rest of the request body; True when all of it was read in bounds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    read = 0
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        try:
            message = await asyncio.wait_for(receive(), remaining)
        except TimeoutError:
            return False
        if message["type"] == "http.disconnect":
            return True
        read += len(message.get("body", b""))
        if not message.get("more_body", False):
            return True
        if read > max_bytes:
            return False


async def answer(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    content: dict[str, Any],
    settings: Settings,
    *,
    body_pending: bool = True,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """An early JSON answer; the unread body is drained first so the client can read the answer."""
    complete = True
    expects_continue = (_header(scope, b"expect") or b"").lower() == b"100-continue"
    if body_pending and scope.get("method") in _BODY_METHODS:
        if expects_continue:
            complete = False  # the client waits for "100 Continue" before sending: it will send nothing
        else:
            complete = await drain(receive, max_bytes=settings.drain_max_bytes, timeout_s=settings.drain_timeout_s)
    body = _json_bytes(content)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(headers or ()),
    ]
    if not complete:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _problem(field: str, message: str) -> dict[str, Any]:
    """The one 422 shape (``service.api.errors``): a summary naming the field, and the problem."""
    field, message = printable(field), printable(message)
    return {"detail": f"{field}: {message}", "errors": [{"field": field, "message": message}]}


# ------------------------------------------------------------------ request ids
class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        honoured = given is not None and _VALID_REQUEST_ID.fullmatch(given) is not None
        rid = given.decode("ascii") if given is not None and honoured else uuid.uuid4().hex
        tokens = bind_request_id(rid, generated=not honoured)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message["headers"] = [*headers, (b"x-request-id", rid.encode("ascii"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if not started:  # answer in the API's shape; the server still logs the (masked) traceback
                body = _json_bytes({"detail": f"internal error (request id {rid})"})
                await send_with_id(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", b"%d" % len(body)),
                            (b"connection", b"close"),  # the server drops the connection after an error
                        ],
                    }
                )
                await send_with_id({"type": "http.response.body", "body": body, "more_body": False})
            raise
        finally:
            unbind_request_id(tokens)


# ------------------------------------------------------------------ API key
def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def key_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison (of digests, so not even the key's length leaks)."""
    return hmac.compare_digest(_digest(given or ""), _digest(expected))


def is_public(path: str, settings: Settings) -> bool:
    """Paths served without the key: exact entries of ``public_paths``, or prefixes ending in ``*``."""
    for entry in settings.public_paths:
        if entry.endswith("*") and path.startswith(entry[:-1]):
            return True
        if path == entry:
            return True
    return False


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        expected = self.settings.api_key
        if scope["type"] != "http" or expected is None or is_public(scope["path"], self.settings):
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-api-key")
        if not key_matches(given.decode("latin-1") if given is not None else None, expected):
            await answer(scope, receive, send, 401, {"detail": "x-api-key: missing or wrong API key"}, self.settings)
            return
        await self.app(scope, receive, send)


# ------------------------------------------------------------------ load shedding
class LoadShedder:
    """Admits at most ``settings.max_inflight`` POST requests at once; the next gets a 503 at once.

    The count lives in this process's event loop (every request enters and leaves here on it, so
    no lock); with ``--workers N`` each worker has its own limit. GET requests (probes, metrics,
    docs) are never shed: a busy server must still answer its health checks.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.limit = settings.max_inflight
        self.inflight = 0
        self.shed = 0  # answered 503 since start (for tests; /metrics counts them under their route)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.limit or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.limit:
            self.shed += 1
            retry = str(self.settings.retry_after_s)
            content = {
                "detail": f"server busy: {self.limit} requests already in progress (max_inflight); "
                f"retry after {retry} s"
            }
            await answer(scope, receive, send, 503, content, self.settings, headers=[(b"retry-after", retry.encode())])
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


# ------------------------------------------------------------------ body guard
@dataclass
class BodyProblem:
    status: int
    content: dict[str, Any]


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


def _lone_surrogate_path(value: Any) -> str | None:
    """Dotted path of the first string (or key) holding a lone surrogate, iteratively (no recursion)."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, str):
            if has_surrogate(v):
                return path or "body"
        elif isinstance(v, dict):
            for k, item in reversed(list(v.items())):
                sub = f"{path}.{k}" if path else str(k)
                if has_surrogate(str(k)):
                    return sub
                stack.append((sub, item))
        elif isinstance(v, list):
            for i in range(len(v) - 1, -1, -1):
                stack.append((f"{path}.{i}" if path else str(i), v[i]))
    return None


def inspect_json(body: bytes) -> BodyProblem | None:
    """Why a JSON body cannot go to the routes (encoding, syntax, depth, numbers, surrogates), or None.

    An empty body is left to the routes (their 422 names the missing fields).
    """
    if not body:
        return None
    encoding = json.detect_encoding(body)
    try:
        text = body.decode(encoding)
    except UnicodeDecodeError as e:
        bad = body[e.start : e.start + 1].hex()
        return BodyProblem(422, _problem("body", f"not valid {encoding.upper()}: byte 0x{bad} at offset {e.start}"))
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as e:
        return BodyProblem(422, _problem("body", f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"))
    except RecursionError:
        return BodyProblem(422, _problem("body", "JSON nested too deeply"))
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        return BodyProblem(422, _problem("body", f"a number cannot be read ({str(e).split(';')[0]})"))
    if _SURROGATE_ESCAPE.search(text):
        path = _lone_surrogate_path(parsed)
        if path is not None:
            return BodyProblem(
                422, _problem(path, "invalid Unicode: a lone surrogate (send the character, or a valid pair)")
            )
    return None


class BodyGuard:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.limits = Limits(max_items=settings.max_batch_items, max_text_chars=settings.max_text_chars)

    async def _reject(self, scope: Scope, receive: Receive, send: Send, problem: BodyProblem, pending: bool) -> None:
        await answer(scope, receive, send, problem.status, problem.content, self.settings, body_pending=pending)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        limit = self.settings.max_body_bytes
        too_big = BodyProblem(413, {"detail": f"body: larger than the limit of {limit} bytes"})
        declared = _header(scope, b"content-length")
        size = 0
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = -1
            if size < 0:
                problem = BodyProblem(400, {"detail": "content-length: not a number"})
                await self._reject(scope, receive, send, problem, pending=False)
                return
            if size > limit:
                await self._reject(scope, receive, send, too_big, pending=True)
                return
        no_body = size == 0 if declared is not None else _header(scope, b"transfer-encoding") is None
        if no_body:
            await self.app(scope, receive, send)  # no body: the route says what is missing (or 405)
            return
        content_type = _header(scope, b"content-type")
        if content_type is None or not _is_json(content_type):
            given = content_type.decode("latin-1") if content_type is not None else "none"
            problem = BodyProblem(415, {"detail": f"content-type: expected application/json, got {given}"})
            await self._reject(scope, receive, send, problem, pending=True)
            return

        chunks: list[bytes] = []
        size = 0  # now: what was read
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._reject(scope, receive, send, too_big, pending=message.get("more_body", False))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        found = inspect_json(body)
        if found is not None:
            await self._reject(scope, receive, send, found, pending=False)
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        token = ACTIVE_LIMITS.set(self.limits)
        try:
            await self.app(scope, replay, send)
        finally:
            ACTIVE_LIMITS.reset(token)


def install_middleware(app: FastAPI, settings: Settings) -> None:
    """The edge (``service.api.middleware``), added innermost first: load, body, key, CORS (if configured),
    request id (the outermost, so every answer carries an id)."""
    app.add_middleware(LoadShedder, settings=settings)
    app.add_middleware(BodyGuard, settings=settings)
    app.add_middleware(ApiKeyMiddleware, settings=settings)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["content-type", "x-api-key", "x-request-id"],
            expose_headers=["x-request-id"],
        )
    app.add_middleware(RequestIdMiddleware)
