"""The SentencePiece copy of the backbone's tokenizer: the same ids as tokenizer.json, special tokens and truncation."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("sentencepiece")
pytest.importorskip("tokenizers")

from model.backbone import default_backbone_dir
from model.onnx.spm import CHECK_TEXTS, SpmTokenizer, build_spm, check_same_ids, load_tokenizer, write_spm

TEXTS = [
    *CHECK_TEXTS,
    "query: 為什麼7號還要算錢?你們到底怎麼算的!",
    "query: 退款什么时候到账 谢谢你们 客服态度太差了!!!",
    "query: 我要找消保官 / 1999 / 投訴 @ 12:30pm",
    "query: ",
    "query: 唔該你哋快啲處理啦，等咗成個禮拜",
]


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The backbone's tokenizer as the ONNX export saves it (``save_tokenizer``)."""
    from transformers import AutoTokenizer

    from model.onnx.export import save_tokenizer

    folder = default_backbone_dir()
    if not (folder / "tokenizer.json").is_file():
        pytest.skip("the default backbone is not prepared (calmfirst prepare-backbone)")
    path = tmp_path_factory.mktemp("spm") / "tokenizer.json"
    save_tokenizer(AutoTokenizer.from_pretrained(str(folder)), path)
    return path


def test_spm_same_ids_as_tokenizer_json(tokenizer_json: Path, tmp_path: Path) -> None:
    out = tmp_path / "tokenizer.spm"
    assert build_spm(tokenizer_json, out)
    assert check_same_ids(tokenizer_json, out, TEXTS)
    tok = SpmTokenizer.load(out)
    assert tok.token_to_id("<pad>") == 1 and tok.token_to_id("<s>") == 0
    tok.enable_truncation(max_length=8)
    ids = tok.encode_batch(["query: " + "你們" * 50])[0].ids
    assert len(ids) == 8 and ids[0] == 0 and ids[-1] == 2


def test_spm_written_with_the_export_and_preferred(tokenizer_json: Path, tmp_path: Path) -> None:
    import shutil

    shutil.copy(tokenizer_json, tmp_path / "tokenizer.json")
    assert write_spm(tmp_path, tmp_path / "tokenizer.json") == {"tokenizer_spm": True}
    assert isinstance(load_tokenizer(tmp_path), SpmTokenizer)
    (tmp_path / "tokenizer.spm").unlink()
    assert not isinstance(load_tokenizer(tmp_path), SpmTokenizer)  # the JSON tokenizer still works


def test_spm_not_built_for_other_tokenizers(tmp_path: Path) -> None:
    """The tiny test model's WordPiece tokenizer is not a SentencePiece model: nothing written, JSON used."""
    from model.onnx.export import save_tokenizer
    from tests.conftest import build_tiny_tokenizer

    save_tokenizer(build_tiny_tokenizer(), tmp_path / "tokenizer.json")
    assert write_spm(tmp_path, tmp_path / "tokenizer.json") == {"tokenizer_spm": False}
    assert not (tmp_path / "tokenizer.spm").exists()


def test_spm_processor_shared_between_exports_of_one_tokenizer(tokenizer_json: Path, tmp_path: Path) -> None:
    """The customer model's export and the agent-turn encoder's hold the same tokenizer: one SentencePiece
    processor (~50 MB) serves both, while truncation stays each tokenizer's own."""
    import shutil

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        shutil.copy(tokenizer_json, tmp_path / name / "tokenizer.json")
        assert write_spm(tmp_path / name, tmp_path / name / "tokenizer.json") == {"tokenizer_spm": True}
    a, b = load_tokenizer(tmp_path / "a"), load_tokenizer(tmp_path / "b")
    assert a.sp is b.sp
    a.enable_truncation(max_length=8)
    b.enable_truncation(max_length=32)
    text = "query: " + "你們" * 50
    assert len(a.encode_batch([text])[0].ids) == 8 and len(b.encode_batch([text])[0].ids) == 32
