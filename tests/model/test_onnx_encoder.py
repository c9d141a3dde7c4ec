"""The frozen sentence encoder through ONNX Runtime: the same embeddings as PyTorch, cached, no PyTorch to load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from model.onnx.encoder import META, OnnxSentenceEncoder, ensure_encoder_export

TEXTS = [
    "非常抱歉造成您的困擾，我現在馬上幫您查詢",
    "请问您的订单号是多少?",
    "好的",
    "您是說包裹到現在還沒收到，對嗎？",
]


def test_encoder_export_matches_torch_and_is_cached(tiny_backbone_dir: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = ensure_encoder_export(str(tiny_backbone_dir), cache=tmp_path)
    assert (folder / META).is_file()
    assert ensure_encoder_export(str(tiny_backbone_dir), cache=tmp_path) == folder  # built once
    enc = OnnxSentenceEncoder.load(folder, threads=1)
    got = enc.encode(TEXTS)
    assert got.shape == (len(TEXTS), enc.dim) and np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
    assert enc.encode([]).shape == (0, enc.dim)

    module = AutoModel.from_pretrained(str(tiny_backbone_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_backbone_dir))
    with torch.no_grad():
        b = tok([enc.prefix + t for t in TEXTS], padding=True, return_tensors="pt")
        hidden = module(**b).last_hidden_state
        mask = b["attention_mask"].unsqueeze(-1).float()
        ref = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    assert (ref * got).sum(1).min() > 0.98


def test_stale_export_of_the_backbone_removed(tiny_backbone_dir: Path, tmp_path: Path) -> None:
    import json

    stale, other = tmp_path / ("0" * 20), tmp_path / ("1" * 20)
    for folder, backbone in ((stale, str(tiny_backbone_dir)), (other, "another-backbone")):
        folder.mkdir()
        (folder / META).write_text(json.dumps({"backbone": backbone}))
    folder = ensure_encoder_export(str(tiny_backbone_dir), cache=tmp_path)
    assert folder.is_dir() and not stale.exists() and other.is_dir()
