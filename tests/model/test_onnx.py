"""The ONNX Runtime path on the tiny model: agreement with PyTorch, the export cache, the fallbacks."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import model.onnx.cache as onnx_cache
import model.onnx.export as onnx_export
from data.samples import SAMPLE_MESSAGES
from model.classifier import CalmFirstModel
from model.loading import load_model
from model.onnx import (
    EXPORT_SUBDIR,
    META_FILE,
    OnnxCalmFirstModel,
    export_key,
    find_export,
)
from tests.conftest import build_tiny_model, copy_model

TEXTS = list(SAMPLE_MESSAGES[:7])


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the tiny model: these tests write exports next to it."""
    path = tmp_path_factory.mktemp("onnx") / "model"
    copy_model(tiny_model_dir, path)
    return path


@pytest.fixture(scope="module")
def torch_model(model_dir: Path) -> CalmFirstModel:
    return CalmFirstModel.from_pretrained(model_dir, merge_adapters=True)


@pytest.fixture(scope="module")
def int8_model(model_dir: Path) -> OnnxCalmFirstModel:
    model = load_model(model_dir, backend="onnx", quantize=True, threads=1)
    assert isinstance(model, OnnxCalmFirstModel)
    return model


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert set(a) == set(b)
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def test_onnx_fp32_export_matches_torch(model_dir: Path, torch_model: CalmFirstModel) -> None:
    fp32 = load_model(model_dir, backend="onnx", quantize=False, threads=1)
    assert isinstance(fp32, OnnxCalmFirstModel) and not fp32.quantized
    assert fp32.encode(TEXTS[:1])[0] == torch_model.tokenize(TEXTS[:1])["input_ids"][0].tolist()
    assert _max_diff(torch_model.logits(TEXTS, batch_size=3), fp32.logits(TEXTS, batch_size=3)) < 1e-4


def test_onnx_int8_agrees_with_torch_within_tolerance(int8_model: OnnxCalmFirstModel, torch_model) -> None:  # type: ignore[no-untyped-def]
    assert int8_model.quantized and int8_model.export_meta["embedding"].startswith("int8")
    assert _max_diff(torch_model.logits(TEXTS), int8_model.logits(TEXTS)) < 0.05
    for a, b in zip(torch_model.predict(TEXTS), int8_model.predict(TEXTS), strict=True):
        assert a.anger_probs == pytest.approx(b.anger_probs, abs=0.01)
        assert a.type_scores == pytest.approx(b.type_scores, abs=0.01)
        assert a.threat_score == pytest.approx(b.threat_score, abs=0.01)


def test_onnx_predict_restores_input_order_across_length_buckets(int8_model: OnnxCalmFirstModel) -> None:
    texts = TEXTS * 3
    batched = int8_model.logits(texts, batch_size=2)
    for i, t in enumerate(texts[: len(TEXTS)]):
        alone = int8_model.logits([t])
        # int8 activations are quantized per batch, so batch-mates move scores a little, never the order
        assert float(np.abs(batched["anger_logits"][i] - alone["anger_logits"][0]).max()) < 0.02
    one = int8_model.predict("退款")
    assert one.complaint_type == int8_model.predict(["退款"])[0].complaint_type
    assert int8_model.predict([]) == [] and int8_model.logits([]) == {}
    with pytest.raises(TypeError, match="text 1"):
        int8_model.predict(["ok", 3])


