"""Request ids in the server's logs: the id of the request being served, on every log record.

:data:`REQUEST_ID` holds the id while a request is served (set by the request-id middleware through
:func:`bind_request_id`; it follows the request into the thread pool, since contextvars are copied
there). Every log record gets it as ``record.request_id`` (``-`` outside a request; a client's own
id masked like every log line, since a client may send a phone number as its id), so a format can
say ``%(request_id)s``;
:func:`log_config` is uvicorn's logging config with the id in every line, used by ``calmfirst serve``.
"""

from __future__ import annotations

import copy
import functools
import logging
from contextvars import ContextVar, Token
from typing import Any

from service.redact import redact

REQUEST_ID: ContextVar[str] = ContextVar("calmfirst_request_id", default="-")
#: the id as log lines show it: a client's own id masked like any logged text, the server's own as it is
LOGGED_ID: ContextVar[str] = ContextVar("calmfirst_logged_request_id", default="-")

_installed = False


@functools.lru_cache(maxsize=4096)
def _masked(request_id: str) -> str:
    return redact(request_id)


def bind_request_id(request_id: str, *, generated: bool) -> tuple[Token[str], Token[str]]:
    """Make ``request_id`` the current request's (undo with :func:`unbind_request_id`).

    An id the client chose is masked in the logs (it may be a phone number); a generated one is not
    (masking random hex that happens to hold eight digits would only make it unsearchable).
    """
    return REQUEST_ID.set(request_id), LOGGED_ID.set(request_id if generated else _masked(request_id))


def unbind_request_id(tokens: tuple[Token[str], Token[str]]) -> None:
    REQUEST_ID.reset(tokens[0])
    LOGGED_ID.reset(tokens[1])


def install_request_id_logging() -> None:
    """Put the current request id on every log record of the process (idempotent)."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)  # type: ignore[arg-type]
        record.request_id = LOGGED_ID.get()
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


class RequestIdFilter(logging.Filter):
    """Gives records made before :func:`install_request_id_logging` a ``request_id`` too (``-``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = "-"
        return True


def log_config(level: str = "info") -> dict[str, Any]:
    """uvicorn's default logging config with ``[request id]`` in every line (error log and access log)."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"request_id": {"()": "service.api.logs.RequestIdFilter"}}
    config["formatters"]["default"]["fmt"] = "%(levelprefix)s [%(request_id)s] %(name)s: %(message)s"
    config["formatters"]["access"]["fmt"] = (
        '%(levelprefix)s [%(request_id)s] %(client_addr)s - "%(request_line)s" %(status_code)s'
    )
    for handler in config["handlers"].values():
        handler["filters"] = ["request_id"]
    config["loggers"]["uvicorn"]["level"] = level.upper()
    config["loggers"]["service"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    config["loggers"]["model"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config
