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

- **One loop, two engines.** Reading, resuming, chunking, writing and reporting happen here, in
  this process, for both engines; only scoring a chunk (:func:`score_chunk`: the model, the
  conversation rules, the rows) is handed to a :class:`ChunkScorer`. The local one scores each
  chunk as it is read; ``service.ray_engine`` sends chunks to Ray actors and gives the outputs
  back in input order, so the files, the problems reported and resuming are the same.

The handling score is in :mod:`service.qa.scoring`, the rows in :mod:`service.qa.rows`, resuming in
:mod:`service.qa.resume`, aggregates in :mod:`service.qa.aggregate`, the report in :mod:`service.qa.report`.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from tqdm import tqdm

from data.vocab import Role
from service.analyzer import Analyzer, ConversationAnalyzer
from service.io.readers import BadLine, count_lines
from service.io.writers import AppendingCsv, open_append
from service.qa.aggregate import QASummary, summarize, write_agents
from service.qa.readers import SourceConversation, check_input, read_conversations, short
from service.qa.report import write_report
from service.qa.resume import prepare_output
from service.qa.rows import CONVERSATION_COLUMNS, TURN_COLUMNS, conversation_row, turn_rows
from service.results import ConversationResult
from service.routing.agent_steps import AgentDetector
from service.routing.conversation import Turn

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


@dataclass
class ChunkOutput:
    """What scoring one chunk of conversations produced, already serialised (it may come from another process)."""

    turns_json: list[str] = field(default_factory=list)
    turns_csv: list[dict[str, Any]] = field(default_factory=list)
    conversations_json: list[str] = field(default_factory=list)
    conversations_csv: list[dict[str, Any]] = field(default_factory=list)
    #: conversations that could not be scored, reported like a bad line
    problems: list[BadLine] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    def without(self, done: set[str]) -> ChunkOutput:
        """The rows of the conversations not in ``done`` (a resumed chunk is scored whole, written in part)."""

        def keep(row: dict[str, Any]) -> bool:
            return str(row["conversation_id"]) not in done

        turns = [(j, c) for j, c in zip(self.turns_json, self.turns_csv, strict=True) if keep(c)]
        convs = [(j, c) for j, c in zip(self.conversations_json, self.conversations_csv, strict=True) if keep(c)]
        return ChunkOutput(
            turns_json=[j for j, _ in turns],
            turns_csv=[c for _, c in turns],
            conversations_json=[j for j, _ in convs],
            conversations_csv=[c for _, c in convs],
            problems=self.problems,
        )

    @classmethod
    def from_json(cls, text: str) -> ChunkOutput:
        data = json.loads(text)
        data["problems"] = [BadLine(**p) for p in data["problems"]]
        return cls(**data)


def score_chunk(
    conv_an: ConversationAnalyzer, chunk: list[SourceConversation], *, keep_text: bool, lang: str | None
) -> ChunkOutput:
    """Score a chunk in one model pass; when that fails, one conversation at a time (a bad one is a problem)."""
    out = ChunkOutput()

    def score(part: list[SourceConversation]) -> list[tuple[SourceConversation, ConversationResult]]:
        try:
            results = conv_an.analyze_many([(c.id, c.turns) for c in part], lang=lang)
            return list(zip(part, results, strict=True))
        except Exception as e:  # one bad conversation must not sink its chunk
            if len(part) == 1:
                out.problems.append(
                    BadLine(part[0].line, f"could not be scored ({type(e).__name__})", path=part[0].path)
                )
                return []
            logger.warning(
                "chunk of %d conversations failed (%s); scoring them one by one", len(part), type(e).__name__
            )
            return [pair for c in part for pair in score([c])]

    for conv, result in score(chunk):
        for row in turn_rows(conv, result, keep_text=keep_text):
            out.turns_json.append(row.to_json())
            out.turns_csv.append(row.csv_row())
        summary = conversation_row(conv, result)
        out.conversations_json.append(summary.to_json())
        out.conversations_csv.append(summary.csv_row())
    return out


