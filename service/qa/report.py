"""The QA report: one self-contained HTML file that opens offline.

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
import html
import io
import logging
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from data.schema import ANGER_LABELS
from service.qa import (
    CALMED_BONUS,
    DEFAULT_MISTAKE_PENALTY,
    MISSED_STEP_PENALTY,
    MISTAKE_PENALTY,
    ROSE_PENALTY,
    UNHANDLED_ESCALATION_PENALTY,
    QASummary,
)

logger = logging.getLogger(__name__)

MAX_AGENT_ROWS = 200
MAX_AGENTS_PLOTTED = 20

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI","Noto Sans CJK SC","Microsoft YaHei",sans-serif;margin:2em;
color:#222;max-width:1200px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right}
.cards{display:flex;flex-wrap:wrap;gap:1em}.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;min-width:9em}
.card b{display:block;font-size:1.4em}
img{max-width:100%;height:auto;border:1px solid #eee}
pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.85em}
.note{color:#666;font-size:.85em}
"""


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing-glyph warnings must not reach the user's terminal
        fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(width: float = 7.0, height: float = 3.6) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def plot_worst_series(worst: Sequence[dict[str, Any]]) -> str | None:
    """Anger level turn by turn for the worst conversations, labelled by rank."""
    if not worst:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for rank, conv in enumerate(worst, start=1):
        series = conv["anger_series"]
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


