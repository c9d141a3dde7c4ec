"""QA over whole transcripts: every conversation of a file scored, summarised and aggregated per agent.

A QA team reviews thousands of finished chats, not live messages. ``run_qa`` reads them
(JSONL, one conversation a line, or CSV, one turn a row), scores each with
:class:`~service.conversation.ConversationAnalyzer` and writes, into one output folder:

- ``turns.jsonl`` / ``turns.csv``: one row per turn (customer turns: anger, type, threat,
  flag; agent turns: steps and mistakes). Message text is *not* stored unless ``keep_text``,
  and then only after :func:`service.redact.redact` (QA exports get forwarded and archived).
- ``conversations.jsonl`` / ``conversations.csv``: one summary per conversation, with the
  handling score below.
- ``agents.csv`` / ``agents.json``: per-agent aggregates; ``report.html``: a self-contained report.

Why it is built this way
------------------------
- **Bounded memory.** The input is streamed; conversations are scored in chunks (64
  conversations or 512 customer turns per model call, whichever comes first) and each chunk's
  rows are appended and flushed before the next is read. What stays in memory is the set of
  conversation ids (to catch duplicates and resume) and, at the end, per-agent counters and
  the N worst conversations (a bounded heap), never all conversations.
- **Resumable.** ``conversations.jsonl`` is the commit log: a chunk's turn rows are written
  first and its conversation lines last, so a conversation listed there is complete. On start,
  ids already in it are skipped, a truncated last line is dropped, and turn/summary CSV rows of
  uncommitted conversations are pruned. Aggregates and the report are always recomputed from
  ``conversations.jsonl``, so a resumed run ends with the same numbers as a clean one.
  (Files are flushed, not fsynced: a killed process loses nothing, a power cut may.)
- **Bad input is reported, never fatal.** A line or row that cannot be read is reported with
  its line number on stderr and skipped; a bad *turn* (missing/unknown role, empty text) skips
  only that turn, and the conversation's ``turns_skipped`` says its score rests on partial data.
  CSV rows of one conversation must be contiguous (exports are sorted; buffering a whole file
  to regroup it would defeat streaming); a conversation_id that comes back later is reported and
  those rows are skipped. Turns are ordered by ``turn_index`` inside a conversation.

Handling score (0-100)
----------------------
How well the agent handled the conversation, in points a QA lead can recompute by hand::

    score = 100
          - 15 per agent turn that argued, blamed the customer or had the last word
          - 10 per agent turn with solution_while_furious or interrogated
            (10 for any mistake code a playbook adds)
          - 5  per core step missed (state.steps_missed: non-optional steps of the sequence for
               the final situation that were never taken), escalate_supervisor excepted
          - 20 if the conversation needed escalation (state.escalate) and escalate_supervisor
               was never taken
          + 10 if the customer calmed down (final anger below the peak)
          - 10 if anger rose (final anger is the peak and an earlier customer turn was lower)
    clipped to 0..100.

Mistakes count per occurrence because repeating a mistake is worse than making it once; a
missed escalation costs 20 instead of the 5 of a missed step because it is the one failure with
legal or media consequences. The anger outcome is worth at most one mistake: the agent does not
control the customer, but calming them is the point of the practice. Conversations with a
single customer turn get no anger bonus or penalty (there is no outcome to judge).
"""

from __future__ import annotations

import csv
import heapq
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from data.vocab import Mistake, Outcome, Role, Step
from service.agent_steps import AgentStepDetector
from service.analyzer import Analyzer
from service.batch import BadLine, InputFormatError, count_lines
from service.conversation import ROLES, ConversationAnalyzer, Turn
from service.redact import redact

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------ handling score
#: Points taken per agent turn that makes the mistake; codes a playbook adds cost DEFAULT_MISTAKE_PENALTY.
MISTAKE_PENALTY: dict[str, int] = {
    Mistake.ARGUED: 15,
    Mistake.BLAMED_CUSTOMER: 15,
    Mistake.LAST_WORD: 15,
    Mistake.SOLUTION_WHILE_FURIOUS: 10,
    Mistake.INTERROGATED: 10,
}
DEFAULT_MISTAKE_PENALTY = 10
MISSED_STEP_PENALTY = 5
UNHANDLED_ESCALATION_PENALTY = 20
CALMED_BONUS = 10
ROSE_PENALTY = 10
OUTCOME_POINTS = {Outcome.CALMED: CALMED_BONUS, Outcome.ROSE: -ROSE_PENALTY, Outcome.STEADY: 0}

