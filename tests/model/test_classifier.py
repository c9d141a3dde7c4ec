from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model.classifier import CONFIG_NAME, WEIGHTS_NAME, CalmFirstConfig, CalmFirstModel, Prediction, ordinal_probs
from tests.conftest import build_tiny_model


def test_classifier_save_load_round_trip_config_exact(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = build_tiny_model(seed=3)
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / CONFIG_NAME).read_text())
    loaded = CalmFirstModel.from_pretrained(tmp_path / "m")
    assert loaded.config.to_dict() == saved
    assert saved == model.config.to_dict()
    assert set(saved["library_versions"]) >= {"torch", "transformers", "peft", "calmfirst"}
    assert saved["complaint_types"][-1] == "none" and len(saved["complaint_types"]) == 10
    assert (tmp_path / "m" / WEIGHTS_NAME).exists() and (tmp_path / "m" / "README.md").exists()
    texts = ["為什麼7號還要算錢?", "请问营业时间"]
    a = model.predict(texts)
    b = loaded.predict(texts)
    for x, y in zip(a, b, strict=True):
        assert x.anger_probs == pytest.approx(y.anger_probs, abs=1e-5)
        assert x.type_scores == pytest.approx(y.type_scores, abs=1e-5)


def test_classifier_merged_adapters_give_same_scores(tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    plain = CalmFirstModel.from_pretrained(tiny_model_dir)
    merged = CalmFirstModel.from_pretrained(tiny_model_dir, merge_adapters=True)
    t = "你們客服態度太差了!"
    assert plain.predict(t).anger_probs == pytest.approx(merged.predict(t).anger_probs, abs=1e-4)
    with pytest.raises(RuntimeError, match="merged"):
        merged.save_pretrained(tiny_model_dir.parent / "nope")


def test_classifier_predict_accepts_string_or_list(tiny_model) -> None:  # type: ignore[no-untyped-def]
    one = tiny_model.predict("請問")
    many = tiny_model.predict(["請問", "太離譜了", "退款"], batch_size=2)
    assert isinstance(one, Prediction)
    assert len(many) == 3 and all(isinstance(p, Prediction) for p in many)
    assert many[0].anger_probs == pytest.approx(one.anger_probs, abs=1e-5)  # batching/ordering keeps identity
    for text, p in zip(["請問", "太離譜了", "退款"], many, strict=True):  # every row, not only the first
        assert p.anger_probs == pytest.approx(tiny_model.predict(text).anger_probs, abs=1e-5)
    assert len({round(p.anger_score, 4) for p in many}) == 3  # the texts score apart: a swap would show
    assert tiny_model.predict([]) == []
    with pytest.raises(TypeError, match="text 1"):
        tiny_model.predict(["ok", 3])


def test_classifier_prediction_fields_are_valid(tiny_model) -> None:  # type: ignore[no-untyped-def]
    for p in tiny_model.predict(["請問", "垃圾公司!!", "包裹壞了"]):
        assert sum(p.anger_probs) == pytest.approx(1.0, abs=1e-4)
        assert 0.0 <= p.anger_score <= 1.0
        assert p.anger_level == max(range(4), key=lambda i: p.anger_probs[i])
        assert set(p.type_scores) == set(CalmFirstConfig().complaint_types)
        assert p.types[0] == p.complaint_type
        assert p.calm_first_prob == pytest.approx(sum(p.anger_probs[2:]), abs=1e-5)


def test_classifier_ordinal_probs_valid_and_score_monotone() -> None:
    # thresholds ordered -> cumulative logits decreasing in k
    scores = torch.linspace(-6, 6, 25).unsqueeze(1)
    thresholds = torch.tensor([-1.0, 0.5, 2.0])
    probs = ordinal_probs(scores - thresholds)
    assert torch.all(probs >= 0)
    assert torch.allclose(probs.sum(1), torch.ones(25), atol=1e-6)
    expected = (probs * torch.arange(4)).sum(1)
    assert torch.all(expected[1:] > expected[:-1])  # anger.score rises with the latent score


def test_classifier_from_pretrained_rejects_non_model_folder(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FileNotFoundError, match="not a CalmFirst model"):
        CalmFirstModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("bad", [{"pooling": "max"}, {"temperature": 0.0}, {"anger_labels": ["a", "b"]}])
def test_classifier_config_validation(bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        CalmFirstConfig(**bad)


def test_classifier_implements_the_scoring_interface(tiny_model) -> None:  # type: ignore[no-untyped-def]
    from model.scores import ScoringModel

    assert isinstance(tiny_model, ScoringModel) and tiny_model.backend == "torch"
    logits = tiny_model.logits(["請問", "太離譜了"])
    assert {k: v.shape[0] for k, v in logits.items()} == dict.fromkeys(
        ("anger_logits", "type_logits", "multi_logits", "threat_logits"), 2
    )


def test_classifier_numpy_post_processing_matches_the_torch_heads() -> None:
    """The served probabilities (numpy, shared by both backends) equal the differentiable ones used in training."""
    from model.scores import ordinal_probs as ordinal_probs_np

    cum = torch.randn(64, 3) * 3 - torch.tensor([-1.0, 0.5, 2.0])
    assert np.allclose(ordinal_probs(cum).numpy(), ordinal_probs_np(cum.numpy()), atol=1e-6)


def test_full_fine_tuning_saves_the_encoder_layers_not_the_embeddings(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = build_tiny_model()
    model.unfreeze_encoder()
    assert model.config.lora is None
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable and not any("embeddings" in n for n in trainable)
    with torch.no_grad():  # what training would do: move an encoder layer
        next(p for n, p in model.backbone.named_parameters() if "encoder.layer.0" in n).add_(0.5)
    texts = ["快递怎么还没到", "請問退款呢"]
    before = model.logits(texts)["anger_logits"]
    model.config.backbone_embedded = True  # the tiny backbone has no hub name to come back from
    model.save_pretrained(tmp_path / "full")
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "full" / "calmfirst_heads.safetensors"))
    assert any(k.startswith("backbone.encoder.layer.0") for k in saved)
    assert not any("embeddings" in k for k in saved)
    # the encoder layers are stored in float16 (85 MB -> 43 MB for e5-small), the heads in float32
    assert {v.dtype for k, v in saved.items() if k.startswith("backbone.")} == {torch.float16}
    assert {v.dtype for k, v in saved.items() if not k.startswith("backbone.")} == {torch.float32}
    loaded = CalmFirstModel.from_pretrained(tmp_path / "full")
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}  # cast back on load
    again = loaded.logits(texts)["anger_logits"]
    assert abs(again - before).max() < 1e-2  # float16 rounding of the layers, not a lost weight
    moved = next(p for n, p in loaded.backbone.named_parameters() if "encoder.layer.0" in n)
    assert abs(moved - next(p for n, p in model.backbone.named_parameters() if "encoder.layer.0" in n)).max() < 1e-3
