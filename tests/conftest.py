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


def tiny_bert_config(tok):  # type: ignore[no-untyped-def]
    """The one tiny BERT shape of the tests (2 layers of 32): the session model and the saved backbone agree."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
    )


def build_tiny_model(seed: int = 0):  # type: ignore[no-untyped-def]
    import torch
    from transformers import BertModel

    from model.classifier import CalmFirstConfig, CalmFirstModel, LoraSettings

    torch.manual_seed(seed)
    tok = build_tiny_tokenizer()
    cfg = tiny_bert_config(tok)
    bert = BertModel(cfg, add_pooling_layer=False)
    config = CalmFirstConfig(lora=LoraSettings(r=4, alpha=8, dropout=0.0), max_length=64, name="tiny", version="0.0.1")
    return CalmFirstModel.from_backbone(bert, tokenizer=tok, config=config, seed=seed)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model saved once per session (embedded backbone), as a real model folder."""
    path = tmp_path_factory.mktemp("tiny") / "model"
    build_tiny_model().save_pretrained(path)
    return path


def copy_model(src: Path, dst: Path) -> Path:
    """A private copy of a model folder without its ONNX exports.

    Why: tests that load the session's ``tiny_model_dir`` with the ONNX backend leave an export in it, and a
    copy that carried it would find that export instead of building its own, so export tests would pass or
    fail by the order pytest ran them in.
    """
    import shutil

    from model.onnx.cache import EXPORT_SUBDIR

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(EXPORT_SUBDIR))
    return dst


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
    from transformers import BertModel

    torch.manual_seed(0)
    tok = build_tiny_tokenizer()
    cfg = tiny_bert_config(tok)
    path = tmp_path_factory.mktemp("tiny-backbone") / "bert"
    BertModel(cfg, add_pooling_layer=False).save_pretrained(path)
    tok.save_pretrained(path)
    return path


#: (agent turn, the customer's turn before, steps, mistakes): a few labelled turns for the tiny agent-turn model
TINY_AGENT_TURNS = [
    ("謝謝您的耐心等候", None, ["thank"], []),
    ("非常抱歉造成您的困擾", "你們怎麼搞的", ["apologize"], []),
    ("麻煩提供訂單號碼", "東西還沒到", ["ask_details"], []),
    ("系統顯示您已經簽收了", "我根本沒收到", [], ["argued"]),
    ("谢谢您的反馈", None, ["thank"], []),
    ("不好意思让您久等了", "等好久", ["apologize"], []),
    ("请提供您的手机号码", "帐单有问题", ["ask_details"], []),
    ("我们这边没有问题", "你们系统有问题", [], ["argued"]),
    ("謝謝您。非常抱歉！", "太慢了", ["thank", "apologize"], []),
    ("請提供訂單號碼；謝謝", "還沒到", ["thank", "ask_details"], []),
]


def tiny_agent_rows(split: str = "train") -> list[dict]:
    return [
        {"id": f"r{i}", "text": t, "context": c, "steps": s, "mistakes": m, "split": split, "source": "stc3"}
        for i, (t, c, s, m) in enumerate(TINY_AGENT_TURNS)
    ]


@pytest.fixture(scope="session")
def tiny_agent_model_dir(tiny_backbone_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An agent-turn model (heads + n-grams) trained on ``tiny_backbone_dir`` through PyTorch and saved: its
    config names that folder as its encoder, so loading it reads turns with the same tiny backbone."""
    from service.routing.agent_model import AgentTurnModel, E5Encoder, HeadSettings

    encoder = E5Encoder(str(tiny_backbone_dir), threads=1)
    settings = HeadSettings(hidden=16, epochs=60, lr=1e-2, batch_size=4, dropout=0.0, folds=2)
    model = AgentTurnModel(encoder=encoder, settings=settings).fit(tiny_agent_rows())
    model.fit_thresholds(tiny_agent_rows("dev"))
    path = tmp_path_factory.mktemp("tiny-agent") / "agent"
    model.save(path)
    return path
