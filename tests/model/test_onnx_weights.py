"""Weights beside the graph: written aligned, mapped once, shared by every session of a process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from model.onnx import weights
from model.onnx.weights import WEIGHTS_FILE, SharedWeights, externalize_weights, has_external_weights


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no tensor mapped (the registry is process-wide; these tests reuse one tensor)."""
    monkeypatch.setattr(weights, "_REGISTRY", {})


def _two_matmuls(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A graph with one tensor big enough to move (76,800 bytes) and one that stays (2,400 bytes)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((64, 300)).astype(np.float32)
    w2 = rng.standard_normal((300, 2)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return w1, rng.standard_normal((1, 64)).astype(np.float32)


def test_weights_moved_to_an_aligned_file_the_runtime_maps(tmp_path: Path) -> None:
    """Large initializers go to ``model.onnx.data`` at aligned offsets; the model gives the same output."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto

    path = tmp_path / "model.onnx"
    _, x = _two_matmuls(path)
    before = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert not has_external_weights(path)

    info = externalize_weights(path, align=4096)
    assert info["external_weights"]["tensors"] == 1 and has_external_weights(path)
    proto = onnx.load(str(path), load_external_data=False)
    (moved,) = [t for t in proto.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    entries = {e.key: e.value for e in moved.external_data}
    assert moved.name == "w1" and entries["location"] == WEIGHTS_FILE and int(entries["offset"]) % 4096 == 0
    after = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.allclose(before, after)


def test_shared_weights_are_one_mapping_every_session_runs_on(tmp_path: Path) -> None:
    """Sessions given ``SharedWeights`` compute the same as a plain one, from the mapped buffer itself."""
    import onnxruntime as ort

    from model.onnx.runtime import _session

    path = tmp_path / "model.onnx"
    w1, x = _two_matmuls(path)
    externalize_weights(path, align=4096)
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    shared = SharedWeights(path)
    assert list(shared.values) == ["w1"] and len(shared) == 1
    value = shared.values["w1"]
    mapped = next(iter(shared._maps.values()))
    start = mapped.ctypes.data
    assert start <= value.data_ptr() < start + mapped.nbytes  # a view of the file mapping, not a copy
    assert np.array_equal(value.numpy(), w1)
    sessions = [_session(path, threads=1, shared=shared) for _ in range(3)]
    for s in sessions:
        assert np.allclose(s.run(None, {"x": x})[0], plain)


def test_classifier_export_lanes_share_the_weights_and_score_alike(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The classifier's export keeps its weights beside the graph; ``lanes`` are one-thread sessions over them."""
    from data.samples import SAMPLE_MESSAGES
    from model.loading import load_model
    from model.onnx.cache import MODEL_FILE
    from model.onnx.runtime import OnnxCalmFirstModel
    from tests.conftest import copy_model

    copy_model(tiny_model_dir, tmp_path / "model")
    model = load_model(tmp_path / "model", backend="onnx", threads=2)
    assert isinstance(model, OnnxCalmFirstModel)
    assert has_external_weights(model.export_dir / MODEL_FILE) and model.shared is not None
    assert model.export_meta["external_weights"]["file"] == WEIGHTS_FILE
    lanes = model.lanes(2)
    assert len(lanes) == 2 and all(lane.shared is model.shared for lane in lanes)
    assert {lane.session.get_session_options().intra_op_num_threads for lane in lanes} == {1}
    texts = list(SAMPLE_MESSAGES[:7])
    expected = model.logits(texts)
    for lane in lanes:
        got = lane.logits(texts)
        assert all(np.allclose(got[k], expected[k], atol=1e-5) for k in expected)


def test_a_tensor_two_exports_share_is_mapped_once_per_process(tmp_path: Path) -> None:
    """Exports of the same backbone (classifier, agent-turn encoder) hold the same embedding table: the
    second export's sessions run on the first one's mapping, found by the tensor's checksum."""
    import hashlib

    import onnx
    from onnx import TensorProto

    first, second = tmp_path / "a" / "model.onnx", tmp_path / "b" / "model.onnx"
    for path in (first, second):
        path.parent.mkdir()
        w1, x = _two_matmuls(path)  # the same w1 bytes in both
        externalize_weights(path, align=4096)
    proto = onnx.load(str(first), load_external_data=False)
    (moved,) = [t for t in proto.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    assert {e.key: e.value for e in moved.external_data}["checksum"] == hashlib.sha1(w1.tobytes()).hexdigest()

    from model.onnx.runtime import _session

    a, b = SharedWeights(first), SharedWeights(second)
    assert b.reused == 1 and b.values["w1"] is a.values["w1"] and not b._maps  # nothing of b's file mapped
    expected = _session(first, threads=1, shared=a).run(None, {"x": x})[0]
    assert np.allclose(_session(second, threads=1, shared=b).run(None, {"x": x})[0], expected)
