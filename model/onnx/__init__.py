"""ONNX Runtime inference for CalmFirst: the same predictions, several times cheaper on a CPU.

Why this exists: PyTorch eager runs every BERT op on its own, in fp32, on batches
padded to their longest text. Here the merged model (LoRA folded in) is exported
once to ONNX and then

* fused by onnxruntime's transformer optimizer (attention, GELU and the residual
  LayerNorms each become one kernel),
* the attention projections run in int8 (``quantize_dynamic``: per-channel weights
  quantized once, activations per call), and so does most of the feed-forward
  network after SmoothQuant has moved its input's outlier channels into the weights
  (calibrated on the project's own written messages); the lower layers'
  second FFN projection, where that does not hold up, runs as 8-bit ``MatMulNBits``,
  whose int8 kernel scales its input per row and block (one per-tensor scale lost
  too much there: measurements at ``QUANTIZE_GROUPS`` and ``SMOOTH_ALPHA``); the
  task heads stay fp32,
* the 250k-row word-embedding table, which alone would be 384 MB of fp32 in every
  serving process, is stored as int8 with one scale per 32 values (96 MB). The
  shipped backbone was itself rebuilt from 4-bit blocks of 32, so this loses next
  to nothing, and only the looked-up rows are ever dequantized,
* texts are tokenized once, sorted by token count and padded per batch only to
  that batch's longest text, with the input order restored afterwards; the
  tokenizer runs as a SentencePiece model when it is one (``spm``: the same ids,
  a fifth of the memory of ``tokenizer.json`` loaded by ``tokenizers``).

The export is cached next to the model (``<model>/onnx/<key>/``), or under
``~/.cache/calmfirst/onnx/<key>`` when the model folder is read-only. ``key`` hashes
the model config, the fine-tuned weights, the backbone's checksum, the export
recipe and the onnxruntime version, so new weights get a new export and a stale
one is never used. ``model.loading.load_model`` falls back to PyTorch, with a warning, when
onnxruntime is not installed or the export fails.

A note on int8: activations are quantized with one scale per tensor per call, so a
text's scores can move in the third decimal depending on which texts share its
batch. The benchmark (``bench/run.py``) checks the task metrics on the test split.

The package: ``cache`` (export key, where exports live, the build lock), ``export`` (PyTorch ->
ONNX, fused, verified), ``quantize`` (int8 attention, FFN and word-embedding table), ``spm`` (the
SentencePiece tokenizer), ``weights`` (the weights beside the graph, mapped once per process and shared
by its sessions and by exports of the same backbone), ``runtime`` (``OnnxCalmFirstModel``, and its
one-thread ``lanes``), ``encoder`` (the agent-turn
sentence encoder's export and runtime); ``model.loading.load_model`` picks the backend. Only
building an export (``export``, and ``encoder``'s build) imports PyTorch: serving from a cached
export imports ``runtime``, ``spm``, ``weights`` and ``cache`` (with ``quantize``'s constants), no PyTorch.
"""

from __future__ import annotations

from typing import Any

from model.onnx.cache import EXPORT_SUBDIR, META_FILE, export_key, find_export
from model.onnx.runtime import BACKENDS, OnnxCalmFirstModel, available_cores, onnxruntime_available

__all__ = [
    "BACKENDS",
    "EXPORT_SUBDIR",
    "META_FILE",
    "ExportError",
    "OnnxCalmFirstModel",
    "available_cores",
    "build_export",
    "ensure_export",
    "export_key",
    "find_export",
    "onnxruntime_available",
]
_EXPORT_NAMES = {"ExportError", "build_export", "ensure_export"}


def __getattr__(name: str) -> Any:
    # the exporter needs PyTorch: imported when asked for, so importing the package never loads it
    if name in _EXPORT_NAMES:
        from model.onnx import export

        return getattr(export, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
