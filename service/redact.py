"""Masking of personal data (phones, ID numbers, emails, card numbers) in text and in logs.

Customers paste their phone numbers, ID numbers and card numbers into chats; none of that
may reach a log file. Patterns cover mainland China, Taiwan and Hong Kong formats; card
numbers are masked only when they pass the Luhn check, so order numbers stay readable.
"""

from __future__ import annotations

import logging
import re

MASKS = {
    "email": "[EMAIL]",
    "card": "[CARD]",
    "id": "[ID]",
    "phone": "[PHONE]",
}

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# 13-19 digits, optionally grouped by spaces or dashes
_CARD = re.compile(r"(?<![\d+])(?:\d[ -]?){12,18}\d(?![\d])")
_IDS = [
    re.compile(
        r"(?<![\dA-Za-z])[1-9]\d{5}(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx](?![\dA-Za-z])"
    ),  # mainland
    re.compile(r"(?<![A-Za-z\d])[A-Z][1289]\d{8}(?![\d])"),  # Taiwan national ID / ARC
    re.compile(r"(?<![A-Za-z\d])[A-Z]{1,2}\d{6}\s?[(（]?[\dA]?[)）]?(?![\d])"),  # Hong Kong HKID
]
_PHONES = [
    re.compile(r"(?<![\d])(?:\+?86[ -]?)?1[3-9]\d[ -]?\d{4}[ -]?\d{4}(?![\d])"),  # mainland mobile
    re.compile(r"(?<![\d])(?:\+?886[ -]?|0)9\d{2}[ -]?\d{3}[ -]?\d{3}(?![\d])"),  # Taiwan mobile
    re.compile(r"(?<![\d])\(?0\d{1,3}\)?[ -]?\d{3,4}[ -]?\d{4}(?![\d])"),  # landlines with area code
    re.compile(r"(?<![\d])(?:\+?852[ -]?)?[2-9]\d{3}[ -]?\d{4}(?![\d])"),  # Hong Kong 8 digits
]


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_sub(m: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", m.group(0))
    return MASKS["card"] if 13 <= len(digits) <= 19 and _luhn_ok(digits) else m.group(0)


def redact(text: str) -> str:
    """``text`` with personal data replaced by placeholders such as ``[PHONE]``."""
    text = _EMAIL.sub(MASKS["email"], text)
    text = _CARD.sub(_card_sub, text)
    for pat in _IDS:
        text = pat.sub(MASKS["id"], text)
    for pat in _PHONES:
        text = pat.sub(MASKS["phone"], text)
    return text


_installed = False


def _mask_arg(value: object) -> object:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    text = str(value)
    masked = redact(text)
    return value if masked == text else masked


def install_log_redaction() -> None:
    """Mask personal data in every log record of the process (idempotent).

    A record factory is used rather than handler filters: it covers every logger and every
    handler, including ones attached later (uvicorn's, a test's caplog, a user's file handler).
    """
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)  # type: ignore[arg-type]
        # Mask the template and every argument but keep the args' shape: formatters such as
        # uvicorn's access formatter unpack record.args themselves.
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_mask_arg(x) for x in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _mask_arg(v) for k, v in record.args.items()}
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
