"""Model cards generated from the saved config (and training results when present)."""

from __future__ import annotations

import json
from typing import Any

from data.vocab import HEADLINE_METRICS, Script


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def render_model_card(config: Any) -> str:
    """A Markdown card: what the model is, what it was trained on, how well it did, and its limits."""
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    training = cfg.get("training") or {}
    lines = [
        f"# {cfg['name']} {cfg['version']}",
        "",
        "CalmFirst classifier for Chinese customer messages (Traditional and Simplified): anger level 0-3 "
        "(ordinal), complaint type (10 types) and threat. A routing layer turns its scores into "
        "`calm_first` / `ready_for_solutions`, `escalate` and a next step for the agent.",
        "",
        "## Model",
        f"- backbone: `{cfg['backbone']}` (checksum `{cfg['backbone_checksum'][:24]}...`), "
        f"{'embedded in this folder' if cfg['backbone_embedded'] else 'referenced, not included'}",
        f"- adapters: {('LoRA ' + json.dumps(cfg['lora'])) if cfg.get('lora') else 'none (full fine-tune)'}",
        f"- input: `{cfg['text_prefix']}` + text, max {cfg['max_length']} tokens, {cfg['pooling']} pooling",
        f"- label schema v{cfg['schema_version']}: anger {cfg['anger_labels']}; types {cfg['complaint_types']}",
        f"- anger temperature (calibration): {_fmt(cfg['temperature'])}",
        f"- libraries: {json.dumps(cfg.get('library_versions', {}))}",
        "",
    ]
    data = training.get("data")
    if data:
        lines += ["## Training data", ""]
        for k, v in data.items():
            lines.append(f"- {k}: {json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v}")
        lines.append("")
    hp = training.get("hyperparameters")
    if hp:
        lines += ["## Hyperparameters", "", "```json", json.dumps(hp, indent=2, ensure_ascii=False), "```", ""]
    metrics = training.get("metrics")
    if metrics:
        lines += ["## Evaluation", "", f"Measured on: {training.get('eval_split', 'held-out split')}", ""]
        lines += ["| metric | overall | hant | hans |", "|---|---|---|---|"]
        per = metrics.get("per_script", {})
        for key in HEADLINE_METRICS:
            if key in metrics:
                row = [_fmt(metrics[key])] + [_fmt(per.get(s, {}).get(key, "-")) for s in Script]
                lines.append(f"| {key} | " + " | ".join(row) + " |")
        lines.append("")
    lines += [
        "## Intended use",
        "",
        "Routing and quality review in contact centers: rank and flag messages so that angry customers are "
        "calmed before solutions are offered, and threats reach a supervisor. A person stays in the loop.",
        "",
        "## Limits",
        "",
        "- Trained on short Chinese customer messages and reviews; long e-mails, other languages and "
        "code-mixed text are out of scope.",
        "- Traditional-script data is partly machine-converted from Simplified (OpenCC) at training time.",
        "- Scores are not a judgement of a person; do not use them for decisions about individuals.",
        "",
    ]
    return "\n".join(lines)
