"""Text hygiene: the one normaliser every message passes before the tokenizer, and the checks the API applies.

A message can arrive holding things no tokenizer should see: a lone UTF-16 surrogate (JSON allows
``"\\ud800"``; Python keeps it, the Rust tokenizer and every UTF-8 encoder refuse it), NUL and other
control characters (pasted from terminals, broken exports). :func:`normalize_text` makes any string safe:

- a lone surrogate becomes U+FFFD (the replacement character, as an undecodable byte in a file does);
- a control character other than tab, newline and carriage return becomes a space.

It is length-preserving (one character in, one out), so character offsets computed on the normalised
text (the explanation's spans) are offsets into what the caller sent, and idempotent.

The HTTP API is stricter at its edge: :func:`text_problem` names the first such character and the
request is answered 422 naming the field, so a client learns its text was not what it meant to send.
Files (``calmfirst score``, ``calmfirst qa``) are data, not a conversation with a client: their
texts are normalised and scored, as undecodable bytes already were.
"""

from __future__ import annotations

import re
from typing import Any

#: Characters a text must not hold: lone surrogates, and C0/C1 control characters except \t \n \r.
_UNSAFE = re.compile("[\ud800-\udfff\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")

REPLACEMENT = "\ufffd"


def _replace(m: re.Match[str]) -> str:
    return REPLACEMENT if "\ud800" <= m.group(0) <= "\udfff" else " "


def normalize_text(text: str) -> str:
    """``text`` with lone surrogates replaced by U+FFFD and control characters (not \\t \\n \\r) by spaces."""
    if _UNSAFE.search(text) is None:  # the common case: nothing to copy
        return text
    return _UNSAFE.sub(_replace, text)


def has_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate (it cannot be encoded as UTF-8)."""
    return _SURROGATE.search(text) is not None


def text_problem(text: str) -> str | None:
    """Why ``text`` is not a clean message (the first unsafe character and its position), or None."""
    m = _UNSAFE.search(text)
    if m is None:
        return None
    ch = m.group(0)
    if "\ud800" <= ch <= "\udfff":
        return f"invalid Unicode: lone surrogate U+{ord(ch):04X} at position {m.start()}"
    return f"control character U+{ord(ch):04X} at position {m.start()} (only tab, newline and carriage return)"


def printable(value: str) -> str:
    """``value`` made safe to put in a UTF-8 answer or log line: lone surrogates as ``\\udXXX`` escapes."""
    if not has_surrogate(value):
        return value
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def replace_surrogates(value: Any) -> Any:
    """``value`` (parsed JSON) with every lone surrogate in its strings and keys replaced by U+FFFD."""
    if isinstance(value, str):
        return _SURROGATE.sub(REPLACEMENT, value) if has_surrogate(value) else value
    if isinstance(value, list):
        return [replace_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {replace_surrogates(k): replace_surrogates(v) for k, v in value.items()}
    return value