def plot_steps_missed(agents: Sequence[dict[str, Any]]) -> str | None:
    """Stacked missed-step counts for the agents who missed most (top MAX_AGENTS_PLOTTED)."""
    ranked = sorted(
        (a for a in agents if a["steps_missed_total"]), key=lambda a: (-a["steps_missed_total"], a["agent_id"])
    )
    ranked = ranked[:MAX_AGENTS_PLOTTED]
    if not ranked:
        return None
    codes = sorted({c for a in ranked for c in a["steps_missed"]})
    labels = [f"A{i}" for i in range(1, len(ranked) + 1)]
    fig = _figure(7.5, 0.32 * len(ranked) + 1.6)
    ax = fig.add_subplot()
    left = [0] * len(ranked)
    for code in codes:
        values = [a["steps_missed"].get(code, 0) for a in ranked]
        ax.barh(labels, values, left=left, label=code)
        left = [x + v for x, v in zip(left, values, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel("missed steps (all conversations)")
    ax.set_title("Steps missed per agent")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    return _png(fig)


def plot_score_histogram(bins: Sequence[int]) -> str | None:
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
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, numeric: Iterable[int] = ()) -> str:
    num = set(numeric)
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(f'<td class="num">{_e(v)}</td>' if i in num else f"<td>{_e(v)}</td>" for i, v in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(uri: str | None, alt: str) -> str:
    if uri is None:
        return f'<p class="note">{_e(alt)}: nothing to plot.</p>'
    return f'<img src="{uri}" alt="{_e(alt)}">'


def _codes(values: Iterable[str]) -> str:
    return ", ".join(values) or "-"


def formula_text() -> str:
    """The handling-score formula in words, built from the constants the score is computed with."""
    high = sorted(c for c, p in MISTAKE_PENALTY.items() if p == max(MISTAKE_PENALTY.values()))
    low = sorted(c for c, p in MISTAKE_PENALTY.items() if p != max(MISTAKE_PENALTY.values()))
    return "\n".join(
        [
            "score = 100",
            f"  - {max(MISTAKE_PENALTY.values())} per agent turn with {', '.join(high)}",
            f"  - {DEFAULT_MISTAKE_PENALTY} per agent turn with {', '.join(low)} (or a playbook's own mistake code)",
            f"  - {MISSED_STEP_PENALTY} per core step missed for the final situation (escalate_supervisor excepted)",
            f"  - {UNHANDLED_ESCALATION_PENALTY} if escalation was needed and escalate_supervisor never taken",
            f"  + {CALMED_BONUS} if the customer calmed down (final anger below the peak)",
            f"  - {ROSE_PENALTY} if anger rose (final anger is the peak, reached from a lower turn)",
            "clipped to 0..100",
        ]
    )


def render_report(summary: QASummary, *, title: str = "CalmFirst QA report") -> str:
    """The whole report as one HTML string (no external references)."""
    totals = summary.totals()
    agents = [a.to_dict() for a in summary.agents.values()]
    cards = [
        ("conversations", totals["conversations"]),
        ("turns", totals["turns"]),
        ("customer turns", totals["customer_turns"]),
        ("agents", totals["agents"]),
        ("mean handling score", totals["mean_handling_score"]),
        ("escalations", totals["escalations"]),
        ("escalations not handed over", totals["escalations_unhandled"]),
        ("threats", totals["threats"]),
        ("turns skipped in input", totals["turns_skipped"]),
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        '<div class="cards">' + "".join(f'<div class="card"><b>{_e(v)}</b>{_e(k)}</div>' for k, v in cards) + "</div>",
        "<h2>Worst conversations</h2>",
        '<p class="note">Lowest handling score first, then highest peak anger.</p>',
        _img(plot_worst_series(summary.worst), "anger over turns, worst conversations"),
        _table(
            [
                "rank",
                "conversation",
                "agent",
                "score",
                "peak",
                "final",
                "trend",
                "anger series",
                "types",
                "mistakes",
                "steps missed",
            ],
            (
                [
                    f"#{i}",
                    c["conversation_id"],
                    c["agent_id"] or "-",
                    c["handling_score"],
                    c["peak_anger"],
                    c["final_anger"],
                    c["anger_trend"],
                    " ".join(map(str, c["anger_series"])),
                    _codes(c["types"]),
                    _codes(c["mistakes"]),
                    _codes(c["steps_missed"]),
                ]
                for i, c in enumerate(summary.worst, start=1)
            ),
            numeric=(3, 4, 5),
        ),
        "<h2>Handling scores</h2>",
        _img(plot_score_histogram(summary.score_bins), "handling score histogram"),
        f"<pre>{_e(formula_text())}</pre>",
        "<h2>Complaint types and anger</h2>",
        _img(plot_complaint_types(totals["complaint_types"]), "complaint types"),
        _table(["complaint type", "conversations"], totals["complaint_types"].items(), numeric=(1,)),
        _img(plot_anger_levels(summary.anger_levels, summary.peak_levels), "anger levels"),
        _table(
            ["level", "customer turns", "conversations at this peak"],
            ([f"{i} {ANGER_LABELS[i]}", summary.anger_levels[i], summary.peak_levels[i]] for i in range(4)),
            numeric=(1, 2),
        ),
        _table(["final situation", "conversations"], sorted(summary.situations.items()), numeric=(1,)),
        "<h2>Agents</h2>",
        _img(plot_steps_missed(agents), "steps missed per agent"),
    ]
    plotted = sorted(
        (a for a in agents if a["steps_missed_total"]), key=lambda a: (-a["steps_missed_total"], a["agent_id"])
    )
    if plotted:
        parts.append(
            _table(
                ["label", "agent", "steps missed"],
                (
                    [f"A{i}", a["agent_id"], a["steps_missed_total"]]
                    for i, a in enumerate(plotted[:MAX_AGENTS_PLOTTED], 1)
                ),
                numeric=(2,),
            )
        )
    by_score = sorted(agents, key=lambda a: (a["mean_handling_score"], a["agent_id"]))
    if len(by_score) > MAX_AGENT_ROWS:
        parts.append(
            f'<p class="note">{MAX_AGENT_ROWS} lowest-scoring of {len(by_score)} agents; all in agents.csv.</p>'
        )
    parts.append(
        _table(
            [
                "agent",
                "conversations",
                "mean score",
                "min score",
                "escalations",
                "not handed over",
                "mistakes",
                "steps missed",
                "mistakes by code",
                "steps missed by code",
            ],
            (
                [
                    a["agent_id"],
                    a["conversations"],
                    a["mean_handling_score"],
                    a["min_handling_score"],
                    a["escalations"],
                    a["escalations_unhandled"],
                    a["mistakes_total"],
                    a["steps_missed_total"],
                    _codes(f"{k} {v}" for k, v in a["mistakes"].items()),
                    _codes(f"{k} {v}" for k, v in a["steps_missed"].items()),
                ]
                for a in by_score[:MAX_AGENT_ROWS]
            ),
            numeric=(1, 2, 3, 4, 5, 6, 7),
        )
    )
    parts.append(
        _table(
            ["mistake", "agent turns"],
            sorted(summary.mistakes.items(), key=lambda kv: (-kv[1], kv[0])),
            numeric=(1,),
        )
    )
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(summary: QASummary, path: Path, *, title: str = "CalmFirst QA report") -> Path:
    """Write ``report.html`` atomically (a reader never sees half a report)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_report(summary, title=title), encoding="utf-8")
    tmp.replace(path)
    logger.info("wrote %s", path)
    return path