def chunk_to_json(chunk: list[SourceConversation]) -> str:
    """A chunk of conversations as JSON, for scoring in another process (``chunk_from_json`` reads it)."""
    return json.dumps(
        [
            {
                "id": c.id,
                "line": c.line,
                "agent_id": c.agent_id,
                "turns": [[t.role, t.text, t.ts] for t in c.turns],
                "indices": c.indices,
                "skipped_turns": c.skipped_turns,
                "last_line": c.last_line,
                "path": c.path,
            }
            for c in chunk
        ],
        ensure_ascii=False,
    )


def chunk_from_json(text: str) -> list[SourceConversation]:
    out = []
    for c in json.loads(text):
        turns = [Turn(role=Role(role), text=t, ts=ts) for role, t, ts in c.pop("turns")]
        out.append(SourceConversation(**c, turns=turns))
    return out


class ChunkScorer(Protocol):
    """Scores chunks of conversations; outputs come back in the chunks' order, one per chunk."""

    def score_chunks(self, chunks: Iterable[list[SourceConversation]]) -> Iterator[ChunkOutput]: ...


class LocalScorer:
    """This process: each chunk scored as soon as it is read."""

    def __init__(self, conv_an: ConversationAnalyzer, *, keep_text: bool, lang: str | None) -> None:
        self.conv_an = conv_an
        self.keep_text = keep_text
        self.lang = lang

    def score_chunks(self, chunks: Iterable[list[SourceConversation]]) -> Iterator[ChunkOutput]:
        for chunk in chunks:
            yield score_chunk(self.conv_an, chunk, keep_text=self.keep_text, lang=self.lang)


class _Writers:
    """The four incremental outputs, opened for appending; a chunk is flushed before the next is read."""

    def __init__(self, out_dir: Path) -> None:
        self.turns_jsonl, _ = open_append(out_dir / "turns.jsonl")
        self.turns_csv = AppendingCsv(out_dir / "turns.csv", TURN_COLUMNS)
        self.conv_csv = AppendingCsv(out_dir / "conversations.csv", CONVERSATION_COLUMNS)
        self.conv_jsonl, _ = open_append(out_dir / "conversations.jsonl")

    def write_chunk(self, chunk: ChunkOutput) -> None:
        # Order matters for resuming: turns first, the commit log (conversations.jsonl) last.
        for line, row in zip(chunk.turns_json, chunk.turns_csv, strict=True):
            self.turns_jsonl.write(line + "\n")
            self.turns_csv.write(row)
        self.turns_jsonl.flush()
        self.turns_csv.flush()
        for summary in chunk.conversations_csv:
            self.conv_csv.write(summary)
        self.conv_csv.flush()
        for line in chunk.conversations_json:
            self.conv_jsonl.write(line + "\n")
        self.conv_jsonl.flush()

    def close(self) -> None:
        for f in (self.turns_jsonl, self.turns_csv, self.conv_csv, self.conv_jsonl):
            f.close()


def input_identity(source: str | Path) -> str:
    """The input as ``run.json`` names it: the file's or folder's absolute path, or a glob from the working folder.
    Not its size or time: fixing a bad line and re-running the same command resumes (only that conversation is new)."""
    path = Path(source)
    return str(path.resolve() if path.exists() else Path.cwd() / path)


