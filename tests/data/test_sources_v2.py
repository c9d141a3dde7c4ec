"""Readers of the Taiwan and Hong Kong sources, real agent turns, and the split rule (labels v2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data.loader import load_agent_turns, read_label_file
from data.sources import read_agent_turns, read_hk_openrice, read_tw_hospital, region_of
from data.splits import assign, normalise, text_key
from data.stats import markdown, stats

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SHARED = FIXTURES / "shared" / "data"


def test_hospital_reader_ids_rows_and_keeps_the_public_reply() -> None:
    rows = list(read_tw_hospital(SHARED))
    # row 1 has no review text: skipped, but the row numbering stays the file's own
    assert [r.id for r in rows] == ["hosp:0", "hosp:2"]
    assert rows[0].meta["reply"] == "抱歉讓您久候,已轉知門診單位改善。"
    assert rows[0].meta["star"] == "1"
    assert region_of("tw_hospital_reviews") == "tw" and region_of("hk_openrice_senti") == "hk"
    assert region_of("stc3") == "cn"


def test_openrice_reader_reads_both_files() -> None:
    rows = list(read_hk_openrice(SHARED))
    assert [r.id for r in rows] == ["openrice:test:0", "openrice:test:1", "openrice:valid:0"]
    assert rows[0].meta["label"] == "cry"


def test_real_agent_turns_come_with_the_customer_turn_before() -> None:
    turns = {t.id: t for t in read_agent_turns(SHARED)}
    assert turns["hosp:0:reply"].text.startswith("抱歉讓您久候")
    assert turns["hosp:0:reply"].meta["context"].startswith("掛號等了")
    stc3 = [t for t in turns.values() if t.source == "stc3"]
    assert stc3 and all(t.meta["context"] for t in stc3)


def test_agent_turn_loader_joins_real_text_and_keeps_written_text(tmp_path: Path) -> None:
    path = tmp_path / "agent_turns.jsonl"
    recs = [
        {
            "id": "hosp:0:reply",
            "source": "tw_hospital_reviews",
            "steps": ["apologize", "commit_action"],
            "mistakes": [],
        },
        {"id": "at-1", "source": "calmfirst_written", "text": "好的", "steps": [], "mistakes": []},
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    out = {r["id"]: r for r in load_agent_turns(path, shared_dir=SHARED)}
    assert out["hosp:0:reply"]["text"].startswith("抱歉") and out["hosp:0:reply"]["context"].startswith("掛號")
    assert out["at-1"]["text"] == "好的"
    assert load_agent_turns(path, shared_dir=tmp_path / "nowhere", on_missing="skip") == [out["at-1"]]
    with pytest.raises(FileNotFoundError):
        load_agent_turns(path, shared_dir=tmp_path / "nowhere")


def test_normalise_ignores_whitespace_punctuation_and_width() -> None:
    assert normalise("退錢!! 馬上 ") == normalise("退錢！！馬上") == "退錢馬上"
    assert text_key("ＡＢＣ，好") == text_key("abc 好")


def test_duplicates_share_one_split_and_own_splits_are_kept() -> None:
    recs = [
        {"source": "waimai_10k", "id": "waimai:1", "text": "太慢了!", "region": "cn"},
        {"source": "calmfirst_written", "id": "w-9", "text": "太慢了", "region": "tw"},
        {"source": "smp2020_ewect", "id": "usual_eval:1", "text": "气死了", "region": "cn"},
    ]
    # many different duplicates: whichever split the first copy gets, the other copy follows
    split = assign(recs, {("smp2020_ewect", "usual_eval:1"): "test"})
    assert split[("waimai_10k", "waimai:1")] == split[("calmfirst_written", "w-9")]
    assert split[("smp2020_ewect", "usual_eval:1")] == "test"
    many = [{"source": "x", "id": str(i), "text": f"文本{i}", "region": "hk"} for i in range(4000)]
    got = assign(many, {})
    share = sum(v == "test" for v in got.values()) / len(got)
    assert 0.17 < share < 0.23  # Taiwan and Hong Kong put 20% in test


def test_card_tables_count_real_and_written_apart(tmp_path: Path) -> None:
    ann = tmp_path / "ann"
    ann.mkdir()
    base = {"types": ["none"], "complaint_type": "none", "threat": False, "schema": "1.2"}
    recs = [
        {
            **base,
            "id": "hosp:0",
            "source": "tw_hospital_reviews",
            "anger_level": 0,
            "script": "hant",
            "region": "tw",
            "split": "test",
        },
        {
            **base,
            "id": "w-1",
            "source": "calmfirst_written",
            "text": "好",
            "anger_level": 0,
            "script": "hant",
            "region": "hk",
            "split": "train",
        },
    ]
    (ann / "x.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    agents = tmp_path / "agent.jsonl"
    agents.write_text(
        json.dumps({"id": "hosp:0:reply", "source": "tw_hospital_reviews", "steps": ["thank"], "mistakes": []}) + "\n"
    )
    s = stats(ann, agents)
    assert (s["records"], s["real"], s["written"], s["real_hant"], s["test_real_hant"]) == (2, 1, 1, 1, 1)
    md = markdown(s)
    assert "| 0 calm | 1 | 1 | 2 |" in md
    assert "| test | real | 1 | 0 | 1 | 0 |" in md
    assert "| thank | 1 | 1 |" in md
    assert "not met" in md  # two records are far from the labels-v2 minimums
    assert read_label_file(ann / "x.jsonl")[0]["region"] == "tw"


def test_stored_splits_decide_their_duplicates_so_a_merge_never_moves_a_held_out_record() -> None:
    """A new record whose (source, id) sorts first would carry its duplicate cluster's split with it; with the
    stored splits passed, the labelled record keeps its split and the new duplicate joins it."""
    old = {"source": "stc3", "id": "9-t1", "text": "您好,请私信我们!", "region": "cn"}
    new = {"source": "stc3", "id": "1-t1", "text": "您好 请私信我们", "region": "cn"}
    own = {("stc3", "9-t1"): "test", ("stc3", "1-t1"): "train"}
    assert assign([old, new], own) == {("stc3", "1-t1"): "train", ("stc3", "9-t1"): "train"}  # the old rule moves it
    kept = assign([old, new], own, stored={("stc3", "9-t1"): "test"})
    assert kept == {("stc3", "1-t1"): "test", ("stc3", "9-t1"): "test"}
    lone = {"source": "stc3", "id": "2-t1", "text": "别的回复", "region": "cn"}
    assert assign([old, new, lone], {**own, ("stc3", "2-t1"): "dev"}, stored={})[("stc3", "2-t1")] == "dev"


def test_batch_merge_stores_splits_keeping_the_stored_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """`batch merge` stores the new records' splits at once, and never by recomputing the labelled ones."""
    from data.tools import batch

    calls: list[dict] = []
    monkeypatch.setattr(batch, "merge", lambda names: {"agent-r9-001.jsonl": (3, 0)})
    monkeypatch.setattr(batch, "write_splits", lambda **kw: calls.append(kw) or {})
    assert batch.main(["merge"]) == 0
    assert calls == [{"keep_stored": True}]
    monkeypatch.setattr(batch, "merge", lambda names: {"agent-r9-001.jsonl": (0, 3)})
    batch.main(["merge"])
    assert len(calls) == 1  # nothing added: nothing to split


