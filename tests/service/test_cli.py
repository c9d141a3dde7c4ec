"""``calmfirst score`` on good and broken files, through the real console entry point."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest

from service.cli import main


@pytest.fixture()
def env_model(tiny_model_dir, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CALMFIRST_MODEL_PATH", str(tiny_model_dir))
    return tiny_model_dir


def test_cli_score_jsonl_with_bad_lines(tmp_path, env_model, capsys) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "in.jsonl"
    src.write_text(
        "\n".join(
            [
                json.dumps({"id": "a", "text": "請問我的訂單什麼時候出貨?"}, ensure_ascii=False),
                "{broken json",
                json.dumps({"id": "b", "content": "no text field"}),
                json.dumps({"id": "c", "text": "太離譜了!!"}, ensure_ascii=False),
                "",
                json.dumps({"text": "沒有id"}, ensure_ascii=False),
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "out.jsonl"
    rc = main(["score", str(src), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 0
    assert "line 2:" in err and "line 3:" in err and "3 scored, 2 skipped" in err
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == ["a", "c", 5]  # order kept; missing id -> 0-based line number
    assert rows[0]["script"] == "hant"


def test_cli_score_chunk_reaches_stdout_output(tmp_path, env_model, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``--chunk`` sets the messages per model call on every path (it once reached ``-o FILE`` only)."""
    from service.analyzer import Analyzer

    calls: list[int] = []
    analyze = Analyzer.analyze

    def spy(self, texts, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(texts))
        return analyze(self, texts, *args, **kwargs)

    monkeypatch.setattr(Analyzer, "analyze", spy)
    src = tmp_path / "in.txt"
    src.write_text(
        "\n".join(["退款什么时候到账", "太離譜了!!", "請問怎麼退貨", "謝謝", "你们客服态度太差"]) + "\n",
        encoding="utf-8",
    )
    assert main(["score", str(src), "--chunk", "2", "--no-progress"]) == 0
    assert calls == [2, 2, 1]
    assert len(capsys.readouterr().out.splitlines()) == 5


def test_cli_score_csv_in_csv_out(tmp_path, env_model) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "in.csv"
    with open(src, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["msg_id", "content"])
        w.writerows([["1", "退款什么时候到账"], ["2", ""], ["3", "你们客服态度太差"]])
    out = tmp_path / "out.csv"
    rc = main(["score", str(src), "-o", str(out), "--text-field", "content", "--id-field", "msg_id"])
    assert rc == 0
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    assert [r["id"] for r in rows] == ["1", "3"]
    assert rows[0]["flag"] in {"calm_first", "ready_for_solutions"}


def test_cli_score_csv_missing_column_is_clear(tmp_path, env_model, capsys) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "in.csv"
    src.write_text("a,b\n1,2\n", encoding="utf-8")
    assert main(["score", str(src)]) == 2
    assert "no column 'text'" in capsys.readouterr().err


def test_cli_score_nothing_scored_exits_nonzero(tmp_path, env_model) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "in.jsonl"
    src.write_text("{bad\n[1,2]\n", encoding="utf-8")
    assert main(["score", str(src), "-o", str(tmp_path / "o.jsonl")]) == 1


def test_cli_score_txt_stdin_console_script(tmp_path, env_model) -> None:  # type: ignore[no-untyped-def]
    exe = [sys.executable, "-m", "service.cli", "score", "-", "--no-progress"]
    proc = subprocess.run(
        exe,
        input="請問營業時間\n\n為什麼還要算錢!\n",
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "CALMFIRST_MODEL_PATH": str(env_model)},
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [r["id"] for r in rows] == [0, 2]


def test_cli_score_progress_bar_on_long_files(tmp_path, env_model) -> None:  # type: ignore[no-untyped-def]
    from service.analyzer import Analyzer
    from service.score import score_file

    src = tmp_path / "many.txt"
    src.write_text("\n".join(["請問"] * 1200) + "\n", encoding="utf-8")
    from model.classifier import CalmFirstModel

    analyzer = Analyzer(CalmFirstModel.from_pretrained(env_model, merge_adapters=True), batch_size=256)
    out, err = io.StringIO(), io.StringIO()
    report = score_file(analyzer, str(src), out, err=err, chunk_size=600)
    assert report.scored == 1200
    assert "1200/1200" in err.getvalue()
    assert len(out.getvalue().splitlines()) == 1200


def test_cli_unknown_output_format(tmp_path, env_model, capsys) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "a.txt"
    src.write_text("hi\n")
    assert main(["score", str(src), "-o", str(tmp_path / "x.parquet")]) == 2
    assert "output must be" in capsys.readouterr().err


