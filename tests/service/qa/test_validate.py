"""The handling-score validation on a small fixture of STC-3-shaped dialogues (hand-written, not STC-3 text)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from model.scores import Prediction
from service.analyzer import Analyzer, ConversationAnalyzer
from service.qa import validate as v
from service.qa.scoring import FEATURES, HandlingModel
from service.routing.agent_steps import AgentTurn

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "stc3_small.json"


class _Steps:
    """A stand-in agent-turn detector: apologies and thanks from the words, nothing else."""

    calls = 0

    def detect(self, texts, contexts=None, anger=None):  # type: ignore[no-untyped-def]
        _Steps.calls += len(texts)
        out = []
        for t in texts:
            steps = [s for s, w in (("apologize", "抱歉"), ("commit_action", "已经帮您")) if w in t]
            out.append(AgentTurn(steps=steps, mistakes=["argued"] if "系统显示" in t else [], scores={}))
        return out


@pytest.fixture(scope="module")
def dialogues() -> list[v.Dialogue]:
    return v.dialogues_from_raw(json.loads(FIXTURE.read_text(encoding="utf-8")))


def test_dialogues_quality_means_and_held_out_ids(dialogues: list[v.Dialogue]) -> None:
    assert len(dialogues) == 20
    d = dialogues[1]
    assert d.quality["S"] == pytest.approx(np.mean([-2, -2, -1])) and d.annotators == 3
    assert [t.role for t in d.turns] == ["customer", "agent", "customer"]
    assert [x.id[-2:] for x in dialogues if x.held_out] == ["00", "05", "10", "15"]
    assert v.is_held_out("3830401296796825") and not v.is_held_out(3830401296796826)


def test_validation_fits_on_fit_ids_only_and_reports(
    dialogues: list[v.Dialogue], tiny_analyzer: Analyzer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conv = ConversationAnalyzer(tiny_analyzer, _Steps())  # type: ignore[arg-type]
    results = v.analyze_dialogues(conv, dialogues, chunk=7)
    assert [r.id for r in results] == [d.id for d in dialogues]
    seen: list[np.ndarray] = []
    real_fit = v.fit_handling_model

    def spy(x, y, **kw):  # type: ignore[no-untyped-def]
        seen.append(np.asarray(y))
        return real_fit(x, y, **kw)

    monkeypatch.setattr(v, "fit_handling_model", spy)
    # a held-out S no fit may ever see
    marked = [dataclasses.replace(d, quality={**d.quality, "S": 99.0}) if d.held_out else d for d in dialogues]
    model, report = v.validate(marked, results, bootstrap=50)
    fit_s = sorted(d.quality["S"] for d in dialogues if not d.held_out)
    assert seen and all(99.0 not in y for y in seen)  # the CV folds of the ridge choice and the final fit
    assert sorted(seen[-1].tolist()) == fit_s  # the final fit: every fit dialogue
    model, report = v.validate(dialogues, results, bootstrap=50, features_out=tmp_path / "signals.npz")
    assert report["dialogues"] == {"all": 20, "fit": 16, "held_out": 4}
    saved = np.load(tmp_path / "signals.npz")
    assert saved["features"].shape == (20, len(FEATURES)) and list(saved["names"]) == list(FEATURES)
    assert saved["held_out"].tolist() == [d.held_out for d in dialogues]
    assert saved["S"].tolist() == [d.quality["S"] for d in dialogues]
    for name in ("handling_score", "previous_handling_score", "final_anger_alone", "final_and_peak_anger"):
        assert set(report["spearman"][name]) == {"fit", "held_out"}
        assert set(report["spearman"][name]["held_out"]) == {"S", "E", "A"}
    assert report["ridge"]["chosen"] in v.RIDGES
    assert report["formula"].startswith("score = clip(round(")
    # the weights file round-trips and scores what the report measured
    model.save(tmp_path / "w.json", validation={"command": "test"})
    again = HandlingModel.load(tmp_path / "w.json")
    assert again.weights == pytest.approx(model.weights, abs=1e-6) and set(again.weights) == set(FEATURES)
    # the README block goes between the markers, the rest of the file untouched
    readme = tmp_path / "README_QA.md"
    readme.write_text(f"# QA\n\nbefore\n{v.MARK_START}\nold\n{v.MARK_END}\nafter\n", encoding="utf-8")
    full = {"created": "today", "command": "python -m service.qa.validate", "agent_model": "stub",
            "model": {"name": "tiny", "version": "0", "backend": "torch"}, **report}  # fmt: skip
    assert v.write_readme(full, readme)
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# QA\n\nbefore\n") and text.endswith("after\n") and "old" not in text
    assert "| **handling score (this formula)** |" in text and "score = clip(round(" in text
    assert not v.write_readme(full, tmp_path / "missing.md")


def test_spearman_and_bootstrap() -> None:
    x = np.arange(50, dtype=float)
    assert v.spearman(x, x**3) == pytest.approx(1.0) and v.spearman(x, -x) == pytest.approx(-1.0)
    assert np.isnan(v.spearman(x, np.ones(50)))
    lo, hi = v.bootstrap_ci(x, x + np.random.default_rng(0).normal(0, 20, 50), n=200)
    assert -1 <= lo < hi <= 1


def test_caches_score_each_text_once(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = v._Store(tmp_path / "c.sqlite")
    cached = v.CachedScoringModel(tiny_model, store, "tiny:1")
    first = cached.predict(["你好", "太慢了", "你好"])
    assert all(isinstance(p, Prediction) for p in first) and first[0] == first[2]

    class _Fail:
        config, backend = tiny_model.config, "torch"

        def predict(self, texts, *, batch_size=32):  # type: ignore[no-untyped-def]
            raise AssertionError("not cached")

    again = v.CachedScoringModel(_Fail(), store, "tiny:1").predict(["太慢了"])
    assert again[0] == first[1]
    det = v.CachedDetector(_Steps(), store, "steps")
    before = _Steps.calls
    a = det.detect(["抱歉", "系统显示正常"], ["a", None])
    b = det.detect(["抱歉", "系统显示正常"], ["a", None])
    assert a == b and a[1].mistakes == ["argued"] and _Steps.calls == before + 2


def test_report_shows_how_far_to_trust_the_score(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.qa import report
    from service.qa.aggregate import QASummary

    assert report.trust_section(tmp_path / "missing.json") is None
    shipped = report.trust_section()
    assert shipped is not None and shipped["held_out"] > 0 and len(shipped["rows"]) == 3
    monkeypatch.setattr(report, "VALIDATION_FILE", tmp_path / "missing.json")
    page = report.render_report(QASummary())
    assert "How far to trust this score" in page and "python -m service.qa.validate" in page


def test_cli_qa_validate_passes_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    with pytest.raises(SystemExit) as e:
        main(["qa-validate", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--model" in out and "--no-write" in out
