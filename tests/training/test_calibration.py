"""Per-script temperature scaling: the fit, the config round trip, and that serving applies it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.config import WEIGHTS_NAME, CalmFirstConfig, read_config
from model.scores import ordinal_probs, scores_from_logits
from service.cli import main
from training.calibration import calibrate, calibrate_folder, fit_anger_temperature
from training.data import Example

SIMPLIFIED = ["你们的快递怎么还没到", "退款什么时候到账", "客服电话一直打不通", "这个价格怎么又变了"]
TRADITIONAL = ["請問我的訂單什麼時候會到", "你們的態度真的很差", "退貨要怎麼處理", "帳單金額不對"]


def _sample_levels(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    probs = ordinal_probs(logits)
    probs = probs / probs.sum(axis=1, keepdims=True)
    return np.asarray([rng.choice(4, p=p) for p in probs])


def test_fit_recovers_a_known_overconfidence() -> None:
    # levels drawn from calibrated cumulative logits z; the model reports 3z: the fitted temperature is ~3
    rng = np.random.default_rng(0)
    score = rng.normal(0.0, 2.0, size=(4000, 1)).astype(np.float32)
    z = score - np.asarray([[-1.0, 0.5, 2.0]], dtype=np.float32)
    levels = _sample_levels(z, rng)
    t = fit_anger_temperature(3.0 * z, levels.tolist())
    assert t == pytest.approx(3.0, rel=0.1)
    assert fit_anger_temperature(z, levels.tolist()) == pytest.approx(1.0, rel=0.1)


def test_scores_use_the_temperature_of_the_input_script() -> None:
    logits = {
        "anger_logits": np.asarray([[2.0, 0.5, -1.0], [2.0, 0.5, -1.0]], dtype=np.float32),
        "type_logits": np.zeros((2, 10), dtype=np.float32),
        "multi_logits": np.zeros((2, 10), dtype=np.float32),
        "threat_logits": np.zeros(2, dtype=np.float32),
    }
    cfg = CalmFirstConfig(temperature=1.0, temperature_by_script={"hans": 2.0, "hant": 0.5})
    hans, hant = scores_from_logits(logits, cfg, texts=["这个怎么还没到", "這個怎麼還沒到"])
    expected_hans = ordinal_probs(logits["anger_logits"][:1] / 2.0)[0]
    expected_hant = ordinal_probs(logits["anger_logits"][:1] / 0.5)[0]
    assert hans.anger_probs == pytest.approx((expected_hans / expected_hans.sum()).tolist(), abs=1e-5)
    assert hant.anger_probs == pytest.approx((expected_hant / expected_hant.sum()).tolist(), abs=1e-5)
    # without the inputs (or without per-script values) every row gets the joint temperature
    joint = scores_from_logits(logits, cfg)
    assert joint[0].anger_probs == joint[1].anger_probs
    with pytest.raises(ValueError, match="2 rows"):
        scores_from_logits(logits, cfg, texts=["只有一個"])


@pytest.mark.parametrize(
    ("value", "key"),
    [({"latin": 1.0}, "unknown script 'latin'"), ({"hant": 0.0}, "temperature_by_script.hant")],
)
def test_config_names_the_bad_key(value: dict[str, float], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        CalmFirstConfig(temperature_by_script=value)


def _examples() -> list[Example]:
    out = []
    for i, text in enumerate(SIMPLIFIED * 3 + TRADITIONAL * 3):
        script = "hant" if text in TRADITIONAL else "hans"
        out.append(Example(text, i % 4, "delivery", ["delivery"], False, script, "dev", id=f"e{i}"))
    return out


def test_calibrate_fits_each_script_with_enough_records(tiny_model_dir: Path) -> None:
    from model.classifier import CalmFirstModel

    model = CalmFirstModel.from_pretrained(tiny_model_dir)
    result = calibrate(model, _examples(), min_records=12)
    assert set(result.by_script) == {"hans", "hant"}
    assert result.n_by_script == {"hans": 12, "hant": 12}
    assert model.config.temperature_by_script == result.by_script
    assert set(result.ece_after) == {"hans", "hant"}
    # each script's temperature is fitted on that script's records alone (their rows of the same forward
    # pass: a batch of other texts pads differently, which moves fp32 logits in the 4th digit on some CPUs)
    examples = _examples()
    all_logits = CalmFirstModel.from_pretrained(tiny_model_dir).logits([e.text for e in examples], batch_size=64)
    for script, texts in (("hans", SIMPLIFIED), ("hant", TRADITIONAL)):
        rows = [i for i, e in enumerate(examples) if e.script == script]
        mine = [examples[i] for i in rows]
        logits = all_logits["anger_logits"][rows]
        expected = fit_anger_temperature(logits, [int(e.anger_level or 0) for e in mine])
        assert result.by_script[script] == pytest.approx(expected, rel=1e-4)
        assert all(e.text in texts for e in mine)
    # too few records of a script: it keeps the joint temperature
    model = CalmFirstModel.from_pretrained(tiny_model_dir)
    assert calibrate(model, _examples(), min_records=13).by_script == {}


def test_calibrate_folder_rewrites_only_the_config(tiny_model_dir: Path, tmp_path: Path) -> None:
    from model.classifier import CalmFirstModel

    out = tmp_path / "calibrated"
    result = calibrate_folder(tiny_model_dir, _examples(), output=out)
    cfg = read_config(out)
    assert cfg.temperature == pytest.approx(result.temperature)
    assert cfg.temperature_by_script == {}  # 12 records a script is below the default minimum
    assert cfg.training["calibration"]["n_by_script"] == {"hans": 12, "hant": 12}
    assert (out / WEIGHTS_NAME).read_bytes() == (tiny_model_dir / WEIGHTS_NAME).read_bytes()
    # the served model applies what was written
    reloaded = CalmFirstModel.from_pretrained(out)
    assert reloaded.config.temperature == pytest.approx(result.temperature)


def test_calibrate_cli_names_a_missing_split(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "d.jsonl"
    rows = [
        {"text": e.text, "anger_level": e.anger_level, "complaint_type": "delivery", "threat": False, "split": "dev"}
        for e in _examples()
    ]
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    assert main(["calibrate", "--model", str(tiny_model_dir), str(data), "--split", "test"]) == 2
    assert "split 'test'" in capsys.readouterr().err
    out = tmp_path / "m"
    assert main(["calibrate", "--model", str(tiny_model_dir), str(data), "--output", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert read_config(out).temperature == pytest.approx(printed["temperature"])


def test_evaluation_feeds_context_only_to_a_model_trained_on_it(tiny_model_dir: Path) -> None:
    import dataclasses

    from model.classifier import CalmFirstModel
    from training.trainer import evaluate_model

    model = CalmFirstModel.from_pretrained(tiny_model_dir)
    with_ctx = [
        dataclasses.replace(e, context=[("agent", "您好，請問有什麼可以幫您"), ("customer", "我的訂單呢")])
        for e in _examples()
    ]
    bare = [dataclasses.replace(e, context=None) for e in with_ctx]

    def same(a: dict, b: dict) -> bool:  # type: ignore[type-arg]
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # empty bins are NaN

    model.config.context_input = False
    assert same(evaluate_model(model, with_ctx), evaluate_model(model, bare))
    model.config.context_input = True
    assert same(evaluate_model(model, with_ctx, use_context=False), evaluate_model(model, bare))
    fed = evaluate_model(model, with_ctx)
    assert fed["calm_first_ece"] != evaluate_model(model, bare)["calm_first_ece"]
