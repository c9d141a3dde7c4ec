"""Masking of personal data (phones, ID numbers, emails, card numbers) in text and in logs.

Customers paste their phone numbers, ID numbers and card numbers into chats; none of that
may reach a log file. One redactor serves both the ``redact=true`` answers (and QA exports) and
every log record of the process (:func:`install_log_redaction`).

Patterns cover mainland China, Taiwan and Hong Kong formats:

- ID numbers: mainland resident ID (18 characters, birth date inside, check character 0-9/X),
  Taiwan national ID and new-format resident certificate (letter + 1/2/8/9 + 8 digits) and old-format
  resident certificate (a letter, then A-D, then 8 digits), Hong Kong identity card (one or two letters, six
  digits, check digit in brackets);
- phones: mainland mobiles (+86), Taiwan mobiles (09.., +886 9..), Taiwan and mainland landlines with
  their area code, Hong Kong 8-digit numbers (+852);
- emails; card numbers (13-19 digits, spaces or dashes allowed) only when they pass the Luhn check,
  so order numbers stay readable.

Masking runs to a fixed point (a pass that changes nothing ends it), so the result holds none of
these patterns and masking it again changes nothing.
"""

from __future__ import annotations

import logging
import re

from service.text import printable

MASKS = {
    "email": "[EMAIL]",
    "card": "[CARD]",
    "id": "[ID]",
    "phone": "[PHONE]",
}

# The local part may only start where a run of its characters starts: matching stays linear on
# long strings without an @ (no retry from every position of the run).
_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# 13-19 digits, optionally grouped by spaces or dashes
_CARD = re.compile(r"(?<![\d+])(?:\d[ -]?){12,18}\d(?![\d])")
_IDS = [
    re.compile(
        r"(?<![\dA-Za-z])[1-9]\d{5}(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx](?![\dA-Za-z])"
    ),  # mainland resident ID
    re.compile(r"(?<![A-Za-z\d])[A-Z][1289]\d{8}(?![\d])"),  # Taiwan national ID / new-format resident certificate
    re.compile(r"(?<![A-Za-z\d])[A-Z][A-D]\d{8}(?![\d])"),  # Taiwan old-format resident certificate
    re.compile(r"(?<![A-Za-z\d])[A-Z]{1,2}\d{6}\s?[(（]?[\dA]?[)）]?(?![\d])"),  # Hong Kong identity card
]
_PHONES = [
    re.compile(r"(?<![\d])(?:\+?86[ -]?)?1[3-9]\d[ -]?\d{4}[ -]?\d{4}(?![\d])"),  # mainland mobile
    re.compile(r"(?<![\d])(?:\+?886[ -]?|0)9\d{2}[ -]?\d{3}[ -]?\d{3}(?![\d])"),  # Taiwan mobile
    re.compile(r"(?<![\d])\+?886[ -]?\(?[2-8]\)?[ -]?\d{3,4}[ -]?\d{4}(?![\d])"),  # Taiwan landline, +886
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


def _redact_once(text: str) -> str:
    text = _EMAIL.sub(MASKS["email"], text)
    text = _CARD.sub(_card_sub, text)
    for pat in _IDS:
        text = pat.sub(MASKS["id"], text)
    for pat in _PHONES:
        text = pat.sub(MASKS["phone"], text)
    return text


def redact(text: str) -> str:
    """``text`` with personal data replaced by placeholders such as ``[PHONE]``.

    Passes repeat until one changes nothing: masking one number can expose another that its
    neighbour hid (``[CARD]`` ends a digit run). Every change removes digits or an ``@``, so it ends.
    """
    while True:
        masked = _redact_once(text)
        if masked == text:
            return masked
        text = masked


def contains_personal_data(text: str) -> bool:
    """Whether ``text`` holds a phone, ID, card or email pattern that :func:`redact` would mask."""
    return _redact_once(text) != text


_installed = False


def _mask_str(value: str) -> str:
    return redact(printable(value))


def _mask_arg(value: object) -> object:
    if isinstance(value, str):
        return _mask_str(value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    text = str(value)
    masked = _mask_str(text)
    return value if masked == text else masked


def install_log_redaction() -> None:
    """Mask personal data in every log record of the process (idempotent).

    A record factory is used rather than handler filters: it covers every logger and every
    handler, including ones attached later (uvicorn's, a test's caplog, a user's file handler).
    Tracebacks are formatted and masked here too (an exception's message may quote its input),
    and lone surrogates are escaped so no handler fails to encode a line.
    """
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()
    formatter = logging.Formatter()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)  # type: ignore[arg-type]
        # Mask the template and every argument but keep the args' shape: formatters such as
        # uvicorn's access formatter unpack record.args themselves.
        if isinstance(record.msg, str):
            record.msg = _mask_str(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_mask_arg(x) for x in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _mask_arg(v) for k, v in record.args.items()}
        if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
            record.exc_text = _mask_str(formatter.formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = _mask_str(record.stack_info)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
