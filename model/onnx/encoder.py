"""A frozen sentence encoder (mean-pooled, L2-normalised) through ONNX Runtime: the agent-turn model without PyTorch.

The agent-turn model (``service.routing.agent_model``) embeds clauses with the *frozen* e5
backbone. Loaded through PyTorch and ``transformers`` that costs a serving process about 500 MB
(the fp32 250k-row embedding table alone is 384 MB, plus PyTorch and the JSON tokenizer). This is
the same encoder exported once with the classifier's recipe (``model.onnx.export``: fused, int8
attention, 8-bit MatMulNBits FFN, int8 embedding table, SentencePiece tokenizer): the same
interface as ``E5Encoder`` (``encode(texts) -> [n, dim]`` float32, ``name``, ``dim``, ``prefix``),
no PyTorch once the export exists.

Exports live under ``~/.cache/calmfirst/onnx-encoder/<key>``, keyed by the backbone's checksum,
the recipe and the onnxruntime version.
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
from model.onnx.spm import load_tokenizer

logger = logging.getLogger(__name__)

META = "encoder.json"
OUTPUT = "embedding"


def encoder_key(backbone: str, checksum: str) -> str:
    import onnxruntime

    text = f"{backbone}\0{checksum}\0recipe{RECIPE_VERSION}\0{onnxruntime.__version__}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def ensure_encoder_export(backbone: str | None = None, *, cache: Path | None = None) -> Path:
    """The encoder's export folder, built once (needs PyTorch) under a lock."""
    from model.backbone import DEFAULT_BACKBONE, cache_dir, resolve_backbone

    backbone = backbone or DEFAULT_BACKBONE
    _, meta = resolve_backbone(backbone)
    key = encoder_key(backbone, str(meta.get("weights_sha256", "")))
    parent = cache or cache_dir() / "onnx-encoder"
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
            info = _build(backbone, tmp, prefix=str(meta.get("text_prefix", "query: ")))
            info |= {"key": key, "backbone": backbone, "checksum": str(meta.get("weights_sha256", ""))}
            (tmp / META).write_text(json.dumps(info, indent=2) + "\n")
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _build(backbone: str, out: Path, *, prefix: str) -> dict[str, Any]:
    import torch
    from torch import nn

    from model.classifier import _load_encoder
    from model.onnx.export import _fuse, save_tokenizer
    from model.onnx.quantize import quantize_linear, quantize_word_embedding
    from model.onnx.spm import write_spm

    started = time.perf_counter()
    module, tokenizer, _ = _load_encoder(backbone)
    module.eval()
    if hasattr(module, "set_attn_implementation"):
        module.set_attn_implementation("eager")  # type: ignore[operator]  # the pattern onnxruntime fuses

    class Pooled(nn.Module):
        def __init__(self, encoder: nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            return torch.nn.functional.normalize(pooled, dim=-1)

    texts = [prefix + "你们的快递到现在还没到", prefix + "非常抱歉造成您的困擾，我現在馬上幫您查詢"]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    raw = out / "raw.onnx"
    with torch.no_grad():
        torch.onnx.export(
            Pooled(module),
            (enc["input_ids"], enc["attention_mask"]),
            str(raw),
            dynamo=False,
            input_names=["input_ids", "attention_mask"],
            output_names=[OUTPUT],
            dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}, OUTPUT: {0: "b"}},
            opset_version=17,
        )
    cfg: Any = module.config
    proto, fused = _fuse(raw, num_heads=int(cfg.num_attention_heads), hidden_size=int(cfg.hidden_size))
    raw.unlink()
    info: dict[str, Any] = {"fused": fused, "prefix": prefix, "dim": int(cfg.hidden_size)}
    info |= quantize_word_embedding(proto)
    info |= quantize_linear(proto, out / MODEL_FILE)
    save_tokenizer(tokenizer, out / TOKENIZER_FILE)
    info |= write_spm(out, out / TOKENIZER_FILE)
    info["pad_id"] = int(tokenizer.pad_token_id or 0)
    with torch.no_grad():
        ref = Pooled(module)(enc["input_ids"], enc["attention_mask"]).numpy()
    got = OnnxSentenceEncoder.load(out, threads=1, info=info).encode([t[len(prefix) :] for t in texts])
    info["verify_min_cosine"] = float((ref * got).sum(1).min())
    if info["verify_min_cosine"] < 0.98:
        raise RuntimeError(f"ONNX encoder disagrees with PyTorch (cosine {info['verify_min_cosine']:.4f})")
    info["build_seconds"] = round(time.perf_counter() - started, 1)
    return info


class OnnxSentenceEncoder:
    """``encode(texts)``: mean-pooled, L2-normalised embeddings, as ``service.routing.agent_model.E5Encoder``."""

    def __init__(self, session: Any, tokenizer: Any, info: dict[str, Any], *, max_length: int, batch_size: int):
        self.session = session
        self.tokenizer = tokenizer
        self.prefix = str(info.get("prefix", "query: "))
        self.dim = int(info.get("dim", 384))
        self.pad_id = int(info.get("pad_id", 1))
        self.name = f"{info.get('backbone', 'encoder')}@{str(info.get('checksum', ''))[:12]}"
        self.max_length = max_length
        self.batch_size = batch_size
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_length)

    @classmethod
    def load(
        cls,
        export_dir: Path,
        *,
        threads: int | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        info: dict[str, Any] | None = None,
    ) -> OnnxSentenceEncoder:
        info = info if info is not None else json.loads((export_dir / META).read_text())
        session = _session(export_dir / MODEL_FILE, threads=threads)
        return cls(session, load_tokenizer(export_dir), info, max_length=max_length, batch_size=batch_size)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        ids = [e.ids for e in self.tokenizer.encode_batch([self.prefix + t for t in texts])]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = max(len(ids[i]) for i in idx)
            input_ids = np.full((len(idx), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                input_ids[row, : len(ids[i])] = ids[i]
                mask[row, : len(ids[i])] = 1
            (emb,) = self.session.run([OUTPUT], {"input_ids": input_ids, "attention_mask": mask})
            out[idx] = emb
        return out
