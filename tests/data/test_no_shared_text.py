"""The shared corpora's text is never committed: label files carry ids, labels and notes without quotations."""

from __future__ import annotations

import re

from data.tools.batch import committed_label_files, read_jsonl, redact_quotes, redact_record

CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")


def test_redact_quotes_keeps_the_reasoning_and_drops_the_quotation() -> None:
    note = "customer writes 「這是偷竊！」 but 乱收费 alone is level 1"
    assert redact_quotes(note) == "customer writes «…» but «…» alone is level 1"
    assert redact_quotes("plain English, no quote") == "plain English, no quote"


def test_redact_record_leaves_the_projects_own_written_text() -> None:
    written = {"id": "w1", "source": "calmfirst_written", "note": "「再不處理就投訴」 template"}
    shared = {"id": "s1", "source": "stc3", "note": "「再不處理就投訴」 template", "anger_level": 2}
    assert redact_record(written) == written
    assert redact_record(shared) == {**shared, "note": "«…» template"}


def test_no_committed_label_file_quotes_shared_text() -> None:
    files = committed_label_files()
    assert any(f.name == "agent_turns.jsonl" for f in files) and len(files) > 10
    for path in files:
        for n, rec in enumerate(read_jsonl(path), 1):
            if rec.get("source") == "calmfirst_written":
                continue  # the project's own messages and turns (their text is ours to commit)
            for key, value in rec.items():
                if isinstance(value, str):
                    assert not CJK.search(value), f"{path.name} line {n}: {key} quotes source text"


def test_redacting_twice_changes_nothing() -> None:
    once = redact_quotes("agent says 「請您自行確認…」 then 謝謝")
    assert once == "agent says «…» then «…»"
    assert redact_quotes(once) == once
