"""Model cards generated from the saved config (and training results when present).

The layout is a Jinja2 template (``templates/model_card.md.j2``); this module only gathers and
formats the values, so the card can be reworded without touching code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from data.vocab import HEADLINE_METRICS, Script

TEMPLATES = Path(__file__).resolve().parent / "templates"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _environment() -> Environment:
    # Markdown, not HTML: no autoescaping; values are the model's own config
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=False,
        keep_trailing_newline=False,
        undefined=StrictUndefined,
    )
    env.filters["fmt"] = _fmt
    env.filters["pylist"] = lambda v: str(list(v))
    env.filters["tojson_plain"] = lambda v: json.dumps(v)
    env.filters["tojson_cjk"] = lambda v: json.dumps(v, ensure_ascii=False)
    env.filters["tojson_indented"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False)
    return env


def render_model_card(config: Any, *, sections: list[str] | None = None) -> str:
    """A Markdown card: what the model is, what it was trained on, how well it did, and its limits.

    ``sections`` are further Markdown sections appended as they are (a release's evaluation on the
    held-out split, its experiment table: ``training.release``).
    """
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    cfg.setdefault("library_versions", {})
    training = cfg.get("training") or {}
    metrics = training.get("metrics") or {}
    per = metrics.get("per_script", {})
    metric_rows = [
        [key, _fmt(metrics[key]), *[_fmt(per.get(s, {}).get(key, "-")) for s in Script]]
        for key in HEADLINE_METRICS
        if key in metrics
    ]
    return (
        _environment()
        .get_template("model_card.md.j2")
        .render(
            cfg=cfg,
            data=training.get("data"),
            hyperparameters=training.get("hyperparameters"),
            metrics=metrics,
            eval_split=training.get("eval_split", "held-out split"),
            metric_rows=metric_rows,
        )
        + "\n"
        + "".join("\n" + section.strip() + "\n" for section in sections or [])
    )