def run_qa(
    input_path: str | Path,
    out_dir: str | Path,
    *,
    analyzer: Analyzer | None = None,
    detector: AgentDetector | None = None,
    scorer: ChunkScorer | None = None,
    batch_conversations: int = 64,
    max_customer_turns: int = 512,
    progress: bool | None = None,
    keep_text: bool = False,
    lang: str | None = None,
    worst_n: int = 10,
    err: IO[str] | None = None,
    run: dict[str, Any] | None = None,
) -> QAReport:
    """Score every conversation of ``input_path`` into ``out_dir`` (resuming), then aggregate and report.

    ``input_path`` is a .jsonl or .csv file, or a folder or glob of them. Conversations are scored by
    ``scorer`` (default: :class:`LocalScorer` over ``analyzer`` and ``detector`` in this process).
    ``progress=None`` shows the bar for inputs of 200 lines or more. Problems in the input go to
    ``err`` (default stderr) as ``PATH: line N: reason (skipped)`` and into ``QAReport.bad``.
    ``run`` names what else decides the results (the models); with the input and the options it is kept in
    ``out_dir/run.json``, and a folder holding another run's conversations is an error, not a resume.
    """
    err = err or sys.stderr
    check_input(input_path)
    if scorer is None:
        if analyzer is None or detector is None:
            raise ValueError("run_qa needs an analyzer and a detector, or a scorer")
        scorer = LocalScorer(ConversationAnalyzer(analyzer, detector), keep_text=keep_text, lang=lang)
    out = Path(out_dir)
    identity = {"input": input_identity(input_path), "lang": lang, "keep_text": keep_text, **(run or {})}
    done = prepare_output(out, identity)
    report = QAReport(out_dir=out, resumed=0)
    total = count_lines(str(input_path))
    show = progress if progress is not None else (total or 0) >= 200
    bar = tqdm(total=total, unit="line", file=err, disable=not show, dynamic_ncols=True, desc="qa")
    seen: set[str] = set()
    read_to = 0
    writers = _Writers(out)

    def problem(item: BadLine) -> None:
        report.bad.append(item)
        err.write(item.report(input_path))

    def advance(line: int) -> None:
        nonlocal read_to
        if line > read_to:
            bar.update(line - read_to)
            read_to = line

    last_lines: list[int] = []  # of the chunks handed to the scorer and not yet written

    def chunks() -> Iterator[list[SourceConversation]]:
        """The input read, checked and resumed, cut into chunks (64 conversations or 512 customer turns)."""
        pending: list[SourceConversation] = []
        pending_customer = 0
        for item in read_conversations(input_path):
            if isinstance(item, BadLine):
                problem(item)
                continue
            if item.key in seen:
                problem(BadLine(item.line, f"conversation id {short(item.key)} repeated", path=item.path))
                continue
            seen.add(item.key)
            n_customer = sum(t.role == Role.CUSTOMER for t in item.turns)
            if n_customer == 0:
                problem(BadLine(item.line, "no customer turn to score", path=item.path))
                continue
            if item.key in done:
                report.resumed += 1
            # chunks are cut as in a clean run, done conversations included: a chunk holding any conversation still
            # to do is scored whole, so every conversation has the batch-mates it has in a clean run (an int8 model's
            # scores depend on them) and a resumed run ends with the same numbers; only the new ones are written
            pending.append(item)
            pending_customer += n_customer
            if len(pending) >= batch_conversations or pending_customer >= max_customer_turns:
                yield from cut(pending)
                pending, pending_customer = [], 0
        if pending:
            yield from cut(pending)

    def cut(chunk: list[SourceConversation]) -> Iterator[list[SourceConversation]]:
        if all(c.key in done for c in chunk):
            advance(chunk[-1].last_line)
            return
        last_lines.append(chunk[-1].last_line)
        yield chunk

    try:
        for output in scorer.score_chunks(chunks()):
            if done:
                output = output.without(done)
            for bad in output.problems:
                problem(bad)
            writers.write_chunk(output)
            report.scored += len(output.conversations_json)
            report.turns_scored += len(output.turns_json)
            advance(last_lines.pop(0))
        if total:
            advance(total)
    finally:
        bar.close()
        writers.close()
    report.summary = summarize(out / "conversations.jsonl", worst_n=worst_n)
    write_agents(report.summary, out)
    write_report(report.summary, out / "report.html", title=f"CalmFirst QA: {Path(str(input_path)).name}")
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
