"""Folder and glob inputs (``service.io.readers.input_files``): files in sorted order, ids and problems per file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.io.readers import BadLine, InputFormatError, Record, count_lines, input_files, read_records
from service.qa.readers import SourceConversation, check_input, read_conversations


def test_single_file_unchanged(tmp_path: Path) -> None:
    f = tmp_path / "m.jsonl"
    f.write_text('{"text": "a"}\n{"id": 7, "text": "b"}\n{"id": null, "text": "c"}\n', encoding="utf-8")
    assert input_files(str(f)) is None and input_files("-") is None
    got = list(read_records(str(f)))
    assert [(r.line, r.id, r.text) for r in got if isinstance(r, Record)] == [(1, 0, "a"), (2, 7, "b"), (3, None, "c")]


def test_folder_and_glob(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("x\n\ny\n", encoding="utf-8")
    (tmp_path / "a.jsonl").write_text('{"text": "p"}\nnot json\n{"id": "k", "text": "q"}\n', encoding="utf-8")
    (tmp_path / "c.csv").write_text("id,text\n,r\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.txt").write_text("s\n", encoding="utf-8")
    assert [p.name for p in input_files(str(tmp_path)) or []] == ["a.jsonl", "b.txt", "c.csv"]
    items = list(read_records(str(tmp_path)))
    records = [(r.id, r.text) for r in items if isinstance(r, Record)]
    assert records == [("a.jsonl:0", "p"), ("k", "q"), ("b.txt:0", "x"), ("b.txt:2", "y"), ("c.csv:0", "r")]
    bad = [b for b in items if isinstance(b, BadLine)]
    assert len(bad) == 1 and bad[0].path == str(tmp_path / "a.jsonl") and bad[0].line == 2
    assert bad[0].report(tmp_path).startswith(f"{tmp_path / 'a.jsonl'}: line 2: not valid JSON")
    assert count_lines(str(tmp_path)) == 3 + 3 + 2

    pattern = str(tmp_path / "**" / "*.txt")
    assert [p.name for p in input_files(pattern) or []] == ["b.txt", "d.txt"]
    ids = [r.id for r in read_records(pattern) if isinstance(r, Record)]
    assert ids == [f"{tmp_path / 'b.txt'}:0", f"{tmp_path / 'b.txt'}:2", f"{tmp_path / 'sub' / 'd.txt'}:0"]


def test_no_files(tmp_path: Path) -> None:
    with pytest.raises(InputFormatError, match="no input files"):
        list(read_records(str(tmp_path)))
    with pytest.raises(InputFormatError, match="no files match"):
        list(read_records(str(tmp_path / "*.jsonl")))


def test_transcript_folder(tmp_path: Path) -> None:
    conv = {"turns": [{"role": "customer", "text": "退款"}]}
    (tmp_path / "one.jsonl").write_text(json.dumps(conv) + "\n" + json.dumps({"id": "x", **conv}) + "\n")
    (tmp_path / "two.csv").write_text("conversation_id,turn_index,role,text\nz,0,customer,好\nz,1,robot,?\n")
    (tmp_path / "skip.txt").write_text("not a transcript\n")
    assert check_input(tmp_path) == "files"
    items = list(read_conversations(tmp_path))
    convs = [c for c in items if isinstance(c, SourceConversation)]
    assert [c.id for c in convs] == ["one.jsonl:0", "x", "z"]
    assert all(c.path for c in convs)
    bad = [b for b in items if isinstance(b, BadLine)]
    assert [(Path(b.path or "").name, b.line) for b in bad] == [("two.csv", 3)]


def test_unreadable_csv_row_is_reported_and_the_rest_read(tmp_path: Path) -> None:
    """A row the csv module rejects (here: a field over its size limit) is a bad line naming its line,
    for messages and transcripts alike; the rows after it are still read."""
    import csv

    msgs = tmp_path / "m.csv"
    msgs.write_text("id,text\na,短\nb," + "長" * 200 + "\nc,好\n", encoding="utf-8")
    conv = tmp_path / "c.csv"
    conv.write_text(
        "conversation_id,turn_index,role,text\nx,0,customer,你好\nx,1,agent," + "長" * 200 + "\ny,0,customer,再見\n",
        encoding="utf-8",
    )
    old = csv.field_size_limit(100)
    try:
        got = list(read_records(str(msgs)))
        convs = list(read_conversations(conv))
    finally:
        csv.field_size_limit(old)
    assert [(r.line, r.id) for r in got if isinstance(r, Record)] == [(2, "a"), (4, "c")]
    assert [(b.line, b.reason.split(" (")[0]) for b in got if isinstance(b, BadLine)] == [(3, "unreadable CSV row")]
    assert [b.line for b in convs if isinstance(b, BadLine)] == [3]
    assert [c.key for c in convs if isinstance(c, SourceConversation)] == ["x", "y"]


def test_a_broken_quote_does_not_swallow_the_rows_after_it(tmp_path: Path) -> None:
    """An opened quote that never closes (or closes in the middle of a later row) made the csv module read every
    later line into one field: the rows behind it were lost without a word. Now the row is reported where it
    starts and the lines after it are read again; a well-quoted field over two lines is still one text."""
    msgs = tmp_path / "m.csv"
    msgs.write_text(
        'id,text\na1,"壞引號 開始\n' + "".join(f"r{i},好的{i}\n" for i in range(200)) + 'm,"兩行\n的文字"\n',
        encoding="utf-8",
    )
    got = list(read_records(str(msgs)))
    records = [r for r in got if isinstance(r, Record)]
    assert [r.id for r in records] == [f"r{i}" for i in range(200)] + ["m"]
    assert records[0].line == 3 and records[-1].text == "兩行\n的文字" and records[-1].line == 203
    bad = [b for b in got if isinstance(b, BadLine)]
    assert [b.line for b in bad] == [2] and "quoted field opened on line 2" in bad[0].reason

    # a transcript: the quote opened on line 3 closes on line 5 before a letter, not a comma
    conv = tmp_path / "c.csv"
    conv.write_text(
        "conversation_id,turn_index,role,text\n"
        "k1,0,customer,你好\n"
        'k1,1,agent,"您好\n'
        "k1,2,customer,我要退款\n"
        'k2,0,customer,"帳單" 錯了\n'
        "k3,0,customer,再見\n",
        encoding="utf-8",
    )
    items = list(read_conversations(conv))
    convs = {c.key: c for c in items if isinstance(c, SourceConversation)}
    assert [b.line for b in items if isinstance(b, BadLine)] == [3]
    assert [t.text for t in convs["k1"].turns] == ["你好", "我要退款"]
    assert [t.text for t in convs["k2"].turns] == ["帳單 錯了"]  # a one-line quirk is read as before
    assert list(convs) == ["k1", "k2", "k3"]


def test_a_bad_json_line_names_the_column_and_a_csv_transcript_without_a_column_names_the_file(tmp_path: Path) -> None:
    from service.io.readers import read_jsonl
    from service.qa.readers import check_input

    (bad,) = list(read_jsonl(['{"text": "a\x01b"}']))
    assert isinstance(bad, BadLine) and bad.reason == "not valid JSON (Invalid control character at column 12)"
    conv = tmp_path / "c.csv"
    conv.write_text("conversation_id,role,text\nx,customer,你好\n", encoding="utf-8")
    with pytest.raises(InputFormatError, match=r"c.csv: line 1: CSV header has no column 'turn_index'"):
        check_input(conv)
