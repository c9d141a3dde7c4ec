"""The QA report: one self-contained HTML file that opens offline (``templates/report.html.j2``).

QA reports are mailed around and opened on locked-down machines, often without internet, so
the file carries everything: plots are matplotlib PNGs embedded as base64 ``data:`` URIs, the
CSS is inline, and there is no JavaScript and no link to a CDN. The report holds no message
text, only codes, counts and conversation ids. Plots are drawn with the object-oriented
matplotlib API (no pyplot), so building a report never touches global backend state, and PNGs
are written without a software/date stamp, so the same numbers give the same file.

Plot labels use codes and ranks (#1, #2...) rather than conversation ids: ids may hold CJK
characters that the fonts available on a server cannot draw; the tables next to each plot
map ranks to ids.
"""

from __future__ import annotations

import base64
import io
import logging
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from data.schema import ANGER_LABELS
from service.qa.aggregate import AgentRow, QASummary
from service.qa.aggregate import agent_rows as ranked_agents
from service.qa.rows import ConversationRow
from service.qa.scoring import formula_text

logger = logging.getLogger(__name__)

MAX_AGENT_ROWS = 200
MAX_AGENTS_PLOTTED = 20

TEMPLATES = Path(__file__).resolve().parent / "templates"
#: The handling score's validation figures (written by ``python -m service.qa.validate``).
VALIDATION_FILE = Path(__file__).resolve().parent / "validation.json"


def trust_section(path: Path | None = None) -> dict[str, Any] | None:
    """What the report says under "How far to trust this score": the held-out agreement with people."""
    import json

    try:
        doc = json.loads((path or VALIDATION_FILE).read_text(encoding="utf-8"))
        s = doc["spearman"]
        held = s["handling_score"]["held_out"]
        fit = s["handling_score"]["fit"]
        baseline = s["final_and_peak_anger"]["held_out"]["S"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    ci = doc.get("held_out_S_ci95") or [None, None]
    return {
        "rows": [
            ["customer satisfaction (S)", f"{held['S']:.2f}", f"{fit['S']:.2f}"],
            ["effectiveness of the dialogue (E)", f"{held['E']:.2f}", f"{fit['E']:.2f}"],
            ["task accomplished (A)", f"{held['A']:.2f}", f"{fit['A']:.2f}"],
        ],
        "s": f"{held['S']:.2f}",
        "ci": f"{ci[0]:.2f} to {ci[1]:.2f}" if ci[0] is not None else "-",
        "baseline": f"{baseline:.2f}",
        "previous": f"{s['previous_handling_score']['held_out']['S']:.2f}",
        "held_out": doc["dialogues"]["held_out"],
        "fit": doc["dialogues"]["fit"],
        "created": doc.get("created", "?"),
        "command": doc.get("command", "python -m service.qa.validate"),
        "model": f"{doc['model']['name']} {doc['model']['version']}" if "model" in doc else "?",
        "agent_model": doc.get("agent_model", "?"),
    }


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing-glyph warnings must not reach the user's terminal
        fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(width: float = 7.0, height: float = 3.6) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def plot_worst_series(worst: Sequence[ConversationRow]) -> str | None:
    """Anger level turn by turn for the worst conversations, labelled by rank."""
    if not worst:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for rank, conv in enumerate(worst, start=1):
        series = conv.anger_series
        ax.plot(range(1, len(series) + 1), series, marker="o", linewidth=1.5, alpha=0.85, label=f"#{rank}")
    ax.set_yticks(range(4), [f"{i} {label}" for i, label in enumerate(ANGER_LABELS)])
    ax.set_ylim(-0.3, 3.3)
    ax.set_xlabel("customer turn")
    ax.set_title("Anger over the conversation: the worst conversations")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", title="rank")
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_complaint_types(counts: dict[str, int]) -> str | None:
    """Conversations per primary complaint type."""
    if not counts:
        return None
    items = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]))
    fig = _figure(7.0, 0.35 * len(items) + 1.2)
    ax = fig.add_subplot()
    ax.barh([k for k, _ in items], [v for _, v in items], color="#4c78a8")
    ax.set_xlabel("conversations (primary complaint type)")
    ax.set_title("Complaint types")
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {v}", va="center", fontsize="small")
    return _png(fig)


def plot_anger_levels(turn_levels: dict[int, int], peak_levels: dict[int, int]) -> str | None:
    """Share of customer turns and of conversations (by peak) at each anger level."""
    if not sum(turn_levels.values()):
        return None
    fig = _figure()
    ax = fig.add_subplot()
    xs = range(4)
    n_turns = sum(turn_levels.values()) or 1
    n_conv = sum(peak_levels.values()) or 1
    ax.bar(
        [x - 0.2 for x in xs],
        [100 * turn_levels.get(x, 0) / n_turns for x in xs],
        width=0.4,
        label="customer turns",
        color="#f58518",
    )
    ax.bar(
        [x + 0.2 for x in xs],
        [100 * peak_levels.get(x, 0) / n_conv for x in xs],
        width=0.4,
        label="conversations (peak)",
        color="#e45756",
    )
    ax.set_xticks(list(xs), [f"{i} {label}" for i, label in enumerate(ANGER_LABELS)])
    ax.set_ylabel("%")
    ax.set_title("Anger levels")
    ax.legend(fontsize="small")
    return _png(fig)


