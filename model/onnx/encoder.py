"""A frozen sentence encoder (mean-pooled, L2-normalised) through ONNX Runtime: the agent-turn model without PyTorch.

The agent-turn model (``service.routing.agent_model``) embeds clauses with the *frozen* e5
backbone. Loaded through PyTorch and ``transformers`` that costs a serving process about 500 MB
(the fp32 250k-row embedding table alone is 384 MB, plus PyTorch and the JSON tokenizer). This is
the same encoder exported once with the classifier's recipe (``model.onnx.export``: fused, int8
attention, 8-bit MatMulNBits FFN, int8 embedding table, SentencePiece tokenizer): the same
interface as ``E5Encoder`` (``encode(texts) -> [n, dim]`` float32, ``name``, ``dim``, ``prefix``),
no PyTorch once the export exists.

As in the classifier's export (recipe 3), the weights are written to ``model.onnx.data`` next to
the graph, each large tensor at a 64 KiB boundary (``model.onnx.weights``), so ONNX Runtime maps them
from the file instead of parsing and copying them. Loading then needs no transient copy (the process
peak was ~80 MB above its steady size), and of the 96 MB int8 word-embedding table only the pages of
the rows looked up become resident (file-backed, shared between worker processes, reclaimable).

Exports live under ``~/.cache/calmfirst/onnx-encoder/<key>``, keyed by the backbone's checksum,
the recipe and the onnxruntime version; a new build removes older exports of the same backbone.
``service.routing.agent_model.load_encoder`` uses it for the agent-turn model with the ``auto``/``onnx``
backend (the serving default): the first start builds the export, later starts load it without
importing PyTorch.
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
from model.onnx.weights import SharedWeights, externalize_weights

logger = logging.getLogger(__name__)

META = "encoder.json"
OUTPUT = "embedding"
#: Texts per forward pass. 8 rather than 32: on 2 cores 196 agent-turn units took 1.3 s in batches of 8 and
#: 1.75 s in batches of 32 (length-sorted either way), and a server reading long conversations stayed
#: ~30 MB smaller (ONNX Runtime keeps the activation memory of the largest batch it has run).
BATCH_SIZE = 8
#: The encoder's own steps on top of the classifier's recipe (``RECIPE_VERSION``); a change rebuilds exports.
ENCODER_RECIPE = "mmap2"  # mmap2: checksummed weights, shared with the classifier's export in a process


def encoder_key(backbone: str, checksum: str) -> str:
    import onnxruntime

    text = f"{backbone}\0{checksum}\0recipe{RECIPE_VERSION}/{ENCODER_RECIPE}\0{onnxruntime.__version__}"
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
        _remove_stale(parent, keep=key, backbone=backbone)
    return final


def _remove_stale(parent: Path, *, keep: str, backbone: str) -> None:
    """Older exports of the same backbone (another recipe or onnxruntime): dead weight once a new one is built."""
    for old in parent.iterdir():
        if old.name == keep or old.name.startswith(".") or not (old / META).is_file():
            continue
        try:
            same = json.loads((old / META).read_text()).get("backbone") == backbone
        except (OSError, ValueError):
            continue
        if same:
            logger.info("removing stale ONNX encoder export %s", old)
            shutil.rmtree(old, ignore_errors=True)


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
    info |= externalize_weights(out / MODEL_FILE)
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

    def __init__(
        self,
        session: Any,
        tokenizer: Any,
        info: dict[str, Any],
        *,
        max_length: int,
        batch_size: int,
        shared: SharedWeights | None = None,
    ):
        self.session = session
        self.shared = shared  # the weights the session runs on: must live as long as it does
        self.tokenizer = tokenizer
        self.prefix = str(info.get("prefix", "query: "))
        self.dim = int(info.get("dim", 384))
        self.pad_id = int(info.get("pad_id", 1))
        # ``<backbone>@<sha>`` as E5Encoder names it, then the export: an embedding cache keyed by name
        # (``CachedEncoder``) never hands PyTorch vectors to this encoder or the other way round
        checksum = str(info.get("checksum", ""))[:12]
        base = f"{info.get('backbone', 'encoder')}@{checksum}" if checksum else str(info.get("backbone", "encoder"))
        self.name = f"{base}+onnx:{info.get('key', '')}"
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
        batch_size: int = BATCH_SIZE,
        info: dict[str, Any] | None = None,
    ) -> OnnxSentenceEncoder:
        info = info if info is not None else json.loads((export_dir / META).read_text())
        model_file = export_dir / MODEL_FILE
        # the same embedding table as the classifier's export: mapped once per process (model.onnx.weights)
        shared = SharedWeights.of(model_file)
        session = _session(model_file, threads=threads, shared=shared)
        return cls(
            session, load_tokenizer(export_dir), info, max_length=max_length, batch_size=batch_size, shared=shared
        )

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
