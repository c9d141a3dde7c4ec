"""Building the ONNX export: PyTorch -> ONNX, fused, (int8-)quantized, verified against PyTorch.

With ``encoder``'s build, the only code of the ONNX path that imports PyTorch: it runs once per model (about a minute)
and its result is cached (``model.onnx.cache``). Serving a cached export never imports it.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from data.loader import ANNOTATIONS_DIR, read_label_file
from data.schema import WRITTEN_SOURCE
from model.classifier import CalmFirstModel
from model.config import CONFIG_NAME
from model.onnx import cache
from model.onnx.cache import (
    INPUT_NAMES,
    META_FILE,
    MODEL_FILE,
    RECIPE_VERSION,
    TOKENIZER_FILE,
    build_lock,
    export_key,
    export_parents,
    find_export,
    remove_stale,
)
from model.onnx.quantize import CALIBRATION_TEXTS, quantize_linear, quantize_word_embedding, quiet
from model.onnx.runtime import OnnxCalmFirstModel
from model.onnx.spm import write_spm
from model.onnx.weights import externalize_weights
from model.scores import OUTPUT_NAMES

logger = logging.getLogger(__name__)

#: fp32 export must match PyTorch this closely, or it is rejected (a broken export, not rounding).
FP32_TOLERANCE = 1e-3
_VERIFY_TEXTS = (
    "你们的快递到现在还没到，已经等了一个星期了！",
    "請問退款要多久才會到帳？",
    "垃圾服务，再也不来了",
    "好",
)


class ExportError(RuntimeError):
    """The ONNX export could not be built or does not reproduce the PyTorch model."""


def ensure_export(model_dir: str | Path, *, quantize: bool = True) -> Path:
    """The export folder for this model, building it (once, under a lock) when missing or stale."""
    model_dir = Path(model_dir)
    if not (model_dir / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{model_dir} is not a CalmFirst model folder (no {CONFIG_NAME})")
    key = export_key(model_dir, quantize=quantize)
    found = find_export(model_dir, key)
    if found is not None:
        logger.info("using cached ONNX export %s", found)
        return found
    parent = cache.writable_parent(model_dir)
    if parent is None:
        raise ExportError(f"no writable place for the ONNX export of {model_dir}")
    with build_lock(parent):
        found = find_export(model_dir, key)  # another process may have built it while we waited
        if found is not None:
            return found
        started = time.perf_counter()
        logger.warning("building the ONNX export of %s in %s (once per model; about a minute)", model_dir, parent)
        tmp = parent / f".tmp-{key}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            model = CalmFirstModel.from_pretrained(model_dir, merge_adapters=True)
            meta = build_export(model, tmp, quantize=quantize)
            del model
            gc.collect()
            meta["key"] = key
            meta["model_dir"] = str(model_dir.resolve())
            meta["build_seconds"] = round(time.perf_counter() - started, 1)
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
            final = parent / key
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if parent == export_parents(model_dir)[0]:
            remove_stale(parent, keep=key, quantized=quantize)
        logger.warning("ONNX export ready in %.0f s: %s", time.perf_counter() - started, final)
        return final


class _LogitsModule(nn.Module):
    """Tuple outputs in ``OUTPUT_NAMES`` order (the exporter cannot name dict entries)."""

    def __init__(self, model: CalmFirstModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(input_ids, attention_mask)
        return tuple(out[name] for name in OUTPUT_NAMES)


def _torch_export(model: CalmFirstModel, path: Path) -> None:
    """TorchScript-based export with dynamic batch and sequence axes.

    Eager attention is used while exporting: its MatMul/Softmax pattern is what
    onnxruntime's optimizer recognises and fuses into one Attention kernel.
    """
    backbone: Any = model.backbone
    previous = getattr(backbone.config, "_attn_implementation", None)
    if hasattr(backbone, "set_attn_implementation"):
        backbone.set_attn_implementation("eager")
    else:  # pragma: no cover - older transformers
        backbone.config._attn_implementation = "eager"
    wrapper = _LogitsModule(model).eval()
    enc = model.tokenize(list(_VERIFY_TEXTS[:2]))
    dynamic = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    dynamic |= {name: {0: "batch"} for name in OUTPUT_NAMES}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                (enc["input_ids"], enc["attention_mask"]),
                str(path),
                dynamo=False,
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES),
                dynamic_axes=dynamic,
                opset_version=17,
                do_constant_folding=True,
            )
    finally:
        if previous is not None:
            if hasattr(backbone, "set_attn_implementation"):
                with contextlib.suppress(Exception):
                    backbone.set_attn_implementation(previous)
            else:  # pragma: no cover
                backbone.config._attn_implementation = previous
        model.eval()


def _fuse(path: Path, *, num_heads: int, hidden_size: int) -> Any:
    """onnxruntime's BERT fusions; the embedding is left unfused so its table can be int8."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_embed_layer_norm = False  # the fused op wants an fp32 table
    with quiet():
        fused = optimize_model(
            str(path),
            model_type="bert",
            num_heads=num_heads,
            hidden_size=hidden_size,
            optimization_options=options,
            opt_level=0,
            use_gpu=False,
        )
    stats = {k: v for k, v in fused.get_fused_operator_statistics().items() if v}
    logger.info("fused operators: %s", stats)
    fused.topological_sort()
    proto = fused.model
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):  # what save_model_to_file would add
        proto.opset_import.add(domain="com.microsoft", version=1)
    return proto, stats


