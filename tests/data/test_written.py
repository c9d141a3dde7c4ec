"""Merging a written round: validation, the contrast/issue-example overlap check, duplicates, split safety."""

import json
from pathlib import Path

import pytest

from data.schema import LabelError
from data.tools import written as w


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _line(rid: str, text: str, **kw) -> dict:
    rec = {
        "id": rid,
        "source": "calmfirst_written",
        "text": text,
        "anger_level": 1,
        "complaint_type": "delivery",
        "types": ["delivery"],
        "threat": False,
        "script": "hant",
        "region": "tw",
        "schema": "1.2",
        "written_for": ["short_internal_request"],
    }
    rec.update(kw)
    return rec


@pytest.fixture
def tree(tmp_path: Path) -> w.RoundFiles:
    written = _write(
        tmp_path / "calmfirst_written.jsonl", [_line("written-v1-tw-0001", "包裹怎麼還沒到", split="train")]
    )
    pair = {
        "pair": "contrast-001",
        "script": "hant",
        "region": "tw",
        "complaint_type": "account_technical",
        "threat": False,
        "decides": "anger_level",
        "kind": "contrast",
        "why": "an insult makes it 3",
    }
    contrast = _write(
        tmp_path / "contrast.jsonl",
        [
            {**pair, "id": "contrast-001a", "text": "垃圾公司,App又閃退,到底能不能用?", "anger_level": 3},
            {**pair, "id": "contrast-001b", "text": "請問更新後一直閃退怎麼辦?", "anger_level": 0},
        ],
    )
    batches = tmp_path / "batches"
    _write(
        batches / "written-v2-tw.jsonl",
        [
            _line("written-v2-tw-0001", "我要求退運費,箱子壓扁了"),
            _line("written-v2-tw-0002", "app又閃退了,很困擾", written_for=["short_other"]),  # 6-run with contrast
            _line("written-v2-tw-0003", "包裹 怎麼還沒到!"),  # same comparison form as line 1 of the file
        ],
    )
    _write(batches / "written-v2-hk.jsonl", [_line("written-v2-hk-0001", "我要告你哋", region="hk", threat=True)])
    return w.RoundFiles(batches=batches, written=written, contrast=contrast)


def test_collect_keeps_fills_and_leaves_out(tree: w.RoundFiles) -> None:
    rep = w.collect(
        2,
        {"tw": "a90", "hk": "a91"},
        overlap=6,
        files=tree,
    )
    kept = {r["id"]: r for r in rep.kept}
    assert set(kept) == {"written-v2-tw-0001", "written-v2-hk-0001"}
    assert kept["written-v2-tw-0001"]["selection"] == "written_v2:short_internal_request"
    assert kept["written-v2-hk-0001"]["annotator"] == "a91"
    why = dict(rep.left_out)
    assert "contrast-001a" in why["written-v2-tw-0002"]  # case and punctuation ignored
    assert "duplicates" in why["written-v2-tw-0003"]
    # with the default 8-character run the contrast overlap is allowed
    rep8 = w.collect(2, {"tw": "a90", "hk": "a91"}, files=tree)
    assert "written-v2-tw-0002" in {r["id"] for r in rep8.kept}


def test_issue_examples_are_protected(tree: w.RoundFiles) -> None:
    _write(
        tree.batches / "written-v3-tw.jsonl", [_line("written-v3-tw-0001", "真的，什麼態度！我要上網留言讓大家知道")]
    )
    rep = w.collect(3, {"tw": "a90"}, files=tree)
    assert rep.kept == [] and "issue example" in rep.left_out[0][1]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (_line("written-v3-tw-0001", "好", anger_level=7), "written-v3-tw.jsonl:1"),
        (_line("written-v1-tw-0001", "新的一句"), "already in"),
        (_line("written-v3-tw-0001", "新的一句", written_for=[]), "written_for"),
        (_line("written-v3-tw-0001", "新的一句", source="stc3"), "source"),
    ],
)
def test_bad_lines_name_the_line_and_field(tree: w.RoundFiles, row: dict, message: str) -> None:
    _write(tree.batches / "written-v3-tw.jsonl", [row])
    with pytest.raises(LabelError, match=message):
        w.collect(3, {"tw": "a90"}, files=tree)


def test_missing_round_or_annotator(tree: w.RoundFiles) -> None:
    with pytest.raises(LabelError, match="written-v9"):
        w.collect(9, {}, files=tree)
    with pytest.raises(LabelError, match="group 'hk'"):
        w.collect(2, {"tw": "a90"}, files=tree)
    with pytest.raises(LabelError, match="GROUP=ANNOTATOR"):
        w.parse_annotators(["tw"])
    assert w.main(["merge", "2", "--annotator", "tw"]) == 1


def _merge(tree: w.RoundFiles, *, move: bool, overlap: int = 6) -> w.MergeReport:
    """Merge round 2 of ``tree``; ``move`` makes the split store move an already stored split."""

    def store() -> None:
        rows = [json.loads(x) for x in tree.written.read_text(encoding="utf-8").splitlines()]
        for r in rows:
            r.setdefault("split", "dev")
            if move and r["id"] == "written-v1-tw-0001":
                r["split"] = "test"
        _write(tree.written, rows)

    return w.merge(2, {"tw": "a90", "hk": "a91"}, overlap=overlap, files=tree, label_files=[], store_splits=store)


def test_merge_appends_and_stores_splits(tree: w.RoundFiles) -> None:
    rep = _merge(tree, move=False)
    rows = [json.loads(x) for x in tree.written.read_text(encoding="utf-8").splitlines()]
    assert rep.moved == [] and [r["id"] for r in rows][1:] == [r["id"] for r in rep.kept]
    assert all(r["split"] for r in rows)


def test_merge_undoes_everything_when_a_stored_split_moves(tree: w.RoundFiles) -> None:
    before = tree.written.read_bytes()
    rep = _merge(tree, move=True, overlap=8)
    assert rep.moved == ["calmfirst_written.jsonl:written-v1-tw-0001 train -> test"]
    assert tree.written.read_bytes() == before
