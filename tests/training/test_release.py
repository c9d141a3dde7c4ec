"""The release card joins the template card with the held-out evaluation written by `calmfirst evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import copy_model
from training.release import write_release_card
from training.run import run_evaluation


def test_release_card_carries_the_evaluated_figures(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "m"
    copy_model(tiny_model_dir, model)
    data = tmp_path / "d.jsonl"
    rows = [
        {"id": f"w{i}", "text": t, "anger_level": i % 4, "complaint_type": "delivery", "threat": False, "split": "test"}
        for i, t in enumerate(["快递怎么还没到", "請問訂單到哪了", "你们太过分了!!", "退款呢？"] * 3)
    ]
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    metrics = run_evaluation(str(model), str(data), split="test", resamples=20)
    (tmp_path / "test.json").write_text(json.dumps(metrics), encoding="utf-8")
    (tmp_path / "exp.md").write_text("# Model v2 experiments (dev)\n\n| run | F1 |\n|---|---|\n| a | 0.5 |\n")
    card = write_release_card(model, tmp_path / "test.json", tmp_path / "exp.md").read_text(encoding="utf-8")
    assert "## Held-out evaluation (test split, 12 records, measured once)" in card
    overall = next(line for line in card.splitlines() if line.startswith("| real |") or line.startswith("| written |"))
    group = overall.split("|")[1].strip()
    assert f"{metrics['breakdown'][group]['calm_first_f1']:.3f}" in overall
    assert "## Contrast pairs" in card and "## Experiments (dev)" in card
