"""The card of a released model: the template card plus its held-out evaluation and experiments.

Why a separate step: the trainer's card knows the training run; a release is also calibrated
(``calmfirst calibrate``), evaluated once on the test split by ``calmfirst evaluate`` and compared
with the runs that did not ship. This joins those files into the model folder's README.md, so the
figures in the card are the ones the commands wrote, never typed by hand.

    python -m training.release --model model/default --test runs/eval/test.json \\
        --experiments training/experiments/v2_dev.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from model.card import render_model_card
from model.config import read_config
from training.breakdown import markdown as breakdown_markdown
from training.contrast import contrast_markdown


def release_sections(test: dict[str, Any], experiments: str | None = None) -> list[str]:
    """Card sections from ``calmfirst evaluate`` metrics on the test split (and the experiment notes)."""
    data = test.get("data", {})
    head = [
        f"## Held-out evaluation ({data.get('split', 'test')} split, {data.get('n', test.get('n'))} records, "
        "measured once)",
        "",
        "Real and written records are never pooled in the rows below; the model was chosen on the dev split.",
        "",
    ]
    body = breakdown_markdown(test["breakdown"], test.get("confident_mistakes", []))
    sections = ["\n".join(head + body[2:])]
    if "contrast" in test:
        sections.append("\n".join(contrast_markdown(test["contrast"])))
    if experiments:
        sections.append(experiments.replace("# Model v2 experiments", "## Experiments", 1))
    return sections


def write_release_card(model_dir: str | Path, test_metrics: str | Path, experiments: str | Path | None = None) -> Path:
    model_dir = Path(model_dir)
    test = json.loads(Path(test_metrics).read_text(encoding="utf-8"))
    notes = Path(experiments).read_text(encoding="utf-8") if experiments else None
    card = render_model_card(read_config(model_dir), sections=release_sections(test, notes))
    out = model_dir / "README.md"
    out.write_text(card, encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.release", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--test", required=True, help="metrics JSON of `calmfirst evaluate --split test`")
    p.add_argument("--experiments", default=None, help="Markdown of the dev-split experiments")
    args = p.parse_args(argv)
    sys.stdout.write(f"{write_release_card(args.model, args.test, args.experiments)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
