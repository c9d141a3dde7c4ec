"""Weight soups (``training.soup``): the souped model is exactly the average of its runs' fine-tuned weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.classifier import CalmFirstModel
from model.config import CONFIG_NAME
from service.cli import main
from training.soup import SoupError, soup_folders


def _run(tiny_model_dir: Path, out: Path, seed: int) -> Path:
    """A stand-in for one fine-tuning run from ``tiny_model_dir``: its adapters and heads moved at random."""
    model = CalmFirstModel.from_pretrained(tiny_model_dir)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or "_head" in name:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(out)
    return out


def _merged_state(path: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in CalmFirstModel.from_pretrained(path, merge_adapters=True).state_dict().items()}


def test_soup_is_the_average_of_the_merged_runs(tiny_model_dir: Path, tmp_path: Path) -> None:
    a = _run(tiny_model_dir, tmp_path / "a", 1)
    b = _run(tiny_model_dir, tmp_path / "b", 2)
    result = soup_folders([a, b], tmp_path / "soup", version="9.9.9")
    cfg_a = json.loads((a / CONFIG_NAME).read_text())
    cfg = json.loads((tmp_path / "soup" / CONFIG_NAME).read_text())
    assert result.rank == cfg["lora"]["r"] == 2 * cfg_a["lora"]["r"]
    assert cfg["lora"]["alpha"] == 2 * cfg_a["lora"]["alpha"]  # alpha / r unchanged
    assert cfg["version"] == "9.9.9" and cfg["training"]["soup"]["of"] == [str(a), str(b)]
    card = (tmp_path / "soup" / "README.md").read_text(encoding="utf-8")  # a model card, as every model folder has
    assert "9.9.9" in card and "## Soup" in card and str(a) in card and "## Evaluation" not in card

    sa, sb, ss = _merged_state(a), _merged_state(b), _merged_state(tmp_path / "soup")
    assert set(ss) == set(sa)
    moved = 0
    for name, value in ss.items():
        expected = (sa[name] + sb[name]) / 2
        assert torch.allclose(value, expected, atol=1e-5), name
        moved += int(not torch.allclose(sa[name], sb[name]))
    assert moved > 10  # the runs did differ (encoder weights through LoRA, and the heads)

    texts = ["你们的快递怎么还没到!!", "請問退貨要怎麼處理"]
    probs = CalmFirstModel.from_pretrained(tmp_path / "soup", merge_adapters=True).predict(texts)
    assert [len(p.anger_probs) for p in probs] == [4, 4]


def test_soup_refuses_runs_that_cannot_be_averaged(tiny_model_dir: Path, tmp_path: Path) -> None:
    a = _run(tiny_model_dir, tmp_path / "a", 1)
    b = _run(tiny_model_dir, tmp_path / "b", 2)
    with pytest.raises(SoupError, match="at least two"):
        soup_folders([a], tmp_path / "x")
    cfg = json.loads((b / CONFIG_NAME).read_text())
    cfg["max_length"] = 32
    (b / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(SoupError, match="'max_length'"):
        soup_folders([a, b], tmp_path / "x")
    cfg["max_length"] = json.loads((a / CONFIG_NAME).read_text())["max_length"]
    cfg["lora"]["r"] = 8
    (b / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(SoupError, match=r"'lora\.r' is 8 where .* has 4"):
        soup_folders([a, b], tmp_path / "x")
    # runs that continued different models (found by an outside walkthrough: accepted before)
    cfg["lora"]["r"] = json.loads((a / CONFIG_NAME).read_text())["lora"]["r"]
    cfg["training"] = {"hyperparameters": {"model": {"init_from": "model/v24"}}}
    (b / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(SoupError, match=r"'training\.hyperparameters\.model\.init_from' is 'model/v24' where"):
        soup_folders([a, b], tmp_path / "x")
    assert not (tmp_path / "x").exists()  # nothing written when the runs do not agree


def test_cli_soup(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _run(tiny_model_dir, tmp_path / "a", 3)
    b = _run(tiny_model_dir, tmp_path / "b", 4)
    assert main(["soup", str(tmp_path / "s"), str(a), str(b)]) == 0
    assert json.loads(capsys.readouterr().out)["rank"] == 2 * json.loads((a / CONFIG_NAME).read_text())["lora"]["r"]
    assert main(["soup", str(tmp_path / "t"), str(a), str(tmp_path / "missing")]) == 2
    assert "not a CalmFirst model folder" in capsys.readouterr().err
