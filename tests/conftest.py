"""Shared fixtures: a tiny randomly initialised BERT built in memory (no hub, no conversion)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the agent-turn detector of the API and `calmfirst qa` in tests: the TF-IDF one (the e5 model loads the backbone)
os.environ.setdefault("CALMFIRST_AGENT_MODEL", "tfidf")

FIXTURES = Path(__file__).parent / "fixtures"
SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow") or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: opt in with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def fixture_messages() -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / "messages.jsonl").read_text(encoding="utf-8").splitlines()]


def build_tiny_tokenizer():  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [m["text"] for m in fixture_messages()]
    corpus += ["query: 你们的服务态度退款快递帐单網路登入密码问题怎么办谢谢客服电话"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=400, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.train_from_iterator(corpus, trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )


def build_tiny_model(seed: int = 0):  # type: ignore[no-untyped-def]
    import torch
    from transformers import BertConfig, BertModel

    from model.classifier import CalmFirstConfig, CalmFirstModel, LoraSettings

    torch.manual_seed(seed)
    tok = build_tiny_tokenizer()
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
    )
    bert = BertModel(cfg, add_pooling_layer=False)
    config = CalmFirstConfig(lora=LoraSettings(r=4, alpha=8, dropout=0.0), max_length=64, name="tiny", version="0.0.1")
    return CalmFirstModel.from_backbone(bert, tokenizer=tok, config=config, seed=seed)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model saved once per session (embedded backbone), as a real model folder."""
    path = tmp_path_factory.mktemp("tiny") / "model"
    build_tiny_model().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from model.classifier import CalmFirstModel

    return CalmFirstModel.from_pretrained(tiny_model_dir, merge_adapters=True)


@pytest.fixture(scope="session")
def tiny_analyzer(tiny_model):  # type: ignore[no-untyped-def]
    from service.analyzer import Analyzer

    return Analyzer(tiny_model)


@pytest.fixture()
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"../shared/data not present at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT + tokenizer saved as a normal ``save_pretrained`` folder: the path a user's own backbone takes."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    tok = build_tiny_tokenizer()
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
    )
    path = tmp_path_factory.mktemp("tiny-backbone") / "bert"
    BertModel(cfg, add_pooling_layer=False).save_pretrained(path)
    tok.save_pretrained(path)
    return path
