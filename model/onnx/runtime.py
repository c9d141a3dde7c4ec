"""Serving from an ONNX export: ``OnnxCalmFirstModel``, without PyTorch.

Loading a cached export needs neither the backbone, nor transformers, nor PyTorch (the tokenizer
is SentencePiece, ``tokenizer.spm``, when the export has one, else the plain ``tokenizers`` one;
post-processing is ``model.scores`` in numpy), which keeps a serving process small and quick to
start. Texts are tokenized once, sorted by token count and padded per batch only to that batch's
longest text, with the input order restored afterwards.

A note on int8: activations are quantized with one scale per tensor per call, so a text's scores
can move in the third decimal depending on which texts share its batch. The benchmark
(``bench/run.py``) checks the task metrics on the test split.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from model.config import CalmFirstConfig
from model.onnx.cache import META_FILE, MODEL_FILE
from model.onnx.spm import load_tokenizer
from model.onnx.weights import SharedWeights
from model.scores import OUTPUT_NAMES, predict_texts

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "onnx", "torch")
#: How onnxruntime's pool threads wait for work between ops (``spin``; ``CALMFIRST_ORT_SPIN``):
#:
#: - ``forward``: spin between the ops of one forward pass, stop the moment it returns
#:   (``session.force_spinning_stop``). A short message runs ~150 small ops; a pool thread that
#:   sleeps between them is woken ~150 times per forward, which cost a single message a third of
#:   its time on the 2-core bench machine (in process, 300 messages of 20-60 characters, median of
#:   4 alternating rounds: p50 11.1 ms never spinning, 8.3 ms spinning; batches of 32: 108 vs 122
#:   messages/s). The default of batch scoring (``calmfirst score``, ``qa``) and of the server, whose
#:   micro-batcher runs one forward at a time: requests arriving meanwhile wait for the next one.
#: - ``never``: for a host whose other processes need the cores during forwards. With two forward
#:   slots, spinning cost 15% of the server's throughput at 8 concurrent clients (two forwards'
#:   threads spinning against each other on 2 cores); ``make bench`` measures that variant too.
#: - ``always``: onnxruntime's own default, which also keeps spinning for a while after a forward.
SpinMode = Literal["forward", "never", "always"]
SPIN_MODES: tuple[str, ...] = get_args(SpinMode)
#: Length bucketing: a batch takes texts up to PAD_RATIO x its shortest text's tokens, plus PAD_SLACK.
PAD_RATIO = 1.3
PAD_SLACK = 4
#: The most texts one int8 forward pass takes, whatever batch size the caller asks for. int8 activations are
#: scaled per tensor over the whole forward batch, so a text's scores depend a little on its batch-mates and
#: drift further from PyTorch fp32 as the batch grows (test split, make bench 2026-12-05 18:39: Simplified
#: type macro-F1 +0.0106 at batch 64, +0.0052 at 32, -0.0003 at 1). Chosen on dev by a rule written before
#: the run (2,172 records, requested batch 64; worst per-script F1 change / mean agreement / msg/s in process):
#: no cap 0.0045 / 98.39% / 204; 32: 0.0030 / 98.30% / 223  <- chosen; 16: 0.0052 / 98.18% / 228.
#: Smaller forwards are no slower here (the activations of 32 texts stay in cache). fp32 exports are not capped.
MAX_INT8_FORWARD_BATCH = 32


def onnxruntime_available() -> bool:
    """True when onnxruntime (the ``fast`` extra) can be imported."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def available_cores() -> int:
    """Cores this process may run on (respects CPU affinity and container pinning)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def check_spin(spin: str) -> str:
    if spin not in SPIN_MODES:
        raise ValueError(f"spin must be one of {', '.join(SPIN_MODES)}, got {spin!r}")
    return spin


def _session(path: Path, *, threads: int | None, spin: str = "forward", shared: SharedWeights | None = None) -> Any:
    """A CPU session of ``path``; with ``shared``, its weights are those buffers (no copy of its own)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or available_cores()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0" if check_spin(spin) == "never" else "1")
    if spin == "forward":
        so.add_session_config_entry("session.force_spinning_stop", "1")
    if shared is not None:
        shared.add_to(so)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class OnnxCalmFirstModel:
    """The ONNX Runtime model; implements ``model.scores.ScoringModel`` like ``CalmFirstModel``."""

    backend = "onnx"

    def __init__(
        self,
        session: Any,
        tokenizer: Any,
        config: CalmFirstConfig,
        *,
        export_dir: Path,
        shared: SharedWeights | None = None,
        spin: str = "forward",
    ) -> None:
        self.session = session
        self.shared = shared  # the buffers the session runs on: must live as long as it does
        self.spin = spin
        self.tokenizer = tokenizer
        self.config = config
        self.export_dir = export_dir
        meta_file = export_dir / META_FILE
        self.export_meta: dict[str, Any] = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        self.pad_id = int(self.export_meta.get("pad_id", _pad_id(tokenizer)))
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=config.max_length)

    @classmethod
    def load(
        cls, export_dir: Path, config: CalmFirstConfig, *, threads: int | None = None, spin: str = "forward"
    ) -> OnnxCalmFirstModel:
        """``spin``: how the pool threads wait between ops (``SPIN_MODES``)."""
        tokenizer = load_tokenizer(export_dir)  # tokenizer.spm (SentencePiece) when there is one, else the JSON
        model_file = export_dir / MODEL_FILE
        shared = SharedWeights.of(model_file)
        session = _session(model_file, threads=threads, spin=spin, shared=shared)
        return cls(session, tokenizer, config, export_dir=export_dir, shared=shared, spin=spin)

    def lanes(self, count: int, *, threads: int = 1) -> list[OnnxCalmFirstModel]:
        """``count`` more sessions of this export, ``threads`` each, for forwards that run side by side.

        They share this model's weights (``model.onnx.weights``: ~25 MB each for what ONNX Runtime
        pre-packs, instead of a copy of the export) and its tokenizer (SentencePiece and ``tokenizers``
        encode from several threads at once). ``service.microbatch`` runs them under concurrent load.
        """
        model_file = self.export_dir / MODEL_FILE
        return [
            OnnxCalmFirstModel(
                _session(model_file, threads=threads, spin=self.spin, shared=self.shared),
                self.tokenizer,
                self.config,
                export_dir=self.export_dir,
                shared=self.shared,
                spin=self.spin,
            )
            for _ in range(count)
        ]

    @property
    def quantized(self) -> bool:
        return bool(self.export_meta.get("quantized", False))

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids (prefixed, truncated, special tokens added), unpadded."""
        prefix = self.config.text_prefix
        return [e.ids for e in self.tokenizer.encode_batch([prefix + t for t in texts])]

    def batches(self, ids: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
        """Indices grouped for forward passes: sorted by token count, at most ``batch_size`` each.

        A batch also ends where the next text is much longer than the batch's shortest
        (``PAD_RATIO``): on a CPU, batching buys little (about 1.2x at 4-8 similar texts)
        while padding short texts to a long one's length costs its full compute. This is
        what keeps micro-batches of unrelated HTTP requests from being slower than singles.
        An int8 export takes at most ``MAX_INT8_FORWARD_BATCH`` texts per pass.
        """
        if self.quantized:
            batch_size = min(batch_size, MAX_INT8_FORWARD_BATCH)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out: list[list[int]] = []
        current: list[int] = []
        for i in order:
            if current and (len(current) >= batch_size or len(ids[i]) > len(ids[current[0]]) * PAD_RATIO + PAD_SLACK):
                out.append(current)
                current = []
            current.append(i)
        if current:
            out.append(current)
        return out

    def logits(self, texts: Sequence[str], *, batch_size: int = 32) -> dict[str, np.ndarray]:
        """Head outputs for many texts: length-bucketed batches, returned in input order."""
        if not texts:
            return {}
        ids = self.encode(texts)
        out: dict[str, np.ndarray] = {}
        for idx in self.batches(ids, batch_size):
            width = len(ids[idx[-1]])
            input_ids = np.full((len(idx), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                n = len(ids[i])
                input_ids[row, :n] = ids[i]
                mask[row, :n] = 1
            results = self.session.run(list(OUTPUT_NAMES), {"input_ids": input_ids, "attention_mask": mask})
            for name, value in zip(OUTPUT_NAMES, results, strict=True):
                if name not in out:
                    out[name] = np.empty((len(ids), *value.shape[1:]), dtype=value.dtype)
                out[name][idx] = value
        return out

    def predict(self, texts: str | Iterable[str], *, batch_size: int = 32) -> Any:
        """Score one text (returns one ``Prediction``) or many (returns a list), exactly as ``CalmFirstModel``."""
        return predict_texts(self, texts, batch_size=batch_size)


def _pad_id(tokenizer: Any) -> int:
    for token in ("<pad>", "[PAD]"):
        tid = tokenizer.token_to_id(token)
        if tid is not None:
            return int(tid)
    return 0