OUTPUT_FILES = ("turns.jsonl", "turns.csv", "conversations.jsonl", "conversations.csv")
CSV_REQUIRED = ("conversation_id", "turn_index", "role", "text")
UNASSIGNED = "(unassigned)"

TURN_COLUMNS = [
    "conversation_id", "turn_index", "role", "ts",
    "anger_level", "anger_label", "anger_score", "complaint_type", "types", "threat", "threat_score", "flag",
    "escalate", "steps", "mistakes", "text",
]  # fmt: skip
CONVERSATION_COLUMNS = [
    "conversation_id", "agent_id", "source_line", "turns", "customer_turns", "agent_turns", "turns_skipped",
    "anger_series", "peak_anger", "final_anger", "anger_trend", "situation", "complaint_type", "types", "threat",
    "escalate", "flag", "steps_taken", "steps_missed", "mistakes", "mistake_counts", "next_step_code",
    "handling_score", "points_mistakes", "points_steps_missed", "points_escalation", "points_anger_outcome",
]  # fmt: skip


def anger_outcome(series: Sequence[int]) -> Outcome:
    """``calmed`` (final below peak), ``rose`` (final is the peak, reached from lower) or ``steady``."""
    if len(series) < 2:
        return Outcome.STEADY
    final, peak = series[-1], max(series)
    if final < peak:
        return Outcome.CALMED
    if min(series[:-1]) < final:
        return Outcome.ROSE
    return Outcome.STEADY


def handling_score(state: Mapping[str, Any], mistake_counts: Mapping[str, int] | None = None) -> dict[str, int]:
    """The 0-100 handling score of one conversation state, with the points behind it (see the module doc).

    ``mistake_counts`` gives how many agent turns made each mistake; without it each code in
    ``state["mistakes"]`` counts once (the state lists codes, not occurrences).
    """
    counts = dict(mistake_counts) if mistake_counts is not None else dict.fromkeys(state.get("mistakes", []), 1)
    mistakes = -sum(MISTAKE_PENALTY.get(code, DEFAULT_MISTAKE_PENALTY) * n for code, n in counts.items())
    missed = -MISSED_STEP_PENALTY * sum(1 for c in state.get("steps_missed", []) if c != Step.ESCALATE_SUPERVISOR)
    escalation = (
        -UNHANDLED_ESCALATION_PENALTY
        if state.get("escalate") and Step.ESCALATE_SUPERVISOR not in state.get("steps_taken", [])
        else 0
    )
    outcome = {Outcome.CALMED: CALMED_BONUS, Outcome.ROSE: -ROSE_PENALTY, Outcome.STEADY: 0}[
        anger_outcome(state["anger_series"])
    ]
    total = 100 + mistakes + missed + escalation + outcome
    return {
        "score": max(0, min(100, total)),
        "mistakes": mistakes,
        "steps_missed": missed,
        "escalation": escalation,
        "anger_outcome": outcome,
    }


# ------------------------------------------------------------------ input
@dataclass
class SourceConversation:
    """One conversation as read from the input, before scoring."""

    id: Any
    line: int
    agent_id: str | None = None
    turns: list[Turn] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    skipped_turns: int = 0
    last_line: int = 0

    @property
    def key(self) -> str:
        return str(self.id)


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _role(value: Any) -> tuple[str | None, str | None]:
    """(role, None) or (None, reason)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, "role missing"
    role = value.strip().lower() if isinstance(value, str) else None
    if role not in ROLES:
        return None, f"unknown role {_short(value)} (expected customer or agent)"
    return role, None


def _text_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return "text missing or empty"
    return None


def _format_of(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in {".jsonl", ".ndjson"}:
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise InputFormatError(f"{path}: unknown transcript format {suffix!r} (use .jsonl or .csv)")


def check_input(path: str | Path) -> str:
    """The input's format; raises :class:`InputFormatError` before any model is loaded."""
    fmt = _format_of(path)
    if not Path(path).is_file():
        raise InputFormatError(f"{path}: no such file")
    return fmt


