"""``--engine ray`` against the local engine, on a Ray started with ``ray start --head`` (stopped at the end).

One small cluster for the module (2 CPUs, a free port, its own temp folder), started and stopped by
process id; the tiny model with its ONNX export built once beforehand. Both engines run through the
console script's ``main`` so the comparison covers the command line too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("ray.data")
pytest.importorskip("onnxruntime")

from data.samples import SAMPLE_MESSAGES
from service.cli import main
from tests.conftest import copy_model

MESSAGES = [*SAMPLE_MESSAGES[:7], "再不處理我就找消保官"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model.onnx import ensure_export

    path = tmp_path_factory.mktemp("ray") / "model"
    copy_model(tiny_model_dir, path)
    ensure_export(path)  # once, here: the actors then only load it
    return path


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """``ray start --head --block`` in its own process group; the address to join. Stopped by its pid."""
    ray_bin = Path(sys.executable).parent / "ray"
    if not ray_bin.exists():
        pytest.skip("no ray command next to this Python")
    temp = tempfile.mkdtemp(prefix="cfray-", dir="/tmp")  # short: Ray's socket paths live under it
    port = _free_port()
    cmd = [
        str(ray_bin), "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
        "--node-ip-address=127.0.0.1",
        "--disable-usage-stats", f"--temp-dir={temp}",
        f"--node-manager-port={_free_port()}", f"--object-manager-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}", f"--metrics-export-port={_free_port()}",
        "--object-store-memory=200000000",
    ]  # fmt: skip
    # no token auth on this throwaway loopback cluster, for it and for this process (the driver): Ray 2.60
    # would otherwise switch it on when an earlier local ray.init() left a token in ~/.ray
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_AUTH_MODE", "disabled")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    log = open(Path(temp) / "head.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            assert proc.poll() is None, (Path(temp) / "head.log").read_text()[-3000:]
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        else:
            pytest.fail("ray head did not come up")
        yield address
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # --block: the head tears down what it started
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)
        mp.undo()


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def _skipped(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.endswith("(skipped)")]


def _same_results(local: list[dict], ray: list[dict]) -> None:
    assert [r["id"] for r in ray] == [r["id"] for r in local]
    for a, b in zip(local, ray, strict=True):
        assert b["anger"]["level"] == a["anger"]["level"]
        assert b["complaint"]["type"] == a["complaint"]["type"]
        assert b["threat"]["detected"] == a["threat"]["detected"]
        assert b["route"] == a["route"]
        assert b["anger"]["score"] == pytest.approx(a["anger"]["score"], abs=1e-3)
        assert b["threat"]["score"] == pytest.approx(a["threat"]["score"], abs=1e-3)
        for t, v in a["complaint"]["scores"].items():
            assert b["complaint"]["scores"][t] == pytest.approx(v, abs=1e-3)


def test_ray_score_matches_local(
    ray_cluster: str, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    lines = [json.dumps({"id": f"m{i}", "text": t}, ensure_ascii=False) for i, t in enumerate(MESSAGES[:5])]
    lines.insert(2, "{not json")
    lines.insert(4, json.dumps({"id": "x", "text": ""}))
    (folder / "a.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "b.txt").write_text("\n".join(MESSAGES[5:]) + "\n", encoding="utf-8")
    base = ["score", str(folder), "--model", str(model_dir), "--no-progress", "--chunk", "3"]  # several chunks

    code, err_local = _run([*base, "-o", str(tmp_path / "local.jsonl")], capsys)
    assert code == 0
    code, err_ray = _run(
        [*base, "-o", str(tmp_path / "ray.jsonl"), "--engine", "ray", "--ray-address", ray_cluster], capsys
    )
    assert code == 0, err_ray[-3000:]
    local = [json.loads(x) for x in (tmp_path / "local.jsonl").read_text(encoding="utf-8").splitlines()]
    ray = [json.loads(x) for x in (tmp_path / "ray.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in local] == ["m0", "m1", "m2", "m3", "m4", "b.txt:0", "b.txt:1", "b.txt:2"]
    _same_results(local, ray)
    assert (
        _skipped(err_ray)
        == _skipped(err_local)
        == [
            f"{folder / 'a.jsonl'}: line 3: not valid JSON (Expecting property name enclosed in double quotes at column 2) (skipped)",
            f"{folder / 'a.jsonl'}: line 5: field 'text' missing or not a non-empty string (skipped)",
        ]
    )
    assert "8 scored, 2 skipped" in err_ray

    # CSV out, a glob in: the same bytes from both engines
    pattern = str(folder / "*.txt")
    _run(["score", pattern, "--model", str(model_dir), "--no-progress", "-o", str(tmp_path / "l.csv")], capsys)
    ray_args = ["--engine", "ray", "--ray-address", ray_cluster]
    _run(
        ["score", pattern, "--model", str(model_dir), "--no-progress", "-o", str(tmp_path / "r.csv"), *ray_args], capsys
    )
    assert (tmp_path / "r.csv").read_text(encoding="utf-8") == (tmp_path / "l.csv").read_text(encoding="utf-8")


def _conversations(n: int) -> list[str]:
    out = []
    for i in range(n):
        turns = [
            {"role": "customer", "text": MESSAGES[i % len(MESSAGES)]},
            {"role": "agent", "text": "非常抱歉造成您的困擾，我現在馬上幫您查詢"},
            {"role": "customer", "text": MESSAGES[(i + 3) % len(MESSAGES)]},
        ]
        out.append(json.dumps({"id": f"c{i}", "agent_id": f"a{i % 3}", "turns": turns}, ensure_ascii=False))
    return out


def test_ray_qa_matches_local_and_resumes(
    ray_cluster: str, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _conversations(10)
    lines.insert(3, '{"id": "bad", "turns": []}')
    src = tmp_path / "chats.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    base = ["qa", str(src), "--model", str(model_dir), "--no-progress", "--chunk", "4"]
    ray = ["--engine", "ray", "--ray-address", ray_cluster]

    code, err_local = _run([*base, "-o", str(tmp_path / "local")], capsys)
    assert code == 0
    code, err_ray = _run([*base, "-o", str(tmp_path / "ray"), *ray], capsys)
    assert code == 0, err_ray[-3000:]
    assert (
        _skipped(err_ray)
        == _skipped(err_local)
        == [f"{src}: line 4: field 'turns' missing or not a non-empty list (skipped)"]
    )

    def rows(folder: Path, name: str) -> list[dict]:
        return [json.loads(x) for x in (folder / name).read_text(encoding="utf-8").splitlines()]

    for name in ("conversations.jsonl", "turns.jsonl"):
        a, b = rows(tmp_path / "local", name), rows(tmp_path / "ray", name)
        assert [(r["conversation_id"], r.get("turn_index")) for r in b] == [
            (r["conversation_id"], r.get("turn_index")) for r in a
        ]
        for x, y in zip(a, b, strict=True):
            for key, v in x.items():
                if isinstance(v, float):
                    assert y[key] == pytest.approx(v, abs=1e-3), key
                else:
                    assert y[key] == v, key
    assert (tmp_path / "ray" / "agents.csv").read_text() == (tmp_path / "local" / "agents.csv").read_text()

    # resuming: cut the commit log after 3 conversations (and mid-line), run again on Ray
    log = tmp_path / "ray" / "conversations.jsonl"
    kept = log.read_text(encoding="utf-8").splitlines(keepends=True)
    log.write_text("".join(kept[:3]) + kept[3][:20], encoding="utf-8")
    code, err = _run([*base, "-o", str(tmp_path / "ray"), *ray], capsys)
    assert code == 0, err[-3000:]
    assert "3 already done" in err and "7 conversations scored" in err
    assert [r["conversation_id"] for r in rows(tmp_path / "ray", "conversations.jsonl")] == [
        r["conversation_id"] for r in rows(tmp_path / "local", "conversations.jsonl")
    ]
    assert len(rows(tmp_path / "ray", "turns.jsonl")) == len(rows(tmp_path / "local", "turns.jsonl"))


@pytest.mark.slow
def test_ray_score_starts_a_local_ray_without_address(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No ``--ray-address``: the command starts a local Ray for the run and stops it after."""
    import ray

    src = tmp_path / "m.txt"
    src.write_text("\n".join(MESSAGES) + "\n", encoding="utf-8")
    base = ["score", str(src), "--model", str(model_dir), "--no-progress"]
    assert _run([*base, "-o", str(tmp_path / "l.jsonl")], capsys)[0] == 0
    code, err = _run([*base, "-o", str(tmp_path / "r.jsonl"), "--engine", "ray"], capsys)
    assert code == 0, err[-3000:]
    assert not ray.is_initialized()
    local = [json.loads(x) for x in (tmp_path / "l.jsonl").read_text(encoding="utf-8").splitlines()]
    _same_results(local, [json.loads(x) for x in (tmp_path / "r.jsonl").read_text(encoding="utf-8").splitlines()])


