"""Aggregates over a QA output folder: totals, per agent, and the N worst conversations.

Always recomputed from conversations.jsonl (the commit log), in one streaming pass, so a resumed
run ends with the same numbers as a clean one and memory stays bounded: counters per agent and a
heap of the N worst, never all conversations.
"""

from __future__ import annotations

import csv
import hashlib
import heapq
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from data.vocab import Mistake, Step, values
from service.io.readers import read_jsonl_file
from service.qa.rows import ConversationRow

UNASSIGNED = "(unassigned)"
#: bootstrap resamples for each agent's interval
BOOTSTRAP = 2000


#: fewer conversations than this: the interval is the whole 0-100 scale (a bootstrap of one has no width)
MIN_FOR_INTERVAL = 3
#: fewer conversations than this that all share one score: the whole scale too (no spread seen is not none)
MIN_WITHOUT_SPREAD = 10


def bootstrap_mean_interval(
    hist: Counter[int], *, key: str, n_boot: int = BOOTSTRAP, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over conversations, from a histogram of their scores.

    Resampling n conversations with replacement is a multinomial draw over the distinct scores, so
    an agent's scores are kept as counts per score (at most 101 numbers), never as a list. The
    seed comes from ``key`` (the agent id): the same conversations always give the same interval.
    """
    n = sum(hist.values())
    if n == 0:
        return (0.0, 0.0)
    scores = np.array(sorted(hist), dtype=float)
    if n < MIN_FOR_INTERVAL or (len(scores) == 1 and n < MIN_WITHOUT_SPREAD):
        # a bootstrap of one or two conversations (or of a few that happen to share a score) has no width, so the
        # agent would look told apart from everyone: too few to bound the mean, the interval is the whole scale
        return (0.0, 100.0)
    if len(scores) == 1:
        return (float(scores[0]), float(scores[0]))
    p = np.array([hist[int(v)] for v in scores], dtype=float) / n
    seed = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "little")
    draws = np.random.default_rng(seed).multinomial(n, p, size=n_boot)
    means = draws @ scores / n
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return (round(float(lo), 1), round(float(hi), 1))


class AgentRow(BaseModel):
    """One agent's line of agents.json (and, flattened, of agents.csv)."""

    agent_id: str
    conversations: int
    mean_handling_score: float
    min_handling_score: int
    #: 95% bootstrap interval of the mean over the agent's conversations, and the rank by the mean (1 = best);
    #: two agents whose intervals overlap are not told apart by the score
    ci95_low: float = 0.0
    ci95_high: float = 0.0
    rank: int = 0
    escalations: int
    escalations_unhandled: int
    threats: int
    mistakes_total: int
    steps_missed_total: int
    mistakes: dict[str, int]
    steps_missed: dict[str, int]

    def csv_row(self, mistake_codes: list[str], step_codes: list[str]) -> dict[str, Any]:
        """The agents.csv row: the totals, then one column per mistake code and per missed-step code."""
        row: dict[str, Any] = self.model_dump(exclude={"mistakes", "steps_missed"})
        row.update({f"mistake_{c}": self.mistakes.get(c, 0) for c in mistake_codes})
        row.update({f"missed_{c}": self.steps_missed.get(c, 0) for c in step_codes})
        return row


class Totals(BaseModel):
    """The run's totals (``summary`` in agents.json, the cards and tables of the report)."""

    conversations: int
    turns: int
    customer_turns: int
    agent_turns: int
    turns_skipped: int
    mean_handling_score: float
    escalations: int
    escalations_unhandled: int
    threats: int
    agents: int
    anger_levels: dict[str, int]
    peak_anger_levels: dict[str, int]
    complaint_types: dict[str, int]
    situations: dict[str, int]
    mistakes: dict[str, int]
    steps_missed: dict[str, int]


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
    scores: Counter[int] = field(default_factory=Counter)

    @property
    def mean_score(self) -> float:
        return round(self.score_sum / self.conversations, 1) if self.conversations else 0.0

    def row(self, rank: int = 0) -> AgentRow:
        lo, hi = bootstrap_mean_interval(self.scores, key=self.agent_id)
        return AgentRow(
            agent_id=self.agent_id,
            conversations=self.conversations,
            mean_handling_score=self.mean_score,
            min_handling_score=self.min_score,
            ci95_low=lo,
            ci95_high=hi,
            rank=rank,
            escalations=self.escalations,
            escalations_unhandled=self.escalations_unhandled,
            threats=self.threats,
            mistakes_total=sum(self.mistakes.values()),
            steps_missed_total=sum(self.steps_missed.values()),
            mistakes=dict(sorted(self.mistakes.items())),
            steps_missed=dict(sorted(self.steps_missed.items())),
        )


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
    worst: list[ConversationRow] = field(default_factory=list)

    @property
    def mean_score(self) -> float:
        return round(self.score_sum / self.conversations, 1) if self.conversations else 0.0

    def totals(self) -> Totals:
        return Totals(
            conversations=self.conversations,
            turns=self.turns,
            customer_turns=self.customer_turns,
            agent_turns=self.agent_turns,
            turns_skipped=self.turns_skipped,
            mean_handling_score=self.mean_score,
            escalations=self.escalations,
            escalations_unhandled=self.escalations_unhandled,
            threats=self.threats,
            agents=len(self.agents),
            anger_levels={str(k): self.anger_levels[k] for k in range(4)},
            peak_anger_levels={str(k): self.peak_levels[k] for k in range(4)},
            complaint_types=dict(sorted(self.complaint_types.items(), key=lambda kv: (-kv[1], kv[0]))),
            situations=dict(sorted(self.situations.items())),
            mistakes=dict(sorted(self.mistakes.items())),
            steps_missed=dict(sorted(self.steps_missed.items())),
        )

    def add(self, s: ConversationRow) -> None:
        score = s.handling_score
        self.conversations += 1
        self.turns += s.turns
        self.customer_turns += s.customer_turns
        self.agent_turns += s.agent_turns
        self.turns_skipped += s.turns_skipped
        self.score_sum += score
        self.score_bins[min(score // 10, 9)] += 1
        self.anger_levels.update(s.anger_series)
        self.peak_levels[s.peak_anger] += 1
        self.complaint_types[s.complaint_type] += 1
        self.situations[s.situation] += 1
        self.trends[s.anger_trend] += 1
        self.mistakes.update(s.mistake_counts)
        self.steps_missed.update(s.steps_missed)
        unhandled = s.escalate and Step.ESCALATE_SUPERVISOR not in s.steps_taken
        self.escalations += s.escalate
        self.escalations_unhandled += unhandled
        self.threats += s.threat
        agent_id = UNASSIGNED if s.agent_id in (None, "") else str(s.agent_id)
        a = self.agents.get(agent_id)
        if a is None:
            a = self.agents[agent_id] = AgentStats(agent_id)
        a.conversations += 1
        a.score_sum += score
        a.scores[score] += 1
        a.min_score = min(a.min_score, score)
        a.escalations += s.escalate
        a.escalations_unhandled += unhandled
        a.threats += s.threat
        a.mistakes.update(s.mistake_counts)
        a.steps_missed.update(s.steps_missed)


def _worst_key(s: ConversationRow) -> tuple[Any, ...]:
    # lowest handling score first, then highest peak, then highest final anger; the id breaks ties
    return (s.handling_score, -s.peak_anger, -s.final_anger, str(s.conversation_id))


class _Rev:
    """Reverses ordering so a min-heap keeps the N smallest keys (its top is the best of the worst)."""

    __slots__ = ("key",)

    def __init__(self, key: tuple[Any, ...]) -> None:
        self.key = key

    def __lt__(self, other: _Rev) -> bool:
        return self.key > other.key


def summarize(path: Path, *, worst_n: int = 10) -> QASummary:
    """Aggregates over conversations.jsonl, streamed: counters plus a bounded heap of the worst."""
    agg = QASummary()
    heap: list[tuple[_Rev, ConversationRow]] = []
    if not path.exists():
        return agg
    for _, obj in read_jsonl_file(path):
        s = ConversationRow.model_validate(obj)
        agg.add(s)
        if worst_n > 0:
            item = (_Rev(_worst_key(s)), s)
            if len(heap) < worst_n:
                heapq.heappush(heap, item)
            elif item[0].key < heap[0][0].key:
                heapq.heapreplace(heap, item)
    agg.worst = [s for _, s in sorted(heap, key=lambda it: it[0].key)]
    agg.agents = dict(sorted(agg.agents.items()))
    return agg


def agent_rows(agg: QASummary) -> list[AgentRow]:
    """One row per agent (in agent id order), each with its rank by mean handling score (1 = best; ties share
    the better rank) and the bootstrap interval of that mean."""
    means = sorted((a.mean_score for a in agg.agents.values()), reverse=True)
    rank_of: dict[float, int] = {}
    for i, m in enumerate(means, start=1):
        rank_of.setdefault(m, i)
    return [a.row(rank=rank_of[a.mean_score]) for a in agg.agents.values()]


def write_agents(agg: QASummary, out_dir: Path) -> None:
    """agents.json (totals + one object per agent) and agents.csv (one column per mistake/step code)."""
    agents = agent_rows(agg)
    doc = {"summary": agg.totals().model_dump(mode="json"), "agents": [a.model_dump(mode="json") for a in agents]}
    (out_dir / "agents.json").write_text(json.dumps(doc, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    mistake_codes = sorted(set(values(Mistake)) | set(agg.mistakes))
    step_codes = sorted(agg.steps_missed)
    base = [k for k in AgentRow.model_fields if k not in ("mistakes", "steps_missed")] if agents else ["agent_id"]
    columns = base + [f"mistake_{c}" for c in mistake_codes] + [f"missed_{c}" for c in step_codes]
    with open(out_dir / "agents.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for a in agents:
            w.writerow(a.csv_row(mistake_codes, step_codes))