def calibration_texts(count: int = CALIBRATION_TEXTS) -> list[str]:
    """What SmoothQuant calibrates on: ``count`` training messages of the project's own written
    annotations, evenly spread over them by id (they ship with the package, unlike shared text)."""
    records = sorted(
        (r for r in read_label_file(ANNOTATIONS_DIR / f"{WRITTEN_SOURCE}.jsonl") if r.get("split") == "train"),
        key=lambda r: str(r["id"]),
    )
    step = max(1, len(records) // count)
    return [str(r["text"]) for r in records[::step][:count]]


def calibration_inputs(model: CalmFirstModel, texts: list[str]) -> list[dict[str, np.ndarray]]:
    """The model's inputs for each text alone (no padding), as the ONNX graph takes them."""
    return [{k: v.numpy().astype(np.int64) for k, v in model.tokenize([t]).items()} for t in texts]


def save_tokenizer(tokenizer: Any, path: Path) -> None:
    """The fast tokenizer's backend as plain ``tokenizer.json`` (no transformers needed to load it)."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    backend.save(str(path))


def build_export(model: CalmFirstModel, out_dir: Path, *, quantize: bool = True) -> dict[str, Any]:
    """Export, fuse, (int8-)quantize and verify ``model`` into ``out_dir``; returns the export's metadata."""
    import onnx
    import onnxruntime

    if model.tokenizer is None or not hasattr(model.tokenizer, "backend_tokenizer"):
        raise ExportError("the ONNX path needs a fast (Rust) tokenizer")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    raw = out_dir / "raw.onnx"
    cfg: Any = model.backbone.config
    try:
        _torch_export(model, raw)
        proto, fused = _fuse(raw, num_heads=int(cfg.num_attention_heads), hidden_size=int(cfg.hidden_size))
    finally:
        raw.unlink(missing_ok=True)
    meta: dict[str, Any] = {
        "recipe": RECIPE_VERSION,
        "quantized": quantize,
        "fused": fused,
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "torch": torch.__version__.split("+")[0],
        "inputs": list(INPUT_NAMES),
        "pad_id": int(model.tokenizer.pad_token_id or 0),
        "outputs": list(OUTPUT_NAMES),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    target = out_dir / MODEL_FILE
    if quantize:
        meta |= quantize_word_embedding(proto)
        meta |= quantize_linear(proto, target, calibration=calibration_inputs(model, calibration_texts()))
    else:
        onnx.save_model(proto, str(target))
        meta["embedding"] = "fp32"
    del proto
    meta |= externalize_weights(target)  # mapped once, shared by every session of a process
    save_tokenizer(model.tokenizer, out_dir / TOKENIZER_FILE)
    meta |= write_spm(out_dir, out_dir / TOKENIZER_FILE)
    meta["verify_max_abs_diff"] = _verify(model, out_dir, strict=not quantize)
    return meta


def _verify(model: CalmFirstModel, export_dir: Path, *, strict: bool) -> float:
    """Largest logit difference to PyTorch on a few texts; fp32 exports must be (numerically) exact."""
    onnx_model = OnnxCalmFirstModel.load(export_dir, model.config, threads=1)
    texts = list(_VERIFY_TEXTS)
    ref = model.logits(texts, batch_size=len(texts))
    got = onnx_model.logits(texts, batch_size=len(texts))
    diff = max(float(np.abs(ref[k] - got[k]).max()) for k in OUTPUT_NAMES)
    logger.info("ONNX export vs PyTorch: max |logit difference| %.2e", diff)
    if not np.isfinite(diff) or (strict and diff > FP32_TOLERANCE):
        raise ExportError(f"ONNX export disagrees with PyTorch (max |logit difference| {diff:.3g})")
    return diff
