"""QA over whole transcripts: every conversation of a file scored, summarised and aggregated per agent.

A QA team reviews thousands of finished chats, not live messages. ``run_qa`` reads them
(JSONL, one conversation a line, or CSV, one turn a row), scores each with
:class:`~service.analyzer.ConversationAnalyzer` and writes, into one output folder:

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

The handling score is in :mod:`service.qa.scoring`, the rows in :mod:`service.qa.rows`, resuming in
:mod:`service.qa.resume`, aggregates in :mod:`service.qa.aggregate`, the report in :mod:`service.qa.report`.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tqdm import tqdm

from data.vocab import Role
from service.analyzer import Analyzer, ConversationAnalyzer
from service.io.readers import BadLine, count_lines
from service.io.writers import AppendingCsv, open_append
from service.qa.aggregate import QASummary, summarize, write_agents
from service.qa.readers import SourceConversation, check_input, read_conversations, short
from service.qa.report import write_report
from service.qa.resume import prepare_output
from service.qa.rows import CONVERSATION_COLUMNS, TURN_COLUMNS, ConversationRow, TurnRow, conversation_row, turn_rows
from service.results import ConversationResult
from service.routing.agent_steps import AgentStepDetector

logger = logging.getLogger(__name__)


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
        self.turns_jsonl, _ = open_append(out_dir / "turns.jsonl")
        self.turns_csv = AppendingCsv(out_dir / "turns.csv", TURN_COLUMNS)
        self.conv_csv = AppendingCsv(out_dir / "conversations.csv", CONVERSATION_COLUMNS)
        self.conv_jsonl, _ = open_append(out_dir / "conversations.jsonl")

    def write_chunk(self, turns: list[TurnRow], summaries: list[ConversationRow]) -> None:
        # Order matters for resuming: turns first, the commit log (conversations.jsonl) last.
        for row in turns:
            self.turns_jsonl.write(row.to_json() + "\n")
            self.turns_csv.write(row.csv_row())
        self.turns_jsonl.flush()
        self.turns_csv.flush()
        for s in summaries:
            self.conv_csv.write(s.csv_row())
        self.conv_csv.flush()
        for s in summaries:
            self.conv_jsonl.write(s.to_json() + "\n")
        self.conv_jsonl.flush()

    def close(self) -> None:
        for f in (self.turns_jsonl, self.turns_csv, self.conv_csv, self.conv_jsonl):
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

    def score(chunk: list[SourceConversation]) -> list[tuple[SourceConversation, ConversationResult]]:
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
        turns: list[TurnRow] = []
        summaries: list[ConversationRow] = []
        for conv, result in score(pending):
            turns.extend(turn_rows(conv, result, keep_text=keep_text))
            summaries.append(conversation_row(conv, result))
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
                problem(BadLine(item.line, f"conversation id {short(item.key)} repeated"))
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
