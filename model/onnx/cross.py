"""The agent-turn cross-encoder through ONNX Runtime: (agent turn, customer turn before) -> P(code), no PyTorch.

The cross-encoder (``service.routing.agent_cross``) is the e5 encoder with LoRA adapters and one linear
layer, read on a *pair* of texts. Served like the classifier: LoRA merged, exported once with the
classifier's recipe (fused attention, int8 attention, 8-bit MatMulNBits FFN, int8 word-embedding
table, weights memory-mapped as in ``model.onnx.encoder``), verified against PyTorch, and cached under
``~/.cache/calmfirst/onnx-cross/<key>`` (key: the adapter file's checksum, the recipe, onnxruntime).

Pairs are tokenized here as the training tokenizer does: ``<s> A </s></s> B </s>``, the longer side
losing its last token first while the pair is too long (``pair_ids``; checked against ``transformers``
on the real agent turns in the tests).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from model.onnx.cache import MODEL_FILE, RECIPE_VERSION
from model.onnx.encoder import build_once, export_int8, run_padded
from model.onnx.runtime import _session
from model.onnx.spm import SpmTokenizer, load_tokenizer

logger = logging.getLogger(__name__)

META = "cross.json"
OUTPUT = "probs"
#: The cross-encoder's own step on top of the classifier's recipe; a change rebuilds exports.
CROSS_RECIPE = "cross1"
#: Pairs per forward pass (as the agent-turn encoder: short, length-sorted batches).
BATCH_SIZE = 8
#: An int8 export must give every code within this of PyTorch on the check pairs, or it is rejected.
VERIFY_TOLERANCE = 0.08


def cross_key(weights_sha: str) -> str:
    import onnxruntime

    text = f"{weights_sha}\0recipe{RECIPE_VERSION}/{CROSS_RECIPE}\0{onnxruntime.__version__}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def pair_ids(content_a: list[int], content_b: list[int], *, bos: int, eos: int, max_length: int) -> list[int]:
    """``<s> a </s></s> b </s>``, the longer side cut first (at its end) until the pair fits ``max_length``."""
    a, b = list(content_a), list(content_b)
    room = max(0, max_length - 4)
    while len(a) + len(b) > room:
        if len(a) > len(b):
            a.pop()
        else:
            b.pop()
    return [bos, *a, eos, eos, *b, eos]


def encode_pairs(tokenizer: Any, firsts: Sequence[str], seconds: Sequence[str], *, max_length: int) -> list[list[int]]:
    """Pair ids from the export's tokenizer (SentencePiece, or ``tokenizers`` with its own pair template)."""
    if isinstance(tokenizer, SpmTokenizer):
        return [
            pair_ids(
                tokenizer.content_ids(a),
                tokenizer.content_ids(b),
                bos=tokenizer.bos,
                eos=tokenizer.eos,
                max_length=max_length,
            )
            for a, b in zip(firsts, seconds, strict=True)
        ]
    tokenizer.enable_truncation(max_length=max_length)
    return [e.ids for e in tokenizer.encode_batch(list(zip(firsts, seconds, strict=True)))]


def ensure_cross_export(model_dir: Path, *, cache: Path | None = None) -> Path:
    """The export of the cross-encoder saved in ``model_dir``, built once (needs PyTorch) under a lock."""
    from model.backbone import cache_dir, sha256_file
    from service.routing.agent_cross import CONFIG_FILE, WEIGHTS_FILE

    sha = sha256_file(model_dir / WEIGHTS_FILE) + sha256_file(model_dir / CONFIG_FILE)
    final, _ = build_once(
        cache or cache_dir() / "onnx-cross", cross_key(sha), META, partial(build_cross_export, model_dir)
    )
    return final


def build_cross_export(model_dir: Path, out: Path) -> dict[str, Any]:
    import torch
    from torch import nn

    from service.routing.agent_cross import CrossEncoder, pooled_logits

    started = time.perf_counter()
    cross = CrossEncoder.load(model_dir)
    peft_model: Any = cross.encoder
    encoder: Any = peft_model.merge_and_unload()
    encoder.eval()
    if hasattr(encoder, "set_attn_implementation"):
        encoder.set_attn_implementation("eager")  # the pattern onnxruntime fuses

    class Scored(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.head = cross.head

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(pooled_logits(self.encoder, self.head, input_ids, attention_mask))

    turns = ["我們這邊系統顯示已經簽收了", "非常抱歉造成您的困擾，我現在馬上幫您查詢", "请您提供订单号"]
    contexts = ["我根本沒收到！", "你們到底要拖多久", ""]
    module = Scored().eval()
    enc = cross.tokenize(turns, contexts)
    info: dict[str, Any] = {
        "prefix": cross.prefix,
        "codes": list(cross.settings.codes),
        "max_length": cross.settings.max_length,
    }
    info |= export_int8(module, enc, out, output=OUTPUT, config=encoder.config, tokenizer=cross.tokenizer)
    with torch.no_grad():
        ref = module(enc["input_ids"], enc["attention_mask"]).numpy()
    got = OnnxCrossEncoder.load(out, threads=1, info=info).probs(turns, contexts)
    info["verify_max_abs_diff"] = float(np.abs(ref - got).max())
    if info["verify_max_abs_diff"] > VERIFY_TOLERANCE:
        raise RuntimeError(f"ONNX cross-encoder disagrees with PyTorch (max |dp| {info['verify_max_abs_diff']:.4f})")
    info["build_seconds"] = round(time.perf_counter() - started, 1)
    return info


class OnnxCrossEncoder:
    """``probs(texts, contexts)`` as ``service.routing.agent_cross.CrossEncoder.probs``, without PyTorch."""

    def __init__(self, session: Any, tokenizer: Any, info: dict[str, Any], *, batch_size: int = BATCH_SIZE) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.prefix = str(info.get("prefix", "query: "))
        self.codes = tuple(info["codes"])
        self.max_length = int(info.get("max_length", 160))
        self.pad_id = int(info.get("pad_id", 1))
        self.batch_size = batch_size
        self.name = f"cross+onnx:{info.get('key', '')}"
        #: the cross-encoder folder the export was built from (set by the loader)
        self.source: Path | None = None
        if not isinstance(tokenizer, SpmTokenizer):
            tokenizer.no_padding()

    @classmethod
    def load(
        cls, export_dir: Path, *, threads: int | None = None, info: dict[str, Any] | None = None
    ) -> OnnxCrossEncoder:
        info = info if info is not None else json.loads((export_dir / META).read_text())
        return cls(_session(export_dir / MODEL_FILE, threads=threads), load_tokenizer(export_dir), info)

    def probs(self, texts: Sequence[str], contexts: Sequence[str | None]) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, len(self.codes)), dtype=np.float32)
        ids = encode_pairs(
            self.tokenizer,
            [self.prefix + t for t in texts],
            [(c or "").strip() for c in contexts],
            max_length=self.max_length,
        )
        return run_padded(self.session, ids, pad_id=self.pad_id, batch_size=self.batch_size, output=OUTPUT)
