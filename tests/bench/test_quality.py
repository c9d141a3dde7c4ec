"""``make bench``'s fidelity figures: optimised minus PyTorch, and the target's worst case over batch sizes."""

from __future__ import annotations

import pytest

from bench.run import _deltas, max_abs_delta


def _m(cf: float, tf: float, per: dict[str, tuple[float, float]]) -> dict:  # type: ignore[type-arg]
    return {
        "calm_first_f1": cf,
        "type_macro_f1": tf,
        "per_script": {s: {"calm_first_f1": a, "type_macro_f1": b} for s, (a, b) in per.items()},
    }


def test_deltas_overall_and_per_script() -> None:
    ref = _m(0.80, 0.70, {"hans": (0.82, 0.71), "hant": (0.78, 0.69)})
    opt = _m(0.81, 0.69, {"hans": (0.82, 0.7206), "hant": (0.775, 0.69)})
    d = _deltas(opt, ref)
    assert d["all"] == pytest.approx({"calm_first_f1": 0.01, "type_macro_f1": -0.01})
    assert d["hans"] == pytest.approx({"calm_first_f1": 0.0, "type_macro_f1": 0.0106})
    assert d["hant"] == pytest.approx({"calm_first_f1": -0.005, "type_macro_f1": 0.0})


def test_target_is_the_worst_batch_size_and_script() -> None:
    """A delta that only one batch size shows still counts: every path must hold the target."""
    fine = {
        "all": {"calm_first_f1": 0.001, "type_macro_f1": -0.002},
        "hans": {"calm_first_f1": 0.0, "type_macro_f1": 0.003},
    }
    live = {
        "all": {"calm_first_f1": 0.0, "type_macro_f1": 0.0},
        "hans": {"calm_first_f1": -0.012, "type_macro_f1": 0.0},
    }
    assert max_abs_delta({64: fine, 1: live}) == {"calm_first_f1": 0.012, "type_macro_f1": 0.003}
    assert max_abs_delta({64: fine}) == {"calm_first_f1": 0.001, "type_macro_f1": 0.003}
