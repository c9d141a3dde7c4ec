"""SmoothQuant in the int8 export (``model.onnx.quantize``) on the tiny model: the smoothed graph computes the
same function, the chosen FFN MatMuls run int8 and the rest MatMulNBits, calibration reads only training text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import onnx

import model.onnx.export as onnx_export
from data.loader import ANNOTATIONS_DIR, read_label_file
from data.schema import WRITTEN_SOURCE
from model.classifier import CalmFirstModel
from model.loading import load_model
from model.onnx import META_FILE, OnnxCalmFirstModel
from model.onnx.quantize import (
    CALIBRATION_TEXTS,
    activation_ranges,
    layer_index,
    quantizable_nodes,
    quantize_linear,
    smooth,
    smoothed_nodes,
)
from tests.conftest import copy_model


@pytest.fixture(scope="module")
def fused(tiny_model: CalmFirstModel, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The tiny model's fused fp32 graph, as the export quantizes it."""
    raw = tmp_path_factory.mktemp("fused") / "raw.onnx"
    onnx_export._torch_export(tiny_model, raw)
    cfg: Any = tiny_model.backbone.config
    proto, _ = onnx_export._fuse(raw, num_heads=int(cfg.num_attention_heads), hidden_size=int(cfg.hidden_size))
    return proto


@pytest.fixture(scope="module")
def feeds(tiny_model: CalmFirstModel) -> list[dict[str, np.ndarray]]:
    return onnx_export.calibration_inputs(tiny_model, onnx_export.calibration_texts(24))


def _copy(proto: Any) -> Any:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out


def _run(proto: Any, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.concatenate([o.ravel() for o in session.run(None, f)]) for f in feeds]


def test_smoothed_nodes_are_the_attention_every_ffn_in_and_the_upper_half_of_ffn_out(fused: Any) -> None:
    nodes = smoothed_nodes(fused)
    by_group = {g: quantizable_nodes(fused, (g,)) for g in ("attention", "attention_output", "ffn_in", "ffn_out")}
    assert len(by_group["attention"]) == 2  # the fused Attention nodes are not named by layer
    assert all(sorted(map(layer_index, by_group[g])) == [0, 1] for g in ("attention_output", "ffn_in", "ffn_out"))
    # the tiny model has 2 layers: ffn_out only from layer 1 (FFN_OUT_INT8_FROM = half the depth)
    expected = {n: g for g, ns in by_group.items() for n in ns if g != "ffn_out" or layer_index(n) == 1}
    assert nodes == expected