def _jsonl_conversations(f: IO[str]) -> Iterator[SourceConversation | BadLine]:
    for n, line in enumerate(f, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield BadLine(n, f"not valid JSON ({e.msg})")
            continue
        if not isinstance(obj, dict):
            yield BadLine(n, "expected a JSON object")
            continue
        conv_id = obj.get("id", n - 1)
        if isinstance(conv_id, bool) or not isinstance(conv_id, str | int) or conv_id == "":
            yield BadLine(n, "field 'id' must be a non-empty string or an integer")
            continue
        agent = obj.get("agent_id")
        if agent is not None and (isinstance(agent, bool) or not isinstance(agent, str | int)):
            yield BadLine(n, "field 'agent_id' must be a string or an integer")
            continue
        turns = obj.get("turns")
        if not isinstance(turns, list) or not turns:
            yield BadLine(n, "field 'turns' missing or not a non-empty list")
            continue
        conv = SourceConversation(conv_id, n, str(agent) if agent not in (None, "") else None, last_line=n)
        for i, t in enumerate(turns):
            if not isinstance(t, dict):
                reason: str | None = "not a JSON object"
            else:
                role, reason = _role(t.get("role"))
                reason = reason or _text_problem(t.get("text"))
            if reason:
                conv.skipped_turns += 1
                yield BadLine(n, f"turn {i}: {reason}")
                continue
            conv.turns.append(Turn(role=role, text=t["text"], ts=t.get("ts")))  # type: ignore[arg-type]
            conv.indices.append(i)
        yield conv


def _csv_conversations(f: IO[str]) -> Iterator[SourceConversation | BadLine]:
    reader = csv.DictReader(f)
    if reader.fieldnames is None:
        return
    header = [h.strip() for h in reader.fieldnames]
    reader.fieldnames = header
    missing = [c for c in CSV_REQUIRED if c not in header]
    if missing:
        raise InputFormatError(f"line 1: CSV header has no column {missing[0]!r} (needs {', '.join(CSV_REQUIRED)})")
    seen: set[str] = set()
    current: SourceConversation | None = None
    rows: list[tuple[int, Turn]] = []

    def finish(conv: SourceConversation) -> SourceConversation:
        rows.sort(key=lambda r: r[0])  # stable: equal indices cannot occur, they are rejected below
        conv.indices = [i for i, _ in rows]
        conv.turns = [t for _, t in rows]
        rows.clear()
        return conv

    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            yield BadLine(reader.line_num, f"unreadable CSV row ({e})")
            continue
        n = reader.line_num
        short = any(v is None for v in row.values())
        if None in row or short:
            if current is not None and (row.get("conversation_id") or "").strip() == current.key:
                current.skipped_turns += 1
            yield BadLine(n, "fewer fields than the header" if short else "more fields than the header")
            continue
        cid = row["conversation_id"].strip()
        if not cid:
            yield BadLine(n, "column 'conversation_id' empty")
            continue
        if current is None or cid != current.key:
            if cid in seen:
                yield BadLine(
                    n, f"conversation_id {_short(cid)} reappears after other conversations (rows must be contiguous)"
                )
                continue
            if current is not None:
                yield finish(current)
            seen.add(cid)
            current = SourceConversation(cid, n)
        current.last_line = n
        if not current.agent_id and (row.get("agent_id") or "").strip():
            current.agent_id = row["agent_id"].strip()
        try:
            index = int(row["turn_index"].strip())
        except ValueError:
            current.skipped_turns += 1
            yield BadLine(n, "column 'turn_index' is not an integer")
            continue
        role, reason = _role(row["role"])
        reason = reason or _text_problem(row["text"])
        if reason is None and any(i == index for i, _ in rows):
            reason = f"turn_index {index} repeated in conversation {_short(cid)}"
        if reason:
            current.skipped_turns += 1
            yield BadLine(n, reason)
            continue
        ts = (row.get("ts") or "").strip() or None
        rows.append((index, Turn(role=role, text=row["text"], ts=ts)))  # type: ignore[arg-type]
    if current is not None:
        yield finish(current)


def read_conversations(path: str | Path) -> Iterator[SourceConversation | BadLine]:
    """Conversations (or reported problems) from a .jsonl or .csv transcript file, streamed."""
    fmt = check_input(path)
    with open(path, encoding="utf-8-sig", errors="replace", newline="" if fmt == "csv" else None) as f:
        if fmt == "jsonl":
            yield from _jsonl_conversations(f)
        else:
            yield from _csv_conversations(f)


# ------------------------------------------------------------------ rows written
def _join(values: Sequence[Any]) -> str:
    return "|".join(str(v) for v in values)


def turn_rows(conv: SourceConversation, result: Mapping[str, Any], *, keep_text: bool) -> list[dict[str, Any]]:
    """One output row per scored turn; ``turn_index`` is the index in the source, not the position scored."""
    rows = []
    for out, src_index, turn in zip(result["turns"], conv.indices, conv.turns, strict=True):
        row: dict[str, Any] = {"conversation_id": conv.id, "turn_index": src_index, "role": out["role"], "ts": turn.ts}
        if out["role"] == Role.CUSTOMER:
            r = out["result"]
            row.update(
                anger_level=r["anger"]["level"],
                anger_label=r["anger"]["label"],
                anger_score=r["anger"]["score"],
                complaint_type=r["complaint"]["type"],
                types=r["complaint"]["types"],
                threat=r["threat"]["detected"],
                threat_score=r["threat"]["score"],
                flag=r["route"]["flag"],
                escalate=r["route"]["escalate"],
            )
        else:
            row.update(steps=out["steps"], mistakes=out["mistakes"])
        if keep_text:
            row["text"] = redact(turn.text)
        rows.append(row)
    return rows


def conversation_summary(conv: SourceConversation, result: Mapping[str, Any]) -> dict[str, Any]:
    """The per-conversation line of conversations.jsonl (everything aggregates and the report need)."""
    state = result["state"]
    counts: Counter[str] = Counter()
    for t in result["turns"]:
        if t["role"] == Role.AGENT:
            counts.update(t["mistakes"])
    hs = handling_score(state, counts)
    n_customer = sum(t["role"] == Role.CUSTOMER for t in result["turns"])
    return {
        "conversation_id": conv.id,
        "agent_id": conv.agent_id,
        "source_line": conv.line,
        "turns": len(result["turns"]),
        "customer_turns": n_customer,
        "agent_turns": len(result["turns"]) - n_customer,
        "turns_skipped": conv.skipped_turns,
        "anger_series": state["anger_series"],
        "peak_anger": state["peak_anger"],
        "final_anger": state["final_anger"],
        "anger_trend": state["anger_trend"],
        "situation": state["situation"],
        "complaint_type": state["complaint_type"],
        "types": state["types"],
        "threat": state["threat"],
        "escalate": state["escalate"],
        "flag": state["flag"],
        "steps_taken": state["steps_taken"],
        "steps_missed": state["steps_missed"],
        "mistakes": state["mistakes"],
        "mistake_counts": dict(sorted(counts.items())),
        "next_step": {"code": state["next_step"]["code"], "text": state["next_step"]["text"]},
        "handling_score": hs["score"],
        "handling_points": {k: v for k, v in hs.items() if k != "score"},
    }


def _turn_csv_row(row: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: row.get(k, "") for k in TURN_COLUMNS}
    for k in ("types", "steps", "mistakes"):
        if k in row:
            out[k] = _join(row[k])
    out["ts"] = "" if row.get("ts") is None else row["ts"]
    return out


def _conversation_csv_row(s: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: s.get(k, "") for k in CONVERSATION_COLUMNS}
    out["agent_id"] = s["agent_id"] or ""
    for k in ("anger_series", "types", "steps_taken", "steps_missed", "mistakes"):
        out[k] = _join(s[k])
    out["mistake_counts"] = json.dumps(s["mistake_counts"])
    out["next_step_code"] = s["next_step"]["code"]
    for k, v in s["handling_points"].items():
        out[f"points_{k}"] = v
    return out


# ------------------------------------------------------------------ resume
def _rewrite(path: Path, lines: Iterator[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.writelines(lines)
    os.replace(tmp, path)


def _commit_lines(path: Path) -> Iterator[tuple[bytes, str | None]]:
    """(line, conversation id or None when unreadable) for each line of conversations.jsonl."""
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                yield raw, None  # no final newline: the writer was cut off mid-line
                continue
            try:
                key = str(json.loads(raw)["conversation_id"])
            except (ValueError, KeyError, TypeError):
                key = None
            yield raw, key


def _committed(path: Path) -> set[str]:
    """Ids in conversations.jsonl; unreadable (truncated) lines and repeats are dropped from the file."""
    if not path.exists():
        return set()
    done: set[str] = set()
    dropped = 0
    for _, key in _commit_lines(path):
        if key is None or key in done:
            dropped += 1
        else:
            done.add(key)
    if dropped:
        logger.warning("%s: dropping %d unreadable or repeated line(s) before resuming", path.name, dropped)
        kept: set[str] = set()

        def keep() -> Iterator[str]:
            for raw, key in _commit_lines(path):
                if key is not None and key not in kept:
                    kept.add(key)
                    yield raw.decode("utf-8", errors="replace")

        _rewrite(path, keep())
    return done


def _prune_jsonl(path: Path, done: set[str]) -> None:
    if not path.exists():
        return
    dropped = 0

    def keep() -> Iterator[str]:
        nonlocal dropped
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    ok = line.endswith("\n") and str(json.loads(line)["conversation_id"]) in done
                except (ValueError, KeyError, TypeError):
                    ok = False
                if ok:
                    yield line
                else:
                    dropped += 1

    _rewrite(path, keep())
    if dropped:
        logger.info("%s: pruned %d row(s) of unfinished conversations", path.name, dropped)


def _prune_csv(path: Path, done: set[str], columns: list[str], *, unique: bool) -> None:
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, encoding="utf-8", newline="") as f:
        header = next(csv.reader(f), None)
    if header != columns:
        raise InputFormatError(f"{path}: columns differ from this version's; write to a new output folder")
    seen: set[str] = set()

    def keep() -> Iterator[str]:
        with open(path, encoding="utf-8", newline="") as f:
            lines = iter(f)
            yield next(lines)
            for row_text in _csv_records(lines):
                row = next(csv.reader([row_text]), [])
                if len(row) != len(columns) or not row_text.endswith("\n") or row[0] not in done:
                    continue
                if unique:
                    if row[0] in seen:
                        continue
                    seen.add(row[0])
                yield row_text

    _rewrite(path, keep())


def _csv_records(lines: Iterator[str]) -> Iterator[str]:
    """Physical lines regrouped into CSV records (quoted fields may hold newlines)."""
    buf = ""
    for line in lines:
        buf += line
        if buf.count('"') % 2 == 0:
            yield buf
            buf = ""
    if buf:
        yield buf


def prepare_output(out_dir: Path) -> set[str]:
    """Make ``out_dir`` consistent with its commit log and return the conversation ids already done."""
    out_dir.mkdir(parents=True, exist_ok=True)
    done = _committed(out_dir / "conversations.jsonl")
    if any((out_dir / name).exists() for name in OUTPUT_FILES):
        _prune_jsonl(out_dir / "turns.jsonl", done)
        _prune_csv(out_dir / "turns.csv", done, TURN_COLUMNS, unique=False)
        _prune_csv(out_dir / "conversations.csv", done, CONVERSATION_COLUMNS, unique=True)
    return done


# ------------------------------------------------------------------ aggregates
@dataclass
class AgentStats:
    agent_id: str
    conversations: int = 0
    score_sum: int = 0
    min_score: int = 100
    escalations: int = 0
    escalations_unhandled: int = 0
    threats: int = 0
    mistakes: Counter[str] = field(default_factory=Counter)
    steps_missed: Counter[str] = field(default_factory=Counter)

    @property
    def mean_score(self) -> float:
        return round(self.score_sum / self.conversations, 1) if self.conversations else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "conversations": self.conversations,
            "mean_handling_score": self.mean_score,
            "min_handling_score": self.min_score,
            "escalations": self.escalations,
            "escalations_unhandled": self.escalations_unhandled,
            "threats": self.threats,
            "mistakes_total": sum(self.mistakes.values()),
            "steps_missed_total": sum(self.steps_missed.values()),
            "mistakes": dict(sorted(self.mistakes.items())),
            "steps_missed": dict(sorted(self.steps_missed.items())),
        }


@dataclass
class QASummary:
    """Everything the report shows, computed in one streaming pass over conversations.jsonl."""

    conversations: int = 0
    turns: int = 0
    customer_turns: int = 0
    agent_turns: int = 0
    turns_skipped: int = 0
    score_sum: int = 0
    score_bins: list[int] = field(default_factory=lambda: [0] * 10)
    escalations: int = 0
    escalations_unhandled: int = 0
    threats: int = 0
    anger_levels: Counter[int] = field(default_factory=Counter)
    peak_levels: Counter[int] = field(default_factory=Counter)
    complaint_types: Counter[str] = field(default_factory=Counter)
    situations: Counter[str] = field(default_factory=Counter)
    trends: Counter[str] = field(default_factory=Counter)
    mistakes: Counter[str] = field(default_factory=Counter)
    steps_missed: Counter[str] = field(default_factory=Counter)
    agents: dict[str, AgentStats] = field(default_factory=dict)
    worst: list[dict[str, Any]] = field(default_factory=list)

    @property
    def mean_score(self) -> float:
        return round(self.score_sum / self.conversations, 1) if self.conversations else 0.0

    def totals(self) -> dict[str, Any]:
        return {
            "conversations": self.conversations,
            "turns": self.turns,
            "customer_turns": self.customer_turns,
            "agent_turns": self.agent_turns,
            "turns_skipped": self.turns_skipped,
            "mean_handling_score": self.mean_score,
            "escalations": self.escalations,
            "escalations_unhandled": self.escalations_unhandled,
            "threats": self.threats,
            "agents": len(self.agents),
            "anger_levels": {str(k): self.anger_levels[k] for k in range(4)},
            "peak_anger_levels": {str(k): self.peak_levels[k] for k in range(4)},
            "complaint_types": dict(sorted(self.complaint_types.items(), key=lambda kv: (-kv[1], kv[0]))),
            "situations": dict(sorted(self.situations.items())),
            "mistakes": dict(sorted(self.mistakes.items())),
            "steps_missed": dict(sorted(self.steps_missed.items())),
        }


def _worst_key(s: Mapping[str, Any]) -> tuple[Any, ...]:
    # lowest handling score first, then highest peak, then highest final anger; the id breaks ties
    return (s["handling_score"], -s["peak_anger"], -s["final_anger"], str(s["conversation_id"]))


class _Rev:
    """Reverses ordering so a min-heap keeps the N smallest keys (its top is the best of the worst)."""

    __slots__ = ("key",)

    def __init__(self, key: tuple[Any, ...]) -> None:
        self.key = key

    def __lt__(self, other: _Rev) -> bool:
        return self.key > other.key


WORST_FIELDS = (
    "conversation_id",
    "agent_id",
    "handling_score",
    "peak_anger",
    "final_anger",
    "anger_trend",
    "anger_series",
    "complaint_type",
    "types",
    "mistakes",
    "steps_missed",
    "escalate",
    "situation",
)


def summarize(path: Path, *, worst_n: int = 10) -> QASummary:
    """Aggregates over conversations.jsonl, streamed: counters plus a bounded heap of the worst."""
    agg = QASummary()
    heap: list[tuple[_Rev, dict[str, Any]]] = []
    if not path.exists():
        return agg
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            s = json.loads(line)
            score = s["handling_score"]
            agg.conversations += 1
            agg.turns += s["turns"]
            agg.customer_turns += s["customer_turns"]
            agg.agent_turns += s["agent_turns"]
            agg.turns_skipped += s["turns_skipped"]
            agg.score_sum += score
            agg.score_bins[min(score // 10, 9)] += 1
            agg.anger_levels.update(s["anger_series"])
            agg.peak_levels[s["peak_anger"]] += 1
            agg.complaint_types[s["complaint_type"]] += 1
            agg.situations[s["situation"]] += 1
            agg.trends[s["anger_trend"]] += 1
            agg.mistakes.update(s["mistake_counts"])
            agg.steps_missed.update(s["steps_missed"])
            unhandled = bool(s["escalate"]) and Step.ESCALATE_SUPERVISOR not in s["steps_taken"]
            agg.escalations += bool(s["escalate"])
            agg.escalations_unhandled += unhandled
            agg.threats += bool(s["threat"])
            agent_id = UNASSIGNED if s["agent_id"] in (None, "") else str(s["agent_id"])
            a = agg.agents.get(agent_id)
            if a is None:
                a = agg.agents[agent_id] = AgentStats(agent_id)
            a.conversations += 1
            a.score_sum += score
            a.min_score = min(a.min_score, score)
            a.escalations += bool(s["escalate"])
            a.escalations_unhandled += unhandled
            a.threats += bool(s["threat"])
            a.mistakes.update(s["mistake_counts"])
            a.steps_missed.update(s["steps_missed"])
            if worst_n > 0:
                item = (_Rev(_worst_key(s)), {k: s[k] for k in WORST_FIELDS})
                if len(heap) < worst_n:
                    heapq.heappush(heap, item)
                elif item[0].key < heap[0][0].key:
                    heapq.heapreplace(heap, item)
    agg.worst = [s for _, s in sorted(heap, key=lambda it: it[0].key)]
    agg.agents = dict(sorted(agg.agents.items()))
    return agg


def write_agents(agg: QASummary, out_dir: Path) -> None:
    """agents.json (totals + one object per agent) and agents.csv (one column per mistake/step code)."""
    agents = [a.to_dict() for a in agg.agents.values()]
    doc = {"summary": agg.totals(), "agents": agents}
    (out_dir / "agents.json").write_text(json.dumps(doc, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    mistake_codes = sorted(set(MISTAKE_PENALTY) | set(agg.mistakes))
    step_codes = sorted(agg.steps_missed)
    base = [k for k in agents[0] if k not in ("mistakes", "steps_missed")] if agents else ["agent_id"]
    columns = base + [f"mistake_{c}" for c in mistake_codes] + [f"missed_{c}" for c in step_codes]
    with open(out_dir / "agents.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for a in agents:
            row = {k: a[k] for k in base}
            row.update({f"mistake_{c}": a["mistakes"].get(c, 0) for c in mistake_codes})
            row.update({f"missed_{c}": a["steps_missed"].get(c, 0) for c in step_codes})
            w.writerow(row)


# ------------------------------------------------------------------ the run
@dataclass
class QAReport:
    """What one ``run_qa`` call did (this run) and what the output folder now holds (in total)."""

    out_dir: Path
    scored: int = 0
    turns_scored: int = 0
    resumed: int = 0
    bad: list[BadLine] = field(default_factory=list)
    summary: QASummary = field(default_factory=QASummary)

    @property
    def conversations_total(self) -> int:
        return self.summary.conversations


class _Writers:
    """The four incremental outputs, opened for appending; a chunk is flushed before the next is read."""

    def __init__(self, out_dir: Path) -> None:
        def open_append(name: str) -> tuple[IO[str], bool]:
            path = out_dir / name
            fresh = not path.exists() or path.stat().st_size == 0
            return open(path, "a", encoding="utf-8", newline=""), fresh

        self.turns_jsonl, _ = open_append("turns.jsonl")
        self.turns_csv_f, fresh = open_append("turns.csv")
        self.turns_csv = csv.DictWriter(self.turns_csv_f, fieldnames=TURN_COLUMNS, lineterminator="\n")
        if fresh:
            self.turns_csv.writeheader()
        self.conv_csv_f, fresh = open_append("conversations.csv")
        self.conv_csv = csv.DictWriter(self.conv_csv_f, fieldnames=CONVERSATION_COLUMNS, lineterminator="\n")
        if fresh:
            self.conv_csv.writeheader()
        self.conv_jsonl, _ = open_append("conversations.jsonl")

    def write_chunk(self, turns: list[dict[str, Any]], summaries: list[dict[str, Any]]) -> None:
        # Order matters for resuming: turns first, the commit log (conversations.jsonl) last.
        for row in turns:
            self.turns_jsonl.write(json.dumps(row, ensure_ascii=False) + "\n")
            self.turns_csv.writerow(_turn_csv_row(row))
        self.turns_jsonl.flush()
        self.turns_csv_f.flush()
        for s in summaries:
            self.conv_csv.writerow(_conversation_csv_row(s))
        self.conv_csv_f.flush()
        for s in summaries:
            self.conv_jsonl.write(json.dumps(s, ensure_ascii=False) + "\n")
        self.conv_jsonl.flush()

    def close(self) -> None:
        for f in (self.turns_jsonl, self.turns_csv_f, self.conv_csv_f, self.conv_jsonl):
            f.close()


def run_qa(
    input_path: str | Path,
    out_dir: str | Path,
    *,
    analyzer: Analyzer,
    detector: AgentStepDetector,
    batch_conversations: int = 64,
    max_customer_turns: int = 512,
    progress: bool | None = None,
    keep_text: bool = False,
    lang: str | None = None,
    worst_n: int = 10,
    err: IO[str] | None = None,
) -> QAReport:
    """Score every conversation of ``input_path`` into ``out_dir`` (resuming), then aggregate and report.

    ``progress=None`` shows the bar for inputs of 200 lines or more. Problems in the input go to
    ``err`` (default stderr) as ``PATH: line N: reason (skipped)`` and into ``QAReport.bad``.
    """
    from service.qa_report import write_report

    err = err or sys.stderr
    check_input(input_path)
    out = Path(out_dir)
    done = prepare_output(out)
    report = QAReport(out_dir=out, resumed=0)
    conv_an = ConversationAnalyzer(analyzer, detector)
    total = count_lines(str(input_path))
    show = progress if progress is not None else (total or 0) >= 200
    bar = tqdm(total=total, unit="line", file=err, disable=not show, dynamic_ncols=True, desc="qa")
    seen: set[str] = set()
    pending: list[SourceConversation] = []
    pending_customer = 0
    read_to = 0
    writers = _Writers(out)

    def problem(item: BadLine) -> None:
        report.bad.append(item)
        err.write(f"{input_path}: line {item.line}: {item.reason} (skipped)\n")

    def advance(line: int) -> None:
        nonlocal read_to
        if line > read_to:
            bar.update(line - read_to)
            read_to = line

    def score(chunk: list[SourceConversation]) -> list[tuple[SourceConversation, dict[str, Any]]]:
        try:
            results = conv_an.analyze_many([(c.id, c.turns) for c in chunk], lang=lang)
            return list(zip(chunk, results, strict=True))
        except Exception as e:  # one bad conversation must not sink its chunk
            if len(chunk) == 1:
                problem(BadLine(chunk[0].line, f"could not be scored ({type(e).__name__})"))
                return []
            logger.warning(
                "chunk of %d conversations failed (%s); scoring them one by one", len(chunk), type(e).__name__
            )
            return [pair for c in chunk for pair in score([c])]

    def flush() -> None:
        nonlocal pending_customer
        if not pending:
            return
        turns: list[dict[str, Any]] = []
        summaries: list[dict[str, Any]] = []
        for conv, result in score(pending):
            turns.extend(turn_rows(conv, result, keep_text=keep_text))
            summaries.append(conversation_summary(conv, result))
        writers.write_chunk(turns, summaries)
        report.scored += len(summaries)
        report.turns_scored += len(turns)
        advance(pending[-1].last_line)
        pending.clear()
        pending_customer = 0

    try:
        for item in read_conversations(input_path):
            if isinstance(item, BadLine):
                problem(item)
                continue
            if item.key in seen:
                problem(BadLine(item.line, f"conversation id {_short(item.key)} repeated"))
                continue
            seen.add(item.key)
            if item.key in done:
                report.resumed += 1
                if not pending:
                    advance(item.last_line)
                continue
            n_customer = sum(t.role == Role.CUSTOMER for t in item.turns)
            if n_customer == 0:
                problem(BadLine(item.line, "no customer turn to score"))
                continue
            pending.append(item)
            pending_customer += n_customer
            if len(pending) >= batch_conversations or pending_customer >= max_customer_turns:
                flush()
        flush()
        if total:
            advance(total)
    finally:
        bar.close()
        writers.close()
    report.summary = summarize(out / "conversations.jsonl", worst_n=worst_n)
    write_agents(report.summary, out)
    write_report(report.summary, out / "report.html", title=f"CalmFirst QA: {Path(input_path).name}")
    logger.info(
        "qa: %d conversations scored (%d turns), %d already done, %d problems; %d in %s",
        report.scored,
        report.turns_scored,
        report.resumed,
        len(report.bad),
        report.conversations_total,
        out,
    )
    return report
