"""The experiment table is written from the metrics files, row by row, with the intervals they carry."""

import json
from pathlib import Path

import pytest

from training.ablations import ablation_table, main, parse_run


def _metrics(f1: float, *, contrast: float | None = None) -> dict:
    row = {
        "n": 10, "calm_first_f1": f1, "anger_qwk": 0.5, "type_macro_f1": 0.25, "type_accuracy": 0.75,
        "threat_f1": 0.0, "calm_first_ece": 0.125, "ci95": {"calm_first_f1": [f1 - 0.1, f1 + 0.1]},
    }  # fmt: skip
    out: dict = {"breakdown": {"real": row, "written": {**row, "n": 3, "ci95": {}}}}
    if contrast is not None:
        out["contrast"] = {"pair_accuracy": contrast, "item_accuracy": 0.875}
    return out


def test_table_has_one_row_per_run_and_group_present() -> None:
    lines = ablation_table([("a", _metrics(0.5, contrast=0.625)), ("b", _metrics(0.75))])
    assert lines[0].startswith("| run | group | n | calm_first F1")
    rows = [line for line in lines if line.startswith(("| a |", "| b |"))]
    assert rows[:4] == [
        "| a | real | 10 | 0.500 [0.40, 0.60] | 0.500 | 0.250 | 0.750 | 0.000 | 0.125 |",
        "| a | written | 3 | 0.500 | 0.500 | 0.250 | 0.750 | 0.000 | 0.125 |",
        "| b | real | 10 | 0.750 [0.65, 0.85] | 0.500 | 0.250 | 0.750 | 0.000 | 0.125 |",
        "| b | written | 3 | 0.750 | 0.500 | 0.250 | 0.750 | 0.000 | 0.125 |",
    ]  # real cn/tw/hk are absent from these runs and left out
    assert rows[4:] == ["| a | 0.625 | 0.875 |"]  # only runs with contrast figures


def test_cli_reads_runs_and_names_a_bad_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(_metrics(0.5)), encoding="utf-8")
    assert main([f"lora32={path}"]) == 0
    assert "| lora32 | real | 10 | 0.500" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="expected NAME=PATH"):
        parse_run(str(path))
    with pytest.raises(SystemExit, match="'full': cannot read"):
        parse_run(f"full={tmp_path / 'missing.json'}")
