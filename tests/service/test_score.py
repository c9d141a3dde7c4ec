"""``calmfirst score -o FILE`` killed with SIGKILL mid-run (a real process): nothing that looks complete is
left, and running it again finishes the job, without scoring again what was written, byte for byte as a
clean run.

Only the killed run is a separate process (a Python start with PyTorch costs seconds); the clean run and
the re-run go through the same console entry point in this process, with the same settings (PyTorch,
one thread), so the numbers are the same.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.cli import main
from tests.conftest import fixture_messages

N_MESSAGES = 3000
CHUNK = 100

ENV = {"CALMFIRST_BACKEND": "torch", "CALMFIRST_TORCH_THREADS": "1"}


@pytest.fixture()
def cli_env(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The tiny model on PyTorch with one thread, here and in the child process: the same numbers."""
    import torch

    threads = torch.get_num_threads()
    env = {**ENV, "CALMFIRST_MODEL_PATH": str(tiny_model_dir)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield {**os.environ, **env, "PYTHONWARNINGS": "ignore"}
    torch.set_num_threads(threads)


def calmfirst(*args: str) -> list[str]:
    return [sys.executable, "-m", "service.cli", *args]


def kill_when(cmd: list[str], env: dict[str, str], ready: Callable[[], bool], *, timeout: float = 300) -> None:
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` holds (it must not finish first)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"finished before it could be killed: {proc.stderr.read().decode()[-800:]}")  # type: ignore[union-attr]
            if time.time() > deadline:
                pytest.fail("never got far enough to be killed")
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def lines_in(path: Path) -> int:
    try:
        return len(path.read_bytes().splitlines())
    except OSError:
        return 0


def test_score_sigkill_then_rerun_equals_clean_run(
    tmp_path: Path, cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    texts = [m["text"] for m in fixture_messages()]
    src = tmp_path / "in.jsonl"
    with open(src, "w", encoding="utf-8") as f:
        for i in range(N_MESSAGES):
            f.write(
                json.dumps({"id": f"m{i}", "text": texts[i % len(texts)] + "!" * (i % 5)}, ensure_ascii=False) + "\n"
            )
            if i == 250:
                f.write("{not json\n")
    args = ["--chunk", str(CHUNK), "--no-progress"]
    out = tmp_path / "out.jsonl"
    partial, progress = tmp_path / "out.jsonl.partial", tmp_path / "out.jsonl.progress"

    kill_when(calmfirst("score", str(src), "-o", str(out), *args), cli_env, lambda: lines_in(progress) >= 1 + 4)
    assert not out.exists(), "a killed run left a file that looks complete"
    assert lines_in(partial) >= 4 * CHUNK

    assert main(["score", str(src), "-o", str(out), *args]) == 0
    err = capsys.readouterr().err
    assert "line 252: not valid JSON" in err  # still reported
    summary = err.strip().splitlines()[-1]
    scored, done = int(summary.split(": ")[1].split()[0]), int(summary.split(", ")[-1].split()[0])
    assert done >= 4 * CHUNK and done % CHUNK == 0 and scored + done == N_MESSAGES, summary
    assert not partial.exists() and not progress.exists()

    clean = tmp_path / "clean.jsonl"
    assert main(["score", str(src), "-o", str(clean), *args]) == 0
    assert out.read_bytes() == clean.read_bytes()
