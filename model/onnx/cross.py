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
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.onnx.cache import MODEL_FILE, RECIPE_VERSION, TOKENIZER_FILE, build_lock
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
    key = cross_key(sha)
    parent = cache or cache_dir() / "onnx-cross"
    final = parent / key
    if (final / META).is_file():
        return final
    parent.mkdir(parents=True, exist_ok=True)
    with build_lock(parent):
        if (final / META).is_file():
            return final
        tmp = parent / f".tmp-{key}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            info = build_cross_export(model_dir, tmp)
            info["key"] = key
            (tmp / META).write_text(json.dumps(info, indent=2) + "\n")
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def build_cross_export(model_dir: Path, out: Path) -> dict[str, Any]:
    import torch
    from torch import nn

    from model.onnx.encoder import externalize_weights
    from model.onnx.export import _fuse, save_tokenizer
    from model.onnx.quantize import quantize_linear, quantize_word_embedding
    from model.onnx.spm import write_spm
    from service.routing.agent_cross import CrossEncoder

    started = time.perf_counter()
    cross = CrossEncoder.load(model_dir)
    encoder = cross.encoder.merge_and_unload()
    encoder.eval()
    if hasattr(encoder, "set_attn_implementation"):
        encoder.set_attn_implementation("eager")  # type: ignore[operator]  # the pattern onnxruntime fuses

    class Scored(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.head = cross.head

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            return torch.sigmoid(self.head(pooled))

    turns = ["我們這邊系統顯示已經簽收了", "非常抱歉造成您的困擾，我現在馬上幫您查詢", "请您提供订单号"]
    contexts = ["我根本沒收到！", "你們到底要拖多久", ""]
    module = Scored().eval()
    enc = cross.tokenize(turns, contexts)
    raw = out / "raw.onnx"
    with torch.no_grad():
        torch.onnx.export(
            module,
            (enc["input_ids"], enc["attention_mask"]),
            str(raw),
            dynamo=False,
            input_names=["input_ids", "attention_mask"],
            output_names=[OUTPUT],
            dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}, OUTPUT: {0: "b"}},
            opset_version=17,
        )
    cfg: Any = encoder.config
    proto, fused = _fuse(raw, num_heads=int(cfg.num_attention_heads), hidden_size=int(cfg.hidden_size))
    raw.unlink()
    info: dict[str, Any] = {
        "fused": fused,
        "prefix": cross.prefix,
        "codes": list(cross.settings.codes),
        "max_length": cross.settings.max_length,
        "pad_id": int(cross.tokenizer.pad_token_id or 0),
    }
    info |= quantize_word_embedding(proto)
    info |= quantize_linear(proto, out / MODEL_FILE)
    info |= externalize_weights(out / MODEL_FILE)
    save_tokenizer(cross.tokenizer, out / TOKENIZER_FILE)
    info |= write_spm(out, out / TOKENIZER_FILE)
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
        out = np.zeros((len(texts), len(self.codes)), dtype=np.float32)
        if not len(texts):
            return out
        ids = encode_pairs(
            self.tokenizer,
            [self.prefix + t for t in texts],
            [(c or "").strip() for c in contexts],
            max_length=self.max_length,
        )
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = max(len(ids[i]) for i in idx)
            input_ids = np.full((len(idx), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                input_ids[row, : len(ids[i])] = ids[i]
                mask[row, : len(ids[i])] = 1
            (p,) = self.session.run([OUTPUT], {"input_ids": input_ids, "attention_mask": mask})
            out[idx] = p
        return out
