"""Config loading and validation: every error names the setting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from training.config import ConfigError, TrainingArguments, load_config


def test_config_default_yaml_loads() -> None:
    cfg = load_config("training/configs/default.yaml")
    assert cfg.epochs >= 1
    assert cfg.data.sources[0].path == "annotations"
    assert cfg.model.lora is not None and cfg.model.lora.r == 32


CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"


@pytest.mark.parametrize("path", sorted(str(p) for p in CONFIGS.rglob("*.yaml")), ids=lambda p: Path(p).name)
def test_every_committed_config_validates(path: str) -> None:
    """A recipe kept for a later run (ablations, the full-budget table) must still load under today's schema."""
    cfg = load_config(path)
    assert cfg.data.sources and cfg.epochs >= 1


def test_full_budget_variants_are_overrides_of_one_file() -> None:
    base = load_config(CONFIGS / "ablations" / "full_budget.yaml")
    assert base.model.init_from is None and base.model.lora is not None  # trained from the backbone
    full = load_config(
        CONFIGS / "ablations" / "full_budget.yaml", ["model.lora=null", "learning_rate=0.00005", "use_context=false"]
    )
    assert full.model.lora is None and full.learning_rate == 0.00005 and full.use_context is False


def test_config_toml_and_dotted_overrides(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "c.toml"
    p.write_text(
        'epochs = 2\n[model]\nmax_length = 64\n[[data.sources]]\npath = "x.jsonl"\ncolumns = {text = "content"}\n'
    )
    cfg = load_config(p, ["model.lora.r=4", "learning_rate=1e-4", 'augment.opencc_configs=["s2hk"]'])
    assert cfg.epochs == 2 and cfg.model.max_length == 64
    assert cfg.model.lora is not None and cfg.model.lora.r == 4
    assert cfg.learning_rate == pytest.approx(1e-4)
    assert cfg.augment.opencc_configs == ["s2hk"]
    assert cfg.data.sources[0].columns == {"text": "content"}


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        (["epochs=0"], "epochs"),
        (["learning_rate=3"], "learning_rate"),
        (["model.max_length=4"], "model.max_length"),
        (["loss.class_weighting=cubic"], "loss.class_weighting"),
        (["augment.opencc_prob=1.5"], "augment.opencc_prob"),
        (['augment.opencc_configs=["t2s"]'], "augment.opencc_configs"),
        (["epoch=3"], "epoch"),
        (["model.lr=3"], "model.lr"),
        (['data.sources=[{"path": "a.csv", "format": "xls"}]'], "format"),
        (["warmup_ratio=1"], "warmup_ratio"),
        (["nokeyvalue"], "nokeyvalue"),
        (["epochs=2.5"], "epochs"),
        (['batch_size="16"'], "batch_size"),
        (["fit_temperature=1"], "fit_temperature"),
        (["model.lora.r=0"], "model.lora"),
        (['data.sources=[{"path": "a.csv", "limit": 0}]'], "limit"),  # was "all rows"
        (['data.sources=[{"path": "a.csv", "limit": -5}]'], "limit"),  # dropped the last 5
    ],
)
def test_config_invalid_values_name_the_setting(overrides: list[str], names: str) -> None:
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        load_config("training/configs/default.yaml", overrides)


def test_config_to_dict_round_trips() -> None:
    cfg = load_config("training/configs/default.yaml", ["epochs=3"])
    again = TrainingArguments(**cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()


@pytest.mark.parametrize(
    ("override", "known"),
    [
        ("epoch=3", "'epochs'"),
        ("model.lr=3", "'max_length'"),
        ("model.lora.rr=8", "'alpha', 'dropout', 'r', 'target_modules'"),  # a dataclass section, too
    ],
)
def test_an_unknown_key_lists_the_known_ones(override: str, known: str) -> None:
    with pytest.raises(ConfigError, match=r"unknown setting \(known: \[.*" + re.escape(known)):
        load_config("training/configs/default.yaml", [override])