def test_write_splits_after_a_merge_keeps_a_test_turn_whose_new_duplicate_sorts_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only splits written in the label file count as stored: the loader fills a missing split in from the
    source (train, by dialogue), and taking that fill-in as stored let a new record carry its held-out
    duplicate into train (round 6 of the agent turns, 3 turns, caught by a record-by-record check)."""
    import data.loader
    import data.sources
    from data.sources import SourceText
    from data.tools import batch

    agent_file = tmp_path / "agent_turns.jsonl"
    held = {"id": "9-t1", "source": "stc3", "steps": ["thank"], "mistakes": [], "split": "test"}
    new = {"id": "1-t1", "source": "stc3", "steps": ["thank"], "mistakes": []}
    agent_file.write_text("".join(json.dumps(r) + "\n" for r in (held, new)), encoding="utf-8")
    rows = [SourceText(r["id"], "stc3", "感谢您的反馈!", "train", {"context": ""}) for r in (held, new)]

    def load_agent_turns() -> list[dict]:  # as the loader does: text joined, a missing split filled in
        return [{**r, "text": "感谢您的反馈!", "split": r.get("split", "train")} for r in batch.read_jsonl(agent_file)]

    monkeypatch.setattr(data.loader, "AGENT_TURNS_FILE", agent_file)
    monkeypatch.setattr(data.loader, "annotation_files", lambda: [])
    monkeypatch.setattr(data.loader, "load_agent_turns", load_agent_turns)
    monkeypatch.setattr(data.sources, "read_agent_turns", lambda root: iter(rows))
    batch.write_splits(keep_stored=True)
    got = {r["id"]: r["split"] for r in batch.read_jsonl(agent_file)}
    assert got == {"9-t1": "test", "1-t1": "test"}  # the held-out turn stays; its new duplicate joins it
    batch.write_splits()  # `batch splits` alone recomputes by the rule: the first id's dialogue split decides
    assert {r["split"] for r in batch.read_jsonl(agent_file)} == {"train"}