def test_cli_score_missing_input_or_output_folder_is_a_one_line_error(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """Both were tracebacks (found by an outside walkthrough); now named, exit 2, before any model loads
    (no model is given here: loading one would fail differently)."""
    src = tmp_path / "a.jsonl"
    src.write_text('{"text": "你好"}\n', encoding="utf-8")
    assert main(["score", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "x.csv")]) == 2
    assert capsys.readouterr().err.strip() == f"calmfirst score: {tmp_path / 'nope.jsonl'}: no such file"
    assert main(["score", str(tmp_path / "nope.jsonl")]) == 2  # to stdout
    assert "no such file" in capsys.readouterr().err
    assert main(["score", str(src), "-o", str(tmp_path / "missing" / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert "no such folder" in err and "Traceback" not in err and not (tmp_path / "missing").exists()


def test_cli_prepare_backbone_exports_builds_what_the_server_loads(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """``make backbone`` (``prepare-backbone --exports``) builds both exports, so no server builds one in process."""
    import model.backbone
    import model.onnx
    import service.routing.agent_model

    calls: list[str] = []
    monkeypatch.setattr(model.backbone, "prepare_default_backbone", lambda force=False: tmp_path / "backbone")
    monkeypatch.setattr(model.onnx, "ensure_export", lambda path, quantize=True: calls.append(f"model {path}") or path)
    monkeypatch.setattr(
        service.routing.agent_model, "load_agent_detector", lambda threads=None: calls.append("agent-turn encoder")
    )
    monkeypatch.setenv("CALMFIRST_MODEL_PATH", str(tmp_path / "m"))
    assert main(["prepare-backbone"]) == 0 and calls == []  # without the flag: the backbone only, as before
    assert main(["prepare-backbone", "--exports"]) == 0
    assert calls == [f"model {tmp_path / 'm'}", "agent-turn encoder"]


def test_training_subcommands_without_installed_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkout never installed (``python -m service.cli`` on a machine that can install nothing) has no
    entry points; train/evaluate/calibrate/soup are then found in training.cli directly."""
    import service.cli as cli

    monkeypatch.setattr(cli, "entry_points", lambda group: [])
    parser = cli.build_parser()
    args = parser.parse_args(["evaluate", "--model", "m", "data.jsonl", "--split", "dev", "--device", "cpu"])
    assert args.func.__module__ == "training.cli" and args.device == "cpu"
    assert {name for name, _load in cli._command_plugins()} >= {"train", "evaluate", "calibrate", "soup"}


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        (
            "CALMFIRST_MAX_INFLIGHT",
            "-1",
            "setting CALMFIRST_MAX_INFLIGHT=-1: Input should be greater than or equal to 0",
        ),
        ("CALMFIRST_BATCH_SIZE", "abc", "setting CALMFIRST_BATCH_SIZE=abc: Input should be a valid integer"),
        ("CALMFIRST_DEFAULT_SCRIPT", "latin", "setting CALMFIRST_DEFAULT_SCRIPT=latin: Value error, default_script"),
    ],
)
def test_cli_bad_setting_is_named_without_a_traceback(  # type: ignore[no-untyped-def]
    tmp_path, monkeypatch, capsys, variable: str, value: str, named: str
) -> None:
    """A CALMFIRST_* variable the service cannot use stops score and serve with one line naming it (exit 2)."""
    src = tmp_path / "in.txt"
    src.write_text("你好\n", encoding="utf-8")
    monkeypatch.setenv(variable, value)
    for argv in (["score", str(src)], ["serve", "--port", "1"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"calmfirst {argv[0]}: {named}" in err
        assert "Traceback" not in err


def test_cli_lang_the_playbook_lacks_is_refused_before_the_model_loads(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    import yaml

    from service.routing.playbook import DEFAULT_PLAYBOOK

    raw = yaml.safe_load(DEFAULT_PLAYBOOK.read_text(encoding="utf-8"))
    raw["languages"] = ["zh-Hant", "zh-Hans"]
    for variants in raw["steps"].values():
        for texts in variants.values():
            texts.pop("en", None)
    playbook = tmp_path / "pb.yaml"
    playbook.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    monkeypatch.setenv("CALMFIRST_PLAYBOOK_PATH", str(playbook))
    src = tmp_path / "a.jsonl"
    src.write_text('{"text": "你好"}\n', encoding="utf-8")
    assert main(["score", str(src), "--lang", "en", "--model", str(tmp_path / "no-model")]) == 2
    assert "--lang en: not a language of the playbook (zh-Hant, zh-Hans)" in capsys.readouterr().err


def test_cli_chunk_must_be_positive(capsys) -> None:  # type: ignore[no-untyped-def]
    """--chunk 0 and --chunk -3 behaved as 1, silently (found by an outside walkthrough)."""
    for command in (["qa", "in.jsonl", "-o", "out"], ["score", "in.jsonl"]):
        with pytest.raises(SystemExit) as stop:
            main([*command, "--chunk", "0"])
        assert stop.value.code == 2 and "--chunk: 0 is not 1 or more" in capsys.readouterr().err
