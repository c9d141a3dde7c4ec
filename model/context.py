"""Optional conversation context for a customer turn, as one plain input string.

A customer turn's anger and type often depend on what was just said (「还是不行」 after the
agent's instructions). The model reads the turn *first* and the context after a marker, and the
context is cut to ``MAX_CONTEXT_CHARS`` per turn, so tokenizer truncation only ever shortens the
context, never the message. Being a plain string, it needs no change to the tokenizer, the
PyTorch model or the ONNX graph; a single message is scored exactly as before (no marker).
"""

from __future__ import annotations

from collections.abc import Sequence

#: separates the message from its context (ASCII-free and script-neutral on purpose)
CONTEXT_MARK = " ‖ "
MAX_CONTEXT_CHARS = 120
ROLE_TAGS = {"agent": "agent:", "customer": "customer:"}


def with_context(text: str, context: Sequence[tuple[str, str]] | None) -> str:
    """``text`` followed by the previous turns (oldest first), or ``text`` alone."""
    if not context:
        return text
    parts = []
    for role, turn in context:
        turn = turn.strip()
        if turn:
            tail = turn if len(turn) <= MAX_CONTEXT_CHARS else "…" + turn[-MAX_CONTEXT_CHARS:]
            parts.append(f"{ROLE_TAGS.get(role, role + ':')}{tail}")
    return text + CONTEXT_MARK + " ".join(parts) if parts else text


def previous_turns(turns: Sequence[tuple[str, str]], index: int) -> list[tuple[str, str]]:
    """The context of turn ``index``: the last customer turn and the last agent turn before it,
    in their order (what the contract calls "the last exchange")."""
    out: list[tuple[int, tuple[str, str]]] = []
    seen: set[str] = set()
    for i in range(index - 1, -1, -1):
        role = turns[i][0]
        if role not in seen and turns[i][1].strip():
            seen.add(role)
            out.append((i, turns[i]))
        if len(seen) == 2:
            break
    return [t for _, t in sorted(out)]


def customer_turns_around(is_customer: Sequence[bool]) -> list[tuple[int | None, int | None]]:
    """For each turn that is not a customer turn, in order: which customer turn comes just before it
    and which just after it, as ordinals among the customer turns (``None`` where there is none).

    The agent-turn model reads the customer's anger in those two turns; the training data
    (``data.sources``) and a live conversation (``service.analyzer``) both find them here, in one pass,
    so a 500-turn transcript costs no more per turn than a 5-turn chat."""
    n_customer = sum(1 for c in is_customer if c)
    seen = 0
    out: list[tuple[int | None, int | None]] = []
    for customer in is_customer:
        if customer:
            seen += 1
        else:
            out.append((seen - 1 if seen else None, seen if seen < n_customer else None))
    return out
