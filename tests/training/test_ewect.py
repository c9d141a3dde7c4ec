"""The EWECT angry-vs-not measure: the right posts, the right labels, figures that can be checked by hand."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from training.ewect import Post, _scores, evaluate_ewect, load_posts, main, tfidf_reference

ANGRY_TEXTS = ["气死我了这破车", "真是气死人了", "气死了又迟到", "烦死了气死了"]
CALM_TEXTS = ["今天天气很好", "晚安明天见", "周末去公园散步", "早餐吃了包子"]


def _ewect_root(tmp_path: Path) -> Path:
    """A shared-data folder holding an EWECT in the published file formats (our own texts)."""
    base = tmp_path / "smp2020_ewect"
    base.mkdir(parents=True)
    rows = [(t, "angry", "usual") for t in ANGRY_TEXTS] + [(t, "neural", "usual") for t in CALM_TEXTS]
    rows.append(("气死了病毒", "angry", "virus"))  # a COVID post: not in the usual training set
    for name, part in (("train0", rows[:6]), ("dev0", rows[6:])):
        with open(base / f"{name}.csv", "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["content", "labels", "type"])
            w.writerows(part)
    evals = [
        {"id": 1, "content": "气死我了这破车", "label": "angry"},  # also a training post
        {"id": 2, "content": "又气死了", "label": "angry"},
        {"id": 3, "content": "明天去散步", "label": "neutral"},
        {"id": 4, "content": "今天吃了包子", "label": "happy"},
    ]
    (base / "usual_eval_labeled.txt").write_text(json.dumps(evals, ensure_ascii=False), encoding="utf-8")
    virus = [{"id": 1, "content": "病毒好可怕", "label": "fear"}]
    (base / "virus_eval_labeled.txt").write_text(json.dumps(virus, ensure_ascii=False), encoding="utf-8")
    (base / "virus_train.txt").write_text(json.dumps(virus, ensure_ascii=False), encoding="utf-8")
    return tmp_path


def test_posts_are_the_usual_train_and_eval_sets_with_angry_labels(tmp_path: Path) -> None:
    train, test = load_posts(_ewect_root(tmp_path))
    assert len(train) == 8  # train0 + dev0 usual posts; the virus post and virus_train are left out
    assert sum(p.angry for p in train) == 4
    assert [(p.id, p.angry) for p in test] == [
        ("usual_eval:1", True),
        ("usual_eval:2", True),
        ("usual_eval:3", False),
        ("usual_eval:4", False),
    ]


def test_scores_by_hand() -> None:
    gold = np.array([True, True, False, False])
    s = _scores(gold, np.array([2, 1, 0, 3]), np.array([0.9, 0.6, 0.1, 0.8]), np.array([True, False, False, False]))
    assert s.n == 4 and s.angry == 2
    assert s.model_f1_level2 == pytest.approx(0.5)  # predicted angry: posts 1 and 4 -> TP 1, FP 1, FN 1
    assert s.model_f1_level1 == pytest.approx(0.8)  # posts 1, 2, 4 -> precision 2/3, recall 1
    assert s.model_auc == pytest.approx(0.75)  # 3 of the 4 angry/not pairs ranked right (0.6 < 0.8)
    assert s.tfidf_f1 == pytest.approx(2 / 3)


def test_tfidf_reference_learns_the_training_posts(tmp_path: Path) -> None:
    train, test = load_posts(_ewect_root(tmp_path))
    assert tfidf_reference(train, test).tolist() == [True, True, False, False]  # 气死 marks the angry posts
    assert tfidf_reference(train, [Post("x", "今天气死了", True)]).tolist() == [True]


def test_report_with_and_without_train_duplicates(tmp_path: Path, tiny_model_dir: Path) -> None:
    root = _ewect_root(tmp_path)
    report = evaluate_ewect(str(tiny_model_dir), root=root, backend="torch")
    assert report.backend == "torch" and report.train_posts == 8
    assert (report.all_posts.n, report.all_posts.angry) == (4, 2)
    assert (report.without_train_duplicates.n, report.without_train_duplicates.angry) == (3, 1)  # eval 1 is in train
    assert report.all_posts.tfidf_f1 == 1.0
    for f in (report.all_posts.model_f1_level2, report.all_posts.model_f1_level1, report.all_posts.model_auc):
        assert 0.0 <= f <= 1.0
    lines = report.markdown()
    assert lines[2].startswith("| posts | n | angry | model F1 (level >= 2)")
    assert lines[4].startswith("| all | 4 | 2 |") and lines[5].startswith("| not in EWECT's train | 3 | 1 |")


def test_cli_writes_json_and_markdown_and_names_a_missing_folder(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CALMFIRST_SHARED_DATA", str(_ewect_root(tmp_path / "shared")))
    out = tmp_path / "out" / "ewect.json"
    assert main(["--model", str(tiny_model_dir), "--backend", "torch", "--output", str(out)]) == 0
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved["all_posts"]["n"] == 4 and saved["without_train_duplicates"]["n"] == 3
    assert out.with_suffix(".md").read_text(encoding="utf-8").splitlines()[4].startswith("| all | 4 | 2 |")
    monkeypatch.setenv("CALMFIRST_SHARED_DATA", str(tmp_path / "nowhere"))
    assert main(["--model", str(tiny_model_dir)]) == 2
    assert "shared data folder not found" in capsys.readouterr().err


def test_the_real_ewect_sets(shared_data: Path) -> None:
    train, test = load_posts(shared_data)
    assert len(test) == 2000 and sum(p.angry for p in test) == 586
    assert 27_700 <= len(train) <= 27_768 and sum(p.angry for p in train) > 8_000  # the official usual train
