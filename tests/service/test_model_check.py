"""A model folder with a missing or corrupt file fails at start with a message naming the file; nothing
serves half-loaded."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from service.model_check import ModelFolderError, check_model_dir
from service.settings import Settings
from tests.conftest import copy_model


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garble_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8:40] = b"\x00\xff" * 16
    path.write_bytes(bytes(data))


def _pad(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"\x00" * 100)


def _huge_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:8] = (10**12).to_bytes(8, "little")
    path.write_bytes(bytes(data))


def _not_json(path: Path) -> None:
    path.write_text('{"name": "tiny", "vers', encoding="utf-8")


def _delete(path: Path) -> None:
    path.unlink()


CASES: list[tuple[str, str, Callable[[Path], None], str]] = [
    ("heads missing", "calmfirst_heads.safetensors", _delete, "missing"),
    ("heads truncated", "calmfirst_heads.safetensors", _truncate, "truncated"),
    ("heads header garbage", "calmfirst_heads.safetensors", _garble_header, "corrupt"),
    ("heads header length garbage", "calmfirst_heads.safetensors", _huge_header, "corrupt or truncated"),
    ("heads trailing bytes", "calmfirst_heads.safetensors", _pad, "trailing bytes"),
    ("config missing", "calmfirst_config.json", _delete, "missing"),
    ("config truncated", "calmfirst_config.json", _not_json, "not valid JSON"),
    ("backbone weights truncated", "backbone/model.safetensors", _truncate, "truncated"),
    ("backbone weights missing", "backbone/model.safetensors", _delete, "missing"),
    ("backbone config missing", "backbone/config.json", _delete, "missing"),
    ("tokenizer corrupt", "backbone/tokenizer.json", _not_json, "not valid JSON"),
]


@pytest.fixture()
def broken(tmp_path: Path, tiny_model_dir: Path) -> Callable[[str, Callable[[Path], None]], Path]:
    def make(file: str, damage: Callable[[Path], None]) -> Path:
        folder = tmp_path / "model"
        copy_model(tiny_model_dir, folder)
        damage(folder / file)
        return folder

    return make


def test_model_check_accepts_good_folders(tiny_model_dir: Path) -> None:
    assert check_model_dir(tiny_model_dir).name == "tiny"
    default = Path(__file__).resolve().parents[2] / "model" / "default"
    assert check_model_dir(default).name


@pytest.mark.parametrize(("name", "file", "damage", "problem"), CASES, ids=[c[0] for c in CASES])
def test_model_check_names_the_file(broken, name: str, file: str, damage, problem: str) -> None:  # type: ignore[no-untyped-def]
    folder = broken(file, damage)
    with pytest.raises(ModelFolderError) as info:
        check_model_dir(folder)
    assert str(info.value).startswith(str(folder / file)), str(info.value)
    assert problem in str(info.value)


def test_model_check_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match="no such model folder"):
        check_model_dir(tmp_path / "nowhere")


def test_model_check_runs_before_loading(broken) -> None:  # type: ignore[no-untyped-def]
    from service.analyzer import Analyzer

    folder = broken("calmfirst_heads.safetensors", _truncate)
    with pytest.raises(ModelFolderError, match=r"calmfirst_heads\.safetensors: truncated"):
        Analyzer.from_settings(Settings(model_path=folder, backend="torch"))


def test_model_check_app_never_starts_half_loaded(broken) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from service.api import create_app

    folder = broken("backbone/model.safetensors", _truncate)
    app = create_app(Settings(model_path=folder, backend="torch"))
    with pytest.raises(ModelFolderError, match=r"backbone/model\.safetensors: truncated"), TestClient(app):
        pass
    assert app.state.analyzer is None and app.state.conversations is None


def test_model_check_cli_score_and_qa_stop_with_the_file_named(broken, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from service.cli import main

    folder = broken("calmfirst_config.json", _not_json)
    src = tmp_path / "in.txt"
    src.write_text("你好\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["score", str(src), "-o", str(out), "--model", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"calmfirst score: model folder: {folder / 'calmfirst_config.json'}: not valid JSON" in err
    assert not out.exists() and not out.with_name("out.jsonl.partial").exists()
    conv = tmp_path / "c.jsonl"
    conv.write_text('{"id": 1, "turns": [{"role": "customer", "text": "你好"}]}\n', encoding="utf-8")
    assert main(["qa", str(conv), "-o", str(tmp_path / "qa"), "--model", str(folder)]) == 2
    assert "calmfirst_config.json: not valid JSON" in capsys.readouterr().err


def test_model_check_serve_refuses_to_start(broken) -> None:  # type: ignore[no-untyped-def]
    folder = broken("calmfirst_heads.safetensors", _delete)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--model", str(folder), "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"{folder / 'calmfirst_heads.safetensors'}: missing" in proc.stderr
    assert "Uvicorn running" not in proc.stderr and time.perf_counter() - started < 120
