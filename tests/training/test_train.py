"""End to end: a tiny model trained on a few dozen rows, evaluated, then trained further from the saved model."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from model.classifier import CalmFirstModel
from service.cli import main
from tests.conftest import fixture_messages
from training.config import ConfigError, load_config
from training.data import DataError
from training.run import run_evaluation, run_training

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def train_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 20 fixture messages written twice (ids differ) so the run sees a few dozen rows."""
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    rows = fixture_messages()
    with path.open("w", encoding="utf-8") as f:
        for copy in range(2):
            for r in rows:
                f.write(json.dumps({**r, "id": f"{r['id']}-{copy}"}, ensure_ascii=False) + "\n")
    return path


def _config(train_file: Path, backbone: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    return load_config(
        None,
        [
            f'data.sources=[{{"path": "{train_file}", "split": "column"}}]',
            f"model.backbone={backbone}",
            "model.lora.r=4",
            "model.max_length=48",
            "epochs=2",
            "batch_size=8",
            "learning_rate=0.005",
            "head_learning_rate=0.01",
            f"output_dir={out}",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def trained(train_file: Path, tiny_backbone_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    run_training(_config(train_file, tiny_backbone_dir, out))
    return out


def test_train_writes_best_last_metrics_and_card(trained: Path) -> None:
    for name in ("model-best", "model-last"):
        d = trained / name
        assert (d / "calmfirst_config.json").is_file()
        assert (d / "calmfirst_heads.safetensors").is_file()
        assert "## Training data" in (d / "README.md").read_text(encoding="utf-8")
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["test"]["n"] == sum(1 for r in fixture_messages() if r["split"] == "test") * 2
    assert len(metrics["history"]) == 2
    assert "per_script" in metrics["test"]
    cfg = json.loads((trained / "model-best" / "calmfirst_config.json").read_text())
    assert cfg["training"]["hyperparameters"]["epochs"] == 2


def test_train_is_reproducible_with_a_seed(
    train_file: Path, tiny_backbone_dir: Path, tmp_path: Path, trained: Path
) -> None:
    run_training(_config(train_file, tiny_backbone_dir, tmp_path / "again"))
    texts = [m["text"] for m in fixture_messages()]
    a = CalmFirstModel.from_pretrained(trained / "model-last").predict_logits(texts)
    b = CalmFirstModel.from_pretrained(tmp_path / "again" / "model-last").predict_logits(texts)
    for key in a:
        assert (a[key] - b[key]).abs().max().item() < 1e-5, key


def test_train_continue_from_saved_model(
    train_file: Path, tiny_backbone_dir: Path, trained: Path, tmp_path: Path
) -> None:
    before = CalmFirstModel.from_pretrained(trained / "model-last")
    cfg = _config(
        train_file,
        tiny_backbone_dir,
        tmp_path / "cont",
        f"model.init_from={trained / 'model-last'}",
        "epochs=1",
        "model.max_length=64",  # the first run read 48 tokens: the continued one reads what this config says
    )
    run_training(cfg)
    after = CalmFirstModel.from_pretrained(tmp_path / "cont" / "model-last")
    assert after.config.complaint_types == before.config.complaint_types
    assert after.config.backbone == before.config.backbone
    assert before.config.max_length == 48 and after.config.max_length == 64
    assert after.tokenize(["很" * 100])["input_ids"].shape[1] == 64
    texts = [m["text"] for m in fixture_messages()]
    la, lb = before.predict_logits(texts), after.predict_logits(texts)
    assert (la["anger_logits"] - lb["anger_logits"]).abs().max().item() > 1e-4  # it really trained further


def test_train_bad_label_names_row_and_value(tiny_backbone_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    with bad.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["content", "anger", "kind", "threat"])
        w.writerow(["等太久了", "1", "delivery", "false"])
        w.writerow(["太扯了吧", "5", "billing", "false"])
    cfg = load_config(
        None,
        [
            f'data.sources=[{{"path": "{bad}", "columns": {{"text": "content", "anger_level": "anger", "complaint_type": "kind"}}}}]',
            f"model.backbone={tiny_backbone_dir}",
            f"output_dir={tmp_path / 'o'}",
        ],
    )
    with pytest.raises(DataError, match=r"row 2.*anger_level.*'5'"):
        run_training(cfg)


def test_training_csv_with_a_broken_quote_is_an_error_naming_its_line(tmp_path: Path) -> None:
    """The csv module would read every row after an unclosed quote into one text: rows lost without a word."""
    from training.config import DataSource
    from training.data import load_source

    bad = tmp_path / "quote.csv"
    rows = "".join(f"還好{i},0,none,false\n" for i in range(50))
    bad.write_text('text,anger_level,complaint_type,threat\n"等太久了,1,delivery,false\n' + rows, encoding="utf-8")
    with pytest.raises(DataError, match=r"quote.csv:2: .*quoted field opened on line 2"):
        load_source(DataSource(path=str(bad)))
    good = tmp_path / "good.csv"
    good.write_text(
        'text,anger_level,complaint_type,threat\n"兩行\n的文字",1,delivery,false\n' + rows, encoding="utf-8"
    )
    assert len(load_source(DataSource(path=str(good)))) == 51


def test_auto_splits_depend_on_the_text_not_on_how_the_path_is_spelt(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The split of a row without one was hashed from the path as given: the same file named by an absolute and a
    relative path put 26 of 80 rows in another split (train rows evaluated as test). Found by an outside walkthrough."""
    from training.config import DataSource
    from training.data import load_source

    rows = [f"第{i}號訂單還沒到，怎麼回事,0,delivery,false\n" for i in range(200)] + [
        "第7號訂單還沒到，怎麼回事,1,delivery,false\n"
    ]
    data = tmp_path / "nosplit.csv"
    data.write_text("text,anger_level,complaint_type,threat\n" + "".join(rows), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    spellings = [str(data), "nosplit.csv", "./nosplit.csv"]
    splits = [[e.split for e in load_source(DataSource(path=p))] for p in spellings]
    assert splits[0] == splits[1] == splits[2]
    assert {"train", "dev", "test"} <= set(splits[0])
    assert splits[0][7] == splits[0][200]  # the duplicate text sits with its twin


def test_a_continued_model_refuses_settings_it_cannot_take(trained: Path, tmp_path: Path) -> None:
    """model.lora.r=8 on a config that continues a model was ignored silently while the card printed r=8
    (found by an outside walkthrough): now an error naming the key; model.lora=null (full fine-tuning) stays."""
    from training.run import build_model

    base = [f"model.init_from={trained / 'model-best'}", f"output_dir={tmp_path / 'o'}"]
    for override, key in (("model.lora.r=8", "model.lora.r=8"), ("model.head_dropout=0.5", "model.head_dropout=0.5")):
        with pytest.raises(ConfigError, match=re.escape(key) + r": the model it continues"):
            build_model(load_config(None, [*base, override]))
    build_model(load_config(None, base))  # its own settings (the defaults here) are fine
    build_model(load_config(None, [*base, "model.lora=null"]))


def test_split_settings_that_select_nothing_usable_are_errors_before_the_model_loads(
    train_file: Path, tmp_path: Path
) -> None:
    """A misspelt data.eval_split ran without dev (no best epoch, no calibration), silently; an anger-only source
    crashed after training (KeyError) and saved nothing. Found by an outside walkthrough."""
    base = [f'data.sources=[{{"path": "{train_file}", "split": "column"}}]', "model.backbone=/nonexistent"]
    for override, message in (
        ("data.eval_split=validation", r"data.eval_split='validation': no record is in that split"),
        ('data.train_splits=["training"]', r"data.train_splits=\['training'\]: no record is in them"),
    ):
        with pytest.raises(ConfigError, match=message):  # raised before /nonexistent is loaded
            run_training(load_config(None, [*base, override, f"output_dir={tmp_path / 'o'}"]))
    anger_only = f'data.sources=[{{"path": "{train_file}", "split": "column", "tasks": ["anger_level"]}}]'
    with pytest.raises(ConfigError, match=r"data.eval_split='dev': none of its \d+ records has all three labels"):
        run_training(load_config(None, [anger_only, "model.backbone=/nonexistent", f"output_dir={tmp_path / 'o'}"]))


def test_max_steps_beyond_one_epoch_reads_the_data_again(
    train_file: Path, tiny_backbone_dir: Path, tmp_path: Path
) -> None:
    """It stopped at the end of the epoch while the schedule was built for max_steps."""
    result = run_training(_config(train_file, tiny_backbone_dir, tmp_path / "o", "epochs=1", "max_steps=9"))
    assert [h["step"] for h in result.history][-1] == 9 and len(result.history) > 1


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "types.jsonl",
            '{"text": "好慢", "anger_level": 1, "complaint_type": "delivery", "threat": false, "types": "[billing"}\n',
            r"row 1.*types is not a valid JSON list",
        ),
        ("array.jsonl", '["好慢", 1]\n', r"array.jsonl:1: expected a JSON object, got list"),
        (
            "ctx.jsonl",
            '{"text": "還是不行", "anger_level": 1, "complaint_type": "service_quality", "threat": false, '
            '"context": [["customer", "你好", "x"]]}\n',
            r"row 1.*context must be a list of \[role, text\] pairs",
        ),
    ],
)
def test_bad_training_rows_are_errors_naming_file_and_row(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    """Each was a Python traceback (found by an outside walkthrough)."""
    from training.config import DataSource
    from training.data import load_source

    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_source(DataSource(path=str(path)))


def test_context_objects_gbk_files_and_bad_configs(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from training.config import DataSource
    from training.data import load_source

    row = {"text": "還是不行", "anger_level": 1, "complaint_type": "service_quality", "threat": False}
    ok = tmp_path / "objects.jsonl"
    ok.write_text(json.dumps({**row, "context": [{"role": "customer", "text": "帳單錯了"}]}) + "\n", encoding="utf-8")
    assert load_source(DataSource(path=str(ok)))[0].context == [("customer", "帳單錯了")]
    gbk = tmp_path / "gbk.csv"
    gbk.write_bytes("text,anger_level,complaint_type,threat\n太慢了,1,delivery,false\n".encode("gbk"))
    with pytest.raises(DataError, match=r"gbk.csv: not UTF-8 text"):
        load_source(DataSource(path=str(gbk)))
    bad_yaml = tmp_path / "c.yaml"
    bad_yaml.write_text("data: [unclosed\n", encoding="utf-8")
    assert main(["train", str(bad_yaml)]) == 2
    assert "c.yaml: not valid YAML" in capsys.readouterr().err
    assert main(["evaluate", "--model", "model/default", str(ok), "--columns", "{bad"]) == 2
    assert "--columns: not valid JSON" in capsys.readouterr().err


def test_a_users_rows_without_a_region_are_not_called_mainland(tmp_path: Path) -> None:
    """Every region-less row of a user's file, Traditional ones too, was counted under "real cn"."""
    from training.breakdown import gold_record, groups
    from training.config import DataSource
    from training.data import load_source

    path = tmp_path / "mine.csv"
    path.write_text(
        "text,anger_level,complaint_type,threat,place\n"
        "你們的客服態度很差,2,staff_attitude,false,\n"
        "你们的客服态度很差,2,staff_attitude,false,\n"
        "個客服好差,2,staff_attitude,false,hk\n",
        encoding="utf-8",
    )
    examples = load_source(DataSource(path=str(path), columns={"region": "place"}))
    found = groups([gold_record(e) for e in examples])
    assert found["real hk"] == [2] and "real cn" not in found and "real tw" not in found
    assert found["real hant"] == [0, 2] and found["real hans"] == [1]
    path.write_text("text,anger_level,complaint_type,threat,region\n好慢,1,delivery,false,taiwan\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"row 1.*region must be tw, hk or cn, got 'taiwan'"):
        load_source(DataSource(path=str(path)))


def test_train_evaluate_cli_reports(trained: Path, train_file: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    rc = main(
        [
            "evaluate",
            "--model",
            str(trained / "model-best"),
            str(train_file),
            "--split",
            "test",
            "--fit-temperature-on",
            "dev",
            "--report-dir",
            str(tmp_path / "rep"),
        ]
    )
    assert rc == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["data"]["n"] == 2 * sum(r["split"] == "test" for r in fixture_messages()) > 0  # both copies
    fitted_on = metrics["calibration"]["n_by_script"]
    assert sum(fitted_on.values()) == 2 * sum(r["split"] == "dev" for r in fixture_messages())  # dev, not test
    for key in ("anger_qwk", "calm_first_f1", "type_macro_f1", "threat_f1", "calm_first_ece", "per_script"):
        assert key in metrics
    report = (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")
    assert "Complaint-type confusion" in report
    assert (tmp_path / "rep" / "report.png").stat().st_size > 1000


def test_train_evaluate_function_matches_cli(trained: Path, train_file: Path) -> None:
    m = run_evaluation(str(trained / "model-best"), str(train_file), split="all")
    assert m["n"] == 40
    # the records' fingerprint (calmfirst compare checks it): the same records give it, other records do not
    dev = run_evaluation(str(trained / "model-best"), str(train_file), split="dev", contrast=False)
    assert len(m["data"]["records"]) == 16 and m["data"]["records"] != dev["data"]["records"]
    assert (
        run_evaluation(str(trained / "model-best"), str(train_file), split="dev", contrast=False)["data"] == dev["data"]
    )


@pytest.mark.slow
def test_train_two_processes_gloo(train_file: Path, tiny_backbone_dir: Path, tmp_path: Path) -> None:
    """The same command under torchrun with 2 CPU processes (gloo), no code changes."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29533",
        "-m",
        "service.cli",
        "-v",
        "train",
        "training/configs/default.yaml",
        "model.init_from=null",  # the shipped recipe continues model/v24, whose backbone is not the tiny one
        "model.max_length=128",  # the shipped recipe reads 256 tokens; the tiny backbone has 128 positions
        "--output",
        str(tmp_path / "ddp"),
        f'data.sources=[{{"path": "{train_file}", "split": "column"}}]',
        f"model.backbone={tiny_backbone_dir}",
        "model.lora.r=4",
        "model.max_length=48",
        "epochs=1",
        "batch_size=8",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "ddp" / "model-best" / "calmfirst_config.json").is_file()
    assert "2 process(es)" in proc.stderr  # the trainer's own count of ranks


def test_a_bad_value_names_the_files_line_as_parse_errors_do(tmp_path: Path) -> None:
    """Value errors said "row N" (the data row) where parse errors said "path:LINE" (an outside walkthrough)."""
    from training.config import DataSource
    from training.data import load_source

    path = tmp_path / "two.jsonl"
    good = {"text": "好慢", "anger_level": 1, "complaint_type": "delivery", "threat": False}
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "anger_level": 7}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"two.jsonl:3 \(row 2\): .*anger_level"):
        load_source(DataSource(path=str(path)))