def _most_missed(agents: Iterable[AgentRow]) -> list[AgentRow]:
    """Agents with missed steps, most first (the ones plotted, as A1, A2...)."""
    return sorted((a for a in agents if a.steps_missed_total), key=lambda a: (-a.steps_missed_total, a.agent_id))


def plot_steps_missed(agents: Sequence[AgentRow]) -> str | None:
    """Stacked missed-step counts for the agents who missed most (top MAX_AGENTS_PLOTTED)."""
    ranked = _most_missed(agents)[:MAX_AGENTS_PLOTTED]
    if not ranked:
        return None
    codes = sorted({c for a in ranked for c in a.steps_missed})
    labels = [f"A{i}" for i in range(1, len(ranked) + 1)]
    fig = _figure(7.5, 0.32 * len(ranked) + 1.6)
    ax = fig.add_subplot()
    left = [0] * len(ranked)
    for code in codes:
        values = [a.steps_missed.get(code, 0) for a in ranked]
        ax.barh(labels, values, left=left, label=code)
        left = [x + v for x, v in zip(left, values, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel("missed steps (all conversations)")
    ax.set_title("Steps missed per agent")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    return _png(fig)


def plot_score_histogram(bins: Sequence[int]) -> str | None:
    """Conversations per handling-score decile."""
    if not sum(bins):
        return None
    fig = _figure(7.0, 3.0)
    ax = fig.add_subplot()
    labels = [f"{10 * i}-{10 * i + 9}" if i < 9 else "90-100" for i in range(10)]
    ax.bar(labels, bins, color="#54a24b")
    ax.set_xlabel("handling score")
    ax.set_ylabel("conversations")
    ax.set_title("Handling scores")
    ax.tick_params(axis="x", labelsize="small")
    return _png(fig)


# ------------------------------------------------------------------ HTML
def _codes(values: Iterable[str]) -> str:
    return ", ".join(values) or "-"


def _environment() -> Environment:
    # autoescape: ids and agent ids come from the input and may hold markup
    return Environment(
        loader=FileSystemLoader(TEMPLATES), autoescape=True, keep_trailing_newline=True, undefined=StrictUndefined
    )


def render_report(summary: QASummary, *, title: str = "CalmFirst QA report") -> str:
    """The whole report as one HTML string (no external references)."""
    totals = summary.totals()
    agents = ranked_agents(summary)
    by_score = sorted(agents, key=lambda a: (a.mean_handling_score, a.agent_id))
    cards = [
        ("conversations", totals.conversations),
        ("turns", totals.turns),
        ("customer turns", totals.customer_turns),
        ("agents", totals.agents),
        ("mean handling score", totals.mean_handling_score),
        ("escalations", totals.escalations),
        ("escalations not handed over", totals.escalations_unhandled),
        ("threats", totals.threats),
        ("turns skipped in input", totals.turns_skipped),
    ]
    worst_rows = [
        [
            f"#{i}",
            c.conversation_id,
            c.agent_id or "-",
            c.handling_score,
            c.peak_anger,
            c.final_anger,
            c.anger_trend,
            " ".join(map(str, c.anger_series)),
            _codes(c.types),
            _codes(c.mistakes),
            _codes(c.steps_missed),
        ]
        for i, c in enumerate(summary.worst, start=1)
    ]
    agent_rows = [
        [
            a.rank,
            a.agent_id,
            a.conversations,
            a.mean_handling_score,
            f"{a.ci95_low:.1f}-{a.ci95_high:.1f}",
            a.min_handling_score,
            a.escalations,
            a.escalations_unhandled,
            a.mistakes_total,
            a.steps_missed_total,
            _codes(f"{k} {v}" for k, v in a.mistakes.items()),
            _codes(f"{k} {v}" for k, v in a.steps_missed.items()),
        ]
        for a in by_score[:MAX_AGENT_ROWS]
    ]
    plots = {
        "worst": plot_worst_series(summary.worst),
        "scores": plot_score_histogram(summary.score_bins),
        "types": plot_complaint_types(totals.complaint_types),
        "anger": plot_anger_levels(summary.anger_levels, summary.peak_levels),
        "steps_missed": plot_steps_missed(agents),
    }
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            title=title,
            cards=cards,
            plots=plots,
            worst_rows=worst_rows,
            formula=formula_text(),
            trust=trust_section(VALIDATION_FILE),
            complaint_types=list(totals.complaint_types.items()),
            anger_rows=[[f"{i} {ANGER_LABELS[i]}", summary.anger_levels[i], summary.peak_levels[i]] for i in range(4)],
            situations=sorted(summary.situations.items()),
            plotted_rows=[
                [f"A{i}", a.agent_id, a.steps_missed_total]
                for i, a in enumerate(_most_missed(agents)[:MAX_AGENTS_PLOTTED], 1)
            ],
            agents_total=len(by_score),
            max_agent_rows=MAX_AGENT_ROWS,
            agent_rows=agent_rows,
            mistakes=sorted(summary.mistakes.items(), key=lambda kv: (-kv[1], kv[0])),
        )
    )


def write_report(summary: QASummary, path: Path, *, title: str = "CalmFirst QA report") -> Path:
    """Write ``report.html`` atomically (a reader never sees half a report)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_report(summary, title=title), encoding="utf-8")
    tmp.replace(path)
    logger.info("wrote %s", path)
    return path
