"""``calmfirst qa`` killed with SIGKILL mid-run (a real process), then run again: the same result as a clean run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.cli import main
from service.routing.agent_steps import AgentStepDetector
from tests.service.qa.test_qa import CONVERSATIONS
from tests.service.test_score import calmfirst, cli_env, kill_when, lines_in

__all__ = ["cli_env"]  # the fixture, imported

N_CONVERSATIONS = 240
CHUNK = 8
OUTPUTS = ("conversations.jsonl", "turns.jsonl", "turns.csv", "conversations.csv", "agents.json", "agents.csv")


@pytest.fixture()
def one_detector(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both in-process runs share one agent-step detector (it takes seconds to build; it is deterministic)."""
    detector = AgentStepDetector.from_data()
    monkeypatch.setattr(AgentStepDetector, "from_data", classmethod(lambda cls, *a, **k: detector))


def test_qa_sigkill_then_rerun_equals_clean_run(
    tmp_path: Path, cli_env: dict[str, str], one_detector: None, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.jsonl"
    with open(src, "w", encoding="utf-8") as f:
        for i in range(N_CONVERSATIONS):
            conv = {**CONVERSATIONS[i % len(CONVERSATIONS)], "id": f"c{i}"}
            f.write(json.dumps(conv, ensure_ascii=False) + "\n")
    args = ["--chunk", str(CHUNK), "--no-progress"]
    out = tmp_path / "out"

    kill_when(
        calmfirst("qa", str(src), "-o", str(out), *args),
        cli_env,
        lambda: lines_in(out / "conversations.jsonl") >= 3 * CHUNK,
    )
    committed = lines_in(out / "conversations.jsonl")
    assert committed < N_CONVERSATIONS and not (out / "report.html").exists()

    assert main(["qa", str(src), "-o", str(out), *args]) == 0
    err = capsys.readouterr().err
    assert "already done" in err
    done = int(err.strip().splitlines()[-1].split("), ")[1].split()[0])
    assert done >= 3 * CHUNK, err

    clean = tmp_path / "clean"
    assert main(["qa", str(src), "-o", str(clean), *args]) == 0
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (clean / name).read_bytes(), name
    assert (out / "report.html").exists()
