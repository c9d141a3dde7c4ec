"""``calmfirst score -o FILE``: complete or absent, and resumed after an interruption (in process)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from service.io.readers import InputFormatError
from service.io.resumable import ResumableOutput
from service.score import score_to_file
from tests.conftest import fixture_messages


class KilledError(Exception):
    pass


def _input(path: Path, n: int = 230) -> Path:
    texts = [m["text"] for m in fixture_messages()]
    lines = [json.dumps({"id": f"m{i}", "text": texts[i % len(texts)]}, ensure_ascii=False) for i in range(n)]
    lines.insert(57, "{broken")  # a bad line inside the part an interrupted run already wrote
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, commits: int) -> None:
    real = ResumableOutput.commit
    seen = {"n": 0}

    def commit(self: ResumableOutput, records: int) -> None:
        real(self, records)
        seen["n"] += 1
        if seen["n"] >= commits:
            raise KilledError

    monkeypatch.setattr(ResumableOutput, "commit", commit)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_resumable_interrupted_run_is_not_complete_and_resumes_exactly(
    tmp_path: Path, tiny_analyzer, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:  # type: ignore[no-untyped-def]
    src = _input(tmp_path / "in.jsonl")
    clean = tmp_path / f"clean{suffix}"
    report = score_to_file(tiny_analyzer, str(src), clean, chunk_size=50, progress=False)
    assert report.scored == 230 and len(report.bad) == 1 and report.resumed == 0

    out = tmp_path / f"out{suffix}"
    with monkeypatch.context() as mp:
        _interrupt_after(mp, 3)
        with pytest.raises(KilledError):
            score_to_file(tiny_analyzer, str(src), out, chunk_size=50, progress=False)
    assert not out.exists()  # nothing that looks complete
    partial = out.with_name(out.name + ".partial")
    assert partial.exists() and out.with_name(out.name + ".progress").exists()
    # a chunk cut off mid-write after the last commit: dropped on resume
    with open(partial, "a", encoding="utf-8") as f:
        f.write('{"id": "m150", "anger": {"lev')

    scored: list[int] = []
    real_analyze = type(tiny_analyzer).analyze

    def counting(self, texts, **kwargs):  # type: ignore[no-untyped-def]
        scored.append(len(texts))
        return real_analyze(self, texts, **kwargs)

    monkeypatch.setattr(type(tiny_analyzer), "analyze", counting)
    again = score_to_file(tiny_analyzer, str(src), out, chunk_size=50, progress=False)
    assert again.resumed == 150 and again.scored == 80 and sum(scored) == 80  # nothing scored twice
    assert len(again.bad) == 1  # still reported
    assert out.read_bytes() == clean.read_bytes()
    assert not partial.exists() and not out.with_name(out.name + ".progress").exists()
    if suffix == ".csv":
        rows = list(csv.DictReader(open(out, encoding="utf-8", newline="")))
        assert [r["id"] for r in rows] == [f"m{i}" for i in range(230)]


def test_resumable_other_arguments_start_over(tmp_path: Path, tiny_analyzer, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    src = _input(tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    with monkeypatch.context() as mp:
        _interrupt_after(mp, 2)
        with pytest.raises(KilledError):
            score_to_file(tiny_analyzer, str(src), out, chunk_size=50, progress=False)
    # another language: the 100 records written are not this run's
    report = score_to_file(tiny_analyzer, str(src), out, chunk_size=50, lang="en", progress=False)
    assert report.resumed == 0 and report.scored == 230
    assert {json.loads(x)["route"]["next_step"]["lang"] for x in out.read_text(encoding="utf-8").splitlines()} == {"en"}


def test_resumable_changed_input_starts_over(tmp_path: Path, tiny_analyzer, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    src = _input(tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    with monkeypatch.context() as mp:
        _interrupt_after(mp, 2)
        with pytest.raises(KilledError):
            score_to_file(tiny_analyzer, str(src), out, chunk_size=50, progress=False)
    _input(src, n=120)
    report = score_to_file(tiny_analyzer, str(src), out, chunk_size=50, progress=False)
    assert report.resumed == 0 and report.scored == 120
    assert len(out.read_text(encoding="utf-8").splitlines()) == 120


def test_resumable_unreadable_input_leaves_nothing(tmp_path: Path, tiny_analyzer) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "in.csv"
    src.write_text("a,b\n1,2\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    with pytest.raises(InputFormatError, match="no column 'text'"):
        score_to_file(tiny_analyzer, str(src), out, progress=False)
    assert list(tmp_path.iterdir()) == [src]


def test_resumable_output_commit_log(tmp_path: Path) -> None:
    out = ResumableOutput(tmp_path / "o.jsonl", {"input": "x"})
    out.stream.write("a\n")
    out.commit(1)
    out.stream.write("b\n")
    out.commit(2)
    out.stream.write("half")
    out.close()
    log = (tmp_path / "o.jsonl.progress").read_text().splitlines()
    assert json.loads(log[0]) == {"format_version": 1, "input": "x"}
    assert [json.loads(x) for x in log[1:]] == [{"records": 1, "bytes": 2}, {"records": 2, "bytes": 4}]
    again = ResumableOutput(tmp_path / "o.jsonl", {"input": "x"})
    assert again.done == 2 and (tmp_path / "o.jsonl.partial").read_text() == "a\nb\n"
    again.finish()
    assert (tmp_path / "o.jsonl").read_text() == "a\nb\n" and sorted(p.name for p in tmp_path.iterdir()) == ["o.jsonl"]
    # without an identity (stdin, folders): still atomic, never resumed
    plain = ResumableOutput(tmp_path / "p.jsonl", None)
    assert plain.done == 0 and not (tmp_path / "p.jsonl.progress").exists()
    plain.stream.write("x\n")
    plain.commit(1)
    plain.close()
    assert not (tmp_path / "p.jsonl").exists() and ResumableOutput(tmp_path / "p.jsonl", None).done == 0


def test_resumable_jsonl_with_lone_surrogates_and_controls(tmp_path: Path, tiny_analyzer) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "in.jsonl"
    src.write_text(
        '{"id": "\\ud800x", "text": "abc\\udc00"}\n{"id": 2, "text": "a\\u0000b\\u001b"}\n[' + "[" * 5000 + "\n",
        encoding="utf-8",
    )
    report = score_to_file(tiny_analyzer, str(src), tmp_path / "o.jsonl", progress=False)
    assert report.scored == 2 and len(report.bad) == 1
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == ["\ufffdx", 2]