def test_onnx_cache_is_reused_without_rebuilding(model_dir: Path, int8_model, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def no_build(*a, **k):  # type: ignore[no-untyped-def]
        raise AssertionError("the cached export should have been used")

    monkeypatch.setattr(onnx_export, "build_export", no_build)
    again = load_model(model_dir, backend="onnx", threads=1)
    assert isinstance(again, OnnxCalmFirstModel)
    assert again.export_dir == int8_model.export_dir
    assert again.export_dir.parent == model_dir / EXPORT_SUBDIR


def test_onnx_cache_rebuilt_when_weights_change(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "model"
    copy_model(tiny_model_dir, path)
    first = load_model(path, threads=1)
    assert isinstance(first, OnnxCalmFirstModel)
    key = export_key(path, quantize=True)
    build_tiny_model(seed=7).save_pretrained(path)  # new weights in the same folder
    assert export_key(path, quantize=True) != key
    assert find_export(path, export_key(path, quantize=True)) is None
    second = load_model(path, threads=1)
    assert isinstance(second, OnnxCalmFirstModel) and second.export_dir != first.export_dir
    assert not first.export_dir.exists()  # the stale export of this folder is removed
    fresh = CalmFirstModel.from_pretrained(path, merge_adapters=True)
    assert _max_diff(fresh.logits(TEXTS), second.logits(TEXTS)) < 0.05
    assert json.loads((second.export_dir / META_FILE).read_text())["key"] == export_key(path, quantize=True)


def test_onnx_readonly_model_folder_uses_user_cache(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "model"
    copy_model(tiny_model_dir, path)
    monkeypatch.setenv("CALMFIRST_CACHE", str(tmp_path / "cache"))
    real = onnx_cache._writable
    monkeypatch.setattr(onnx_cache, "_writable", lambda p: p.parent != path and real(p))
    model = load_model(path, threads=1)
    assert isinstance(model, OnnxCalmFirstModel)
    assert model.export_dir.parent == tmp_path / "cache" / "onnx"
    assert not (path / EXPORT_SUBDIR).exists()


def test_onnx_falls_back_to_torch_without_onnxruntime(model_dir: Path, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    with caplog.at_level(logging.WARNING, logger="model.onnx"):
        model = load_model(model_dir, backend="auto")
    assert isinstance(model, CalmFirstModel)
    assert "onnxruntime is not installed" in caplog.text


def test_onnx_falls_back_to_torch_when_export_fails(tiny_model_dir: Path, tmp_path: Path, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "model"
    copy_model(tiny_model_dir, path)

    def broken(*a, **k):  # type: ignore[no-untyped-def]
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(onnx_export, "build_export", broken)
    with caplog.at_level(logging.WARNING, logger="model.onnx"):
        model = load_model(path, backend="onnx")
    assert isinstance(model, CalmFirstModel)
    assert "exporter exploded" in caplog.text and "falling back to PyTorch" in caplog.text
    assert not any(p.name.startswith(".tmp") for p in (path / EXPORT_SUBDIR).iterdir())


def test_onnx_load_model_backend_choice(model_dir: Path) -> None:
    assert isinstance(load_model(model_dir, backend="torch"), CalmFirstModel)
    with pytest.raises(ValueError, match="backend"):
        load_model(model_dir, backend="tensorrt")
    with pytest.raises(FileNotFoundError, match="not a CalmFirst model"):
        load_model(model_dir.parent)


def test_onnx_analyzer_scores_a_file_in_input_order(int8_model: OnnxCalmFirstModel, tmp_path: Path) -> None:
    from service.analyzer import Analyzer
    from service.score import score_file

    analyzer = Analyzer(int8_model, batch_size=2, microbatch_max_size=1)
    src = tmp_path / "in.jsonl"
    rows = [{"id": f"m{i}", "text": t} for i, t in enumerate(TEXTS * 2)]
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = io.StringIO()
    report = score_file(analyzer, str(src), out, chunk_size=5, progress=False)
    results = [json.loads(line) for line in out.getvalue().splitlines()]
    assert report.scored == len(rows)
    assert [r["id"] for r in results] == [r["id"] for r in rows]
    assert results[0]["model"] == {"name": "tiny", "version": "0.0.1"}
    # each row is its own text's result (int8 activations are scaled per call: a small tolerance)
    alone = [analyzer.analyze([t])[0].anger.score for t in TEXTS]
    got = [r["anger"]["score"] for r in results]
    assert got == pytest.approx(alone * 2, abs=0.02)
    assert max(alone) - min(alone) > 0.04  # the texts score apart, so a swapped row would show


def test_onnx_batches_split_where_padding_would_waste(int8_model: OnnxCalmFirstModel) -> None:
    ids = [[1] * n for n in (30, 5, 6, 31, 120, 7, 29, 118)]
    batches = int8_model.batches(ids, batch_size=3)
    assert sorted(i for b in batches for i in b) == list(range(len(ids)))
    assert [sorted(len(ids[i]) for i in b) for b in batches] == [[5, 6, 7], [29, 30, 31], [118, 120]]
    assert all(len(b) <= 3 for b in int8_model.batches(ids * 3, batch_size=3))


@pytest.mark.parametrize("agent", ["tfidf", "e5-heads"])
def test_onnx_serving_from_a_cached_export_never_imports_torch(  # type: ignore[no-untyped-def]
    model_dir: Path, int8_model, agent: str, tiny_agent_model_dir: Path, tmp_path: Path
) -> None:
    """The whole serving path (app, lifespan, ONNX model, agent-turn detector, requests) without PyTorch:
    with the TF-IDF detector, and with the agent-turn model reading turns through its cached ONNX encoder."""
    import os
    import subprocess

    env = dict(os.environ, CALMFIRST_AGENT_MODEL="tfidf")
    if agent == "e5-heads":
        from model.onnx.encoder import ensure_encoder_export
        from service.routing.agent_model import _encoder_backbone

        backbone = _encoder_backbone(json.loads((tiny_agent_model_dir / "agent_model.json").read_text())["encoder"])
        ensure_encoder_export(backbone, cache=tmp_path / "onnx-encoder")  # the first start's export (PyTorch)
        env |= {"CALMFIRST_AGENT_MODEL": str(tiny_agent_model_dir), "CALMFIRST_CACHE": str(tmp_path)}
    code = f"""
import json, sys
from fastapi.testclient import TestClient
from service.api import create_app
from service.settings import Settings
app = create_app(Settings(model_path={str(model_dir)!r}, backend="onnx", torch_threads=1))
turns = [{{"role": "customer", "text": "退款呢"}}, {{"role": "agent", "text": "非常抱歉，麻煩提供訂單號碼"}}]
with TestClient(app) as c:
    r = c.post("/v1/analyze", json={{"text": "為什麼7號還要算錢?", "explain": True}})
    conv = c.post("/v1/conversations/analyze", json={{"turns": turns}})
    backend = app.state.analyzer.model.backend
    detector = app.state.conversations.detector
print(json.dumps({{"status": [r.status_code, conv.status_code], "backend": backend,
                  "detector": type(detector).__name__,
                  "encoder": type(getattr(detector, "encoder", None)).__name__,
                  "torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    detector = {"tfidf": ["AgentStepDetector", "NoneType"], "e5-heads": ["AgentTurnModel", "OnnxSentenceEncoder"]}
    assert [out.pop("detector"), out.pop("encoder")] == detector[agent]
    assert out == {"status": [200, 200], "backend": "onnx", "torch": []}


def test_onnx_implements_the_scoring_interface(int8_model: OnnxCalmFirstModel) -> None:
    from model.scores import ScoringModel

    assert isinstance(int8_model, ScoringModel) and int8_model.backend == "onnx"


def _config_entry(opts: object, key: str) -> str | None:
    try:
        return str(opts.get_session_config_entry(key))  # type: ignore[attr-defined]
    except RuntimeError:  # onnxruntime: no such entry
        return None


def test_onnx_spin_modes_set_the_session_and_predict_alike(model_dir: Path) -> None:
    """``forward`` spins only inside a run; ``never`` never spins; all three score the same."""
    entries = ("session.intra_op.allow_spinning", "session.force_spinning_stop")
    seen = {}
    reference = [p.anger_score for p in load_model(model_dir, backend="onnx", threads=1).predict(TEXTS)]
    for spin in ("forward", "never", "always"):
        model = load_model(model_dir, backend="onnx", threads=2, spin=spin)
        assert isinstance(model, OnnxCalmFirstModel)
        opts = model.session.get_session_options()
        seen[spin] = tuple(_config_entry(opts, k) for k in entries)
        seen_scores = [p.anger_score for p in model.predict(TEXTS)]
        assert seen_scores == pytest.approx(reference, abs=1e-4)
    assert seen == {"forward": ("1", "1"), "never": ("0", None), "always": ("1", None)}
    with pytest.raises(ValueError, match="spin must be one of"):
        load_model(model_dir, backend="onnx", spin="sometimes")  # an error, not a fall-back to PyTorch


def test_onnx_int8_forward_batch_is_capped(int8_model: OnnxCalmFirstModel, model_dir: Path) -> None:
    """int8 activations are scaled per forward batch: a larger requested batch runs as passes of at most 32, so
    its scores are those of batch 32; an fp32 export, whose scores do not depend on batch-mates, is not capped."""
    from model.onnx.runtime import MAX_INT8_FORWARD_BATCH

    ids = [[1] * 10 for _ in range(100)]
    sizes = [len(b) for b in int8_model.batches(ids, batch_size=64)]
    assert max(sizes) == MAX_INT8_FORWARD_BATCH == 32 and sum(sizes) == 100
    assert max(len(b) for b in int8_model.batches(ids, batch_size=8)) == 8
    # 70 different texts of one token count: one length bucket, so only the cap splits it (uncapped, batch 64
    # and batch 32 differ here by ~2e-5 in the logits)
    words = ["退款", "客服", "订单", "发票", "快递", "手机", "网络", "套餐", "账单", "经理"]
    texts = [f"{words[i % 10]}{words[i // 10]}问题什么时候处理" for i in range(70)]
    assert len({len(t) for t in int8_model.encode(texts)}) == 1
    by64, by32 = int8_model.logits(texts, batch_size=64), int8_model.logits(texts, batch_size=32)
    assert all(np.array_equal(by64[k], by32[k]) for k in by32)
    fp32 = load_model(model_dir, backend="onnx", quantize=False, threads=1)
    assert isinstance(fp32, OnnxCalmFirstModel)
    assert not fp32.quantized and max(len(b) for b in fp32.batches(ids, batch_size=64)) == 64