def test_smoothing_leaves_the_function_unchanged_and_flattens_the_channel_ranges(fused: Any, feeds: list) -> None:
    proto = _copy(fused)
    nodes = smoothed_nodes(proto)
    by_name = {n.name: n for n in proto.graph.node}
    inputs_before = [by_name[n].input[0] for n in nodes]
    before = activation_ranges(proto, inputs_before, feeds)
    meta = smooth(proto, nodes, feeds)
    assert meta["smoothquant"]["nodes"] == len(nodes) and meta["smoothquant"]["calibration_texts"] == len(feeds)
    by_name = {n.name: n for n in proto.graph.node}
    muls = [n for n in proto.graph.node if n.op_type == "Mul" and n.name.endswith("_smooth")]
    assert len(muls) == len(nodes)
    assert all(by_name[n].input[0] == n.replace("/", "_") + "_smooth_x" for n in nodes)
    # the same outputs (to float rounding): weights took exactly the scale the inputs gave up
    for a, b in zip(_run(fused, feeds), _run(proto, feeds), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
    # what int8 gains: each smoothed input's channels span a smaller range (largest / median channel)
    after = activation_ranges(proto, [by_name[n].input[0] for n in nodes], feeds)
    for x_before, n in zip(inputs_before, nodes, strict=True):
        spread = lambda r: float(r.max() / np.median(r))  # noqa: E731
        assert spread(after[by_name[n].input[0]]) < spread(before[x_before])


def test_smoothing_skips_a_weight_that_another_node_reads() -> None:
    """Scaling a shared weight's rows for one MatMul would change the other's product: such a MatMul is left alone."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "w")
    v = numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "v")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["a"], name="shared_1"),
            helper.make_node("MatMul", ["x", "w"], ["b"], name="shared_2"),
            helper.make_node("MatMul", ["x", "v"], ["c"], name="own"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in "abc"],
        [w, v],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    before = _copy(proto)
    feeds = [{"x": (rng.normal(size=(2, 4)) * [1, 1, 1, 40]).astype(np.float32)} for _ in range(4)]
    meta = smooth(proto, {"shared_1": "ffn_in", "own": "ffn_in"}, feeds)
    assert meta["smoothquant"]["nodes"] == 1 and meta["smoothquant"]["skipped_shared_weights"] == 1
    by_name = {n.name: n for n in proto.graph.node}
    assert list(by_name["shared_1"].input) == ["x", "w"] and by_name["own"].input[0] == "own_smooth_x"
    for a, b in zip(_run(before, feeds), _run(proto, feeds), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_without_calibration_the_whole_ffn_stays_matmulnbits(fused: Any, tmp_path: Path) -> None:
    """The agent-turn encoder's path: its heads were fitted on this recipe's embeddings."""
    meta = quantize_linear(_copy(fused), tmp_path / "model.onnx")
    assert "smoothquant" not in meta and meta["nbits_layers"] == 4
    ops = [n.op_type for n in onnx.load(str(tmp_path / "model.onnx")).graph.node]
    assert ops.count("MatMulNBits") == 4  # the FFN's, not the task heads'
    assert not [n for n in onnx.load(str(tmp_path / "model.onnx")).graph.node if n.name.endswith("_smooth")]


@pytest.fixture(scope="module")
def int8_export(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> OnnxCalmFirstModel:
    path = tmp_path_factory.mktemp("sq") / "model"
    copy_model(tiny_model_dir, path)
    model = load_model(path, backend="onnx", quantize=True, threads=1)
    assert isinstance(model, OnnxCalmFirstModel)
    return model


def test_int8_export_runs_the_smoothed_ffn_in_int8_and_the_rest_as_matmulnbits(int8_export) -> None:  # type: ignore[no-untyped-def]
    meta = json.loads((int8_export.export_dir / META_FILE).read_text())
    assert meta["smoothquant"]["calibration_texts"] == CALIBRATION_TEXTS
    assert meta["smoothquant"]["nodes"] == 7 and meta["nbits_layers"] == 1  # 2 x 3 + ffn_out of layer 1; layer 0's
    graph = onnx.load(str(int8_export.export_dir / "model.onnx"), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("MatMulNBits") == 1
    # every encoder projection runs quantized one way or the other; the task heads stay fp32
    assert not [n.name for n in graph.node if n.op_type == "MatMul" and "/encoder/" in n.name]
    assert sorted(n.name.split("/")[2] for n in graph.node if n.op_type == "MatMul") == [
        "anger_head",
        "multi_head",
        "threat_head",
        "type_head",
    ]
    assert sum(n.op_type == "Mul" and n.name.endswith("_smooth") for n in graph.node) == 7


def test_int8_export_with_smoothing_scores_like_pytorch(int8_export, tiny_model: CalmFirstModel) -> None:  # type: ignore[no-untyped-def]
    texts = [*onnx_export.calibration_texts(8), "垃圾服务，再也不来了", "請問退款要多久才會到帳？"]
    ref = tiny_model.logits(texts, batch_size=len(texts))
    got = int8_export.logits(texts, batch_size=len(texts))
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], atol=0.05)


def test_calibration_texts_are_spread_over_the_written_training_messages() -> None:
    rows = read_label_file(ANNOTATIONS_DIR / f"{WRITTEN_SOURCE}.jsonl")
    by_split = {s: {r["text"] for r in rows if r["split"] == s} for s in ("train", "dev", "test")}
    texts = onnx_export.calibration_texts()
    assert len(texts) == CALIBRATION_TEXTS == len(set(texts))
    assert set(texts) <= by_split["train"] and not set(texts) & (by_split["dev"] | by_split["test"])
    assert onnx_export.calibration_texts() == texts  # the same every build
    # spread over the file, not its first rows: both scripts are there
    scripts = {r["script"] for r in rows if r["text"] in set(texts)}
    assert scripts == {"hans", "hant"}
