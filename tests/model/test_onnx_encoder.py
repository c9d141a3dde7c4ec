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


def test_weights_moved_to_an_aligned_file_the_runtime_maps(tmp_path: Path) -> None:
    """Large initializers go to ``model.onnx.data`` at aligned offsets; the model gives the same output."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from model.onnx.encoder import WEIGHTS_FILE, externalize_weights

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((64, 300)).astype(np.float32)  # 76,800 bytes: moved at 4 KiB alignment
    w2 = rng.standard_normal((300, 2)).astype(np.float32)  # 2,400 bytes: stays in the graph
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    path = tmp_path / "model.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = rng.standard_normal((1, 64)).astype(np.float32)
    before = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    info = externalize_weights(path, align=4096)
    assert info["external_weights"]["tensors"] == 1
    proto = onnx.load(str(path), load_external_data=False)
    (moved,) = [t for t in proto.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    entries = {e.key: e.value for e in moved.external_data}
    assert moved.name == "w1" and entries["location"] == WEIGHTS_FILE and int(entries["offset"]) % 4096 == 0
    after = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.allclose(before, after)
