"""Annotation files: schema validation, text joined from the shared data, train/dev/test datasets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data.loader import annotation_files, load_annotations, load_splits, read_label_file
from data.schema import LabelError
from data.stats import shortfalls, stats

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ANNOTATIONS = Path(__file__).resolve().parents[2] / "data" / "annotations"


def test_loader_joins_text_from_fixture_shared_data() -> None:
    records = load_annotations(FIXTURES / "annotations", shared_dir=FIXTURES / "shared" / "data")
    by_id = {r["id"]: r for r in records}
    assert by_id["900001-t0"]["text"] == "宽带又断了,怎么回事"
    assert by_id["900001-t2"]["text"] == "说好今天修的呢?"
    assert by_id["waimai:1"]["text"] == "好吃,下次还点"
    assert by_id["shopping:0"]["text"] == "屏幕有坏点,客服不理人"
    assert by_id["written-x-1"]["text"].startswith("客服電話")
    assert all(r["split"] in {"train", "dev", "test"} for r in records)
    # the new Taiwan and Hong Kong sources join too
    assert by_id["hosp:0"]["text"].startswith("掛號等了兩個小時")
    assert by_id["openrice:test:0"]["text"].startswith("啲嘢食凍晒")


def test_schema_v12_threat_no_longer_implies_level_3(tmp_path: Path) -> None:
    rec = {
        "id": "w1",
        "source": "calmfirst_written",
        "text": "貴公司若週五前仍未處理,本人將向消保處申訴。",
        "anger_level": 1,
        "complaint_type": "service_quality",
        "types": ["service_quality"],
        "threat": True,
        "script": "hant",
        "region": "tw",
        "schema": "1.2",
    }
    path = tmp_path / "ok.jsonl"
    path.write_text(json.dumps(rec, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_label_file(path)[0]["threat"] is True


def test_loader_yields_train_dev_test_datasets() -> None:
    from datasets import Dataset, DatasetDict

    dd = load_splits(FIXTURES / "annotations", shared_dir=FIXTURES / "shared" / "data")
    assert isinstance(dd, DatasetDict)
    assert set(dd) == {"train", "dev", "test"}
    assert all(isinstance(d, Dataset) for d in dd.values())
    assert sum(len(d) for d in dd.values()) == 8
    assert {"text", "anger_level", "complaint_type", "types", "threat", "script"} <= set(dd["train"].column_names)


def test_loader_missing_shared_text_raises_or_skips(tmp_path: Path) -> None:
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "stc3.jsonl").write_text(
        json.dumps(
            {
                "id": "999-t0",
                "source": "stc3",
                "anger_level": 0,
                "complaint_type": "none",
                "types": ["none"],
                "threat": False,
                "script": "hans",
                "region": "cn",
                "schema": "1.2",
            }
        )
        + "\n",
        encoding="utf-8",
    )
    with pytest.raises(LabelError, match="no text"):
        load_annotations(ann, shared_dir=FIXTURES / "shared" / "data")
    assert load_annotations(ann, shared_dir=FIXTURES / "shared" / "data", on_missing="skip") == []
    # shared folder absent altogether: a clear error, or nothing when skipping
    with pytest.raises(FileNotFoundError, match="shared data not found"):
        load_annotations(ann, shared_dir=tmp_path / "nowhere")
    assert load_annotations(ann, shared_dir=tmp_path / "nowhere", on_missing="skip") == []


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"anger_level": 4}, "anger_level"),
        ({"complaint_type": "weather"}, "complaint_type"),
        ({"types": ["delivery", "billing"]}, "types"),
        ({"threat": "yes"}, "threat"),
        ({"script": "latin"}, "script"),
        ({"region": "jp"}, "region"),
        ({"schema": "1.1"}, "schema"),
    ],
)
def test_loader_invalid_record_names_file_line_and_field(tmp_path: Path, patch: dict, message: str) -> None:
    good = {
        "id": "w1",
        "source": "calmfirst_written",
        "text": "謝謝",
        "anger_level": 0,
        "complaint_type": "none",
        "types": ["none"],
        "threat": False,
        "script": "hant",
        "region": "tw",
        "schema": "1.2",
    }
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": "w2", **patch}) + "\n", encoding="utf-8")
    with pytest.raises(LabelError, match=rf"x\.jsonl:2.*{message}"):
        read_label_file(path)


def test_loader_project_annotations_all_validate_and_store_no_shared_text() -> None:
    files = annotation_files(ANNOTATIONS)
    assert files, "no annotation files"
    ids: set[tuple[str, str]] = set()
    for path in files:
        for rec in read_label_file(path):
            key = (rec["source"], rec["id"])
            assert key not in ids, f"duplicate {key} in {path.name}"
            ids.add(key)
            if rec["source"] != "calmfirst_written":
                assert "text" not in rec, f"{path.name}: {rec['id']} stores a licensed source's text"


def test_loader_project_annotations_meet_the_minimums() -> None:
    problems = shortfalls(stats(ANNOTATIONS))
    assert problems == [], problems


@pytest.mark.shared
def test_loader_project_annotations_join_real_shared_data(shared_data: Path) -> None:
    records = load_annotations(ANNOTATIONS, shared_dir=shared_data)
    total = sum(len(read_label_file(p)) for p in annotation_files(ANNOTATIONS))
    assert len(records) == total
    splits = {r["split"] for r in records}
    assert splits == {"train", "dev", "test"}


def test_loader_splits_a_record_without_a_stored_split_by_the_project_rule(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A merged batch not yet through ``batch splits`` must land where ``data.splits`` will put it, not in train."""
    import logging

    from data.splits import base_split

    def rec(i: int, **extra: str) -> dict:
        return {
            "id": f"w-{i}", "source": "calmfirst_written", "text": f"客服電話一直打不通,第{i}次了", "anger_level": 1,
            "complaint_type": "service_quality", "types": ["service_quality"], "threat": False, "script": "hant",
            "region": "tw", "schema": "1.2", **extra,
        }  # fmt: skip

    # texts the rule sends to dev or test where the old fallback (a hash of the id) said train, and the reverse
    rows = [rec(1), rec(10), rec(17), rec(11, split="train")]
    (tmp_path / "x.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="data.loader"):
        got = {r["id"]: r["split"] for r in load_annotations(tmp_path, shared_dir=tmp_path / "none")}
    assert got == {"w-1": "dev", "w-10": "test", "w-17": "train", "w-11": "train"}  # a stored split is kept
    assert all(got[r["id"]] == base_split(r, "train") for r in rows[:3])
    assert "3 annotation records carry no stored split" in caplog.text