def test_ray_qa_reads_agent_turns_with_the_detector_the_local_engine_uses(
    model_dir: Path, tiny_agent_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver's CALMFIRST_AGENT_MODEL travels to the actors (a worker of an existing cluster does not have
    the driver's environment): the e5 agent-turn model where the local engine would load it, TF-IDF where asked.
    Until 2026-12-05 the actors always read agent turns with TF-IDF."""
    from service.ray_engine import QAChunks, RayQAScorer
    from service.routing.agent_model import AgentTurnModel
    from service.routing.agent_steps import AgentStepDetector
    from service.settings import Settings

    monkeypatch.setenv("CALMFIRST_AGENT_MODEL", str(tiny_agent_model_dir))
    runner = RayQAScorer(Settings(), model_path=str(model_dir), keep_text=False, lang=None, cpus=1, options=None)  # type: ignore[arg-type]
    assert runner.kwargs["agent_model"] == str(tiny_agent_model_dir)
    settings = {"backend": "torch"}  # the tiny agent model's encoder through PyTorch: no export to build here
    actor = QAChunks(settings, str(model_dir), keep_text=False, lang=None, agent_model=runner.kwargs["agent_model"])
    assert isinstance(actor.conv_an.detector, AgentTurnModel)
    actor = QAChunks(settings, str(model_dir), keep_text=False, lang=None, agent_model="tfidf")
    assert isinstance(actor.conv_an.detector, AgentStepDetector)
