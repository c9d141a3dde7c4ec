"""ONNX Runtime inference for CalmFirst: the same predictions, several times cheaper on a CPU.

Why this exists: PyTorch eager runs every BERT op on its own, in fp32, on batches
padded to their longest text. Here the merged model (LoRA folded in) is exported
once to ONNX and then

* fused by onnxruntime's transformer optimizer (attention, GELU and the residual
  LayerNorms each become one kernel),
* the attention projections run in int8 (``quantize_dynamic``: weights quantized
  once, activations per call); the FFN and the task heads stay fp32 because
  per-tensor activation scales lose too much there (measurements at
  ``QUANTIZE_GROUPS``),
* the 250k-row word-embedding table, which alone would be 384 MB of fp32 in every
  serving process, is stored as int8 with one scale per 32 values (96 MB). The
  shipped backbone was itself rebuilt from 4-bit blocks of 32, so this loses next
  to nothing, and only the looked-up rows are ever dequantized,
* texts are tokenized once, sorted by token count and padded per batch only to
  that batch's longest text, with the input order restored afterwards.

The export is cached next to the model (``<model>/onnx/<key>/``), or under
``~/.cache/calmfirst/onnx/<key>`` when the model folder is read-only. ``key`` hashes
the model config, the fine-tuned weights, the backbone's checksum, the export
recipe and the onnxruntime version, so new weights get a new export and a stale
one is never used. ``load_model`` falls back to PyTorch, with a warning, when
onnxruntime is not installed or the export fails.

A note on int8: activations are quantized with one scale per tensor per call, so a
text's scores can move in the third decimal depending on which texts share its
batch. The benchmark (``bench/run.py``) checks the task metrics on the test split.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import re
import shutil
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model.backbone import DEFAULT_BACKBONE, cache_dir, default_backbone_dir, sha256_file
from model.classifier import BACKBONE_SUBDIR, CONFIG_NAME, WEIGHTS_NAME, CalmFirstConfig, CalmFirstModel, Prediction

logger = logging.getLogger(__name__)

#: Bump when the export steps change: every cached export is then rebuilt.
RECIPE_VERSION = 1
EXPORT_SUBDIR = "onnx"
MODEL_FILE = "model.onnx"
META_FILE = "export.json"
TOKENIZER_FILE = "tokenizer.json"
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAMES = ("anger_logits", "type_logits", "multi_logits", "threat_logits")
#: Values per int8 scale in the word-embedding table (the backbone's own 4-bit block size).
EMBEDDING_BLOCK = 32
#: Which encoder layers run in int8 when quantizing. Dynamic quantization scales activations
#: per tensor (over the whole batch), so layers whose inputs have outlier channels lose the
#: most, and a text's scores depend a little on its batch-mates. Quantizing one group at a
#: time (runs/v1 after 2 epochs, test split, 510 messages; mean |anger.score change| and
#: anger-level agreement with PyTorch fp32): attention (fused QKV) 0.0055 / 98.0%,
#: attention_output 0.0019 / 99.4%, ffn_in 0.0099 / 96.1%, ffn_out (input after GELU, heavy
#: outliers) 0.0266 / 90.0%. On the shipped model (2 threads; 28-token message; F1 deltas
#: over evaluation batch sizes 1, 8, 32, 64):
#:   fp32                          ~13-16 ms, agreement 100%
#:   attention + attention_output  ~13.5 ms,  97.8%, calm_first/type F1 within +-0.0054   <- chosen
#:   + ffn_in                      ~10 ms,    95.5%, type F1 from +0.0031 to -0.0099
#:   + ffn_out (everything)        ~10 ms,    91.2%, calm_first F1 down to -0.0110
#: ffn_in would buy ~20% CPU but puts the F1 promise (within 0.01 of PyTorch) on a knife edge.
QUANTIZE_GROUPS: tuple[str, ...] = ("attention", "attention_output")
_GROUP_OPS = {"attention": "Attention", "attention_output": "MatMul", "ffn_in": "MatMul", "ffn_out": "MatMul"}
_GROUP_PATTERNS = {
    "attention": r"^Attention",
    "attention_output": r"attention/output/dense/MatMul$",
    "ffn_in": r"intermediate/dense/MatMul$",
    "ffn_out": r"layer\.\d+/output/dense/MatMul$",
}
#: fp32 export must match PyTorch this closely, or it is rejected (a broken export, not rounding).
FP32_TOLERANCE = 1e-3
BACKENDS = ("auto", "onnx", "torch")
#: onnxruntime's pool threads spin after each op waiting for more work. On a 2-core machine
#: that spinning takes the core the Python threads (HTTP server, tokenizer, policy) need.
ALLOW_SPINNING = os.environ.get("CALMFIRST_ORT_SPIN", "0") == "1"
#: Length bucketing: a batch takes texts up to PAD_RATIO x its shortest text's tokens, plus PAD_SLACK.
PAD_RATIO = 1.3
PAD_SLACK = 4

_VERIFY_TEXTS = (
    "你们的快递到现在还没到，已经等了一个星期了！",
    "請問退款要多久才會到帳？",
    "垃圾服务，再也不来了",
    "好",
)


class ExportError(RuntimeError):
    """The ONNX export could not be built or does not reproduce the PyTorch model."""


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


# --------------------------------------------------------------------- cache key
def _backbone_fingerprint(config: dict[str, Any], model_dir: Path) -> bytes:
    """What identifies the backbone weights the export is built from."""
    parts = [str(config.get("backbone", "")), str(config.get("backbone_checksum", ""))]
    if config.get("backbone_embedded"):
        sub = model_dir / BACKBONE_SUBDIR
        parts += [f"{f.name}:{sha256_file(f)}" for f in sorted(sub.iterdir()) if f.is_file()]
    else:
        # the local copy that from_pretrained resolves (cheap: its recorded checksum)
        name = str(config.get("backbone", ""))
        meta = (default_backbone_dir() if name == DEFAULT_BACKBONE else Path(name)) / "calmfirst_backbone.json"
        if meta.is_file():
            parts.append(str(json.loads(meta.read_text()).get("weights_sha256", "")))
    return "\n".join(parts).encode()


def export_key(model_dir: str | Path, *, quantize: bool) -> str:
    """Hash of everything the export depends on; a different key means a rebuild."""
    import onnxruntime

    model_dir = Path(model_dir)
    config_bytes = (model_dir / CONFIG_NAME).read_bytes()
    h = hashlib.sha256()
    for label, data in (
        ("recipe", str(RECIPE_VERSION).encode()),
        ("quantize", ("int8:" + ",".join(QUANTIZE_GROUPS)).encode() if quantize else b"fp32"),
        ("onnxruntime", onnxruntime.__version__.encode()),
        ("config", config_bytes),
        ("heads", sha256_file(model_dir / WEIGHTS_NAME).encode()),
        ("backbone", _backbone_fingerprint(json.loads(config_bytes), model_dir)),
    ):
        h.update(label.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()[:20]


def export_parents(model_dir: str | Path) -> list[Path]:
    """Where exports live, in order of preference: next to the model, then the user cache."""
    return [Path(model_dir) / EXPORT_SUBDIR, cache_dir() / "onnx"]


def _writable(parent: Path) -> bool:
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError:
        return False
    return True


def find_export(model_dir: str | Path, key: str) -> Path | None:
    """An existing, complete export for ``key`` (the meta file is written last)."""
    for parent in export_parents(model_dir):
        d = parent / key
        meta = d / META_FILE
        if meta.is_file() and (d / MODEL_FILE).is_file() and (d / TOKENIZER_FILE).is_file():
            try:
                if json.loads(meta.read_text()).get("key") == key:
                    return d
            except (OSError, ValueError):
                continue
    return None


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise builds between processes (``serve --workers N`` start together)."""
    import fcntl

    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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
    parent = next((p for p in export_parents(model_dir) if _writable(p)), None)
    if parent is None:
        raise ExportError(f"no writable place for the ONNX export of {model_dir}")
    with _file_lock(parent / ".lock"):
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
            _remove_stale(parent, keep=key, quantized=quantize)
        logger.warning("ONNX export ready in %.0f s: %s", time.perf_counter() - started, final)
        return final


def _remove_stale(parent: Path, *, keep: str, quantized: bool) -> None:
    """Older exports of this model folder (same precision) are dead weight: weights changed since."""
    for old in parent.iterdir():
        meta = old / META_FILE
        if old.name == keep or old.name.startswith(".") or not meta.is_file():
            continue
        try:
            same = json.loads(meta.read_text()).get("quantized") == quantized
        except (OSError, ValueError):
            same = False
        if same:
            logger.info("removing stale ONNX export %s", old)
            shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------ build
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
    with _quiet():
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


def quantize_word_embedding(proto: Any, *, block: int = EMBEDDING_BLOCK, chunk_rows: int = 16384) -> dict[str, Any]:
    """Replace the fp32 word-embedding Gather by an int8 table with one fp32 scale per ``block`` values.

    The graph becomes Gather(int8) -> Cast -> x scale (gathered per token), so only
    the rows of the tokens in a batch are ever dequantized. Returns what was done.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    pos, node = next(
        (
            (i, n)
            for i, n in enumerate(graph.node)
            if n.op_type == "Gather"
            and n.input[1] == INPUT_NAMES[0]
            and n.input[0] in inits
            and len(inits[n.input[0]].dims) == 2
        ),
        (None, None),
    )
    if node is None or pos is None:
        logger.warning("no word-embedding Gather on input_ids found; the table stays fp32")
        return {"embedding": "fp32"}
    table = numpy_helper.to_array(inits[node.input[0]])
    vocab, hidden = table.shape
    b = block if hidden % block == 0 else hidden
    nb = hidden // b
    q = np.empty((vocab, hidden), dtype=np.int8)
    scales = np.empty((vocab, nb), dtype=np.float32)
    max_err = 0.0
    for start in range(0, vocab, chunk_rows):  # bounded temporaries: the table is 384 MB
        w = table[start : start + chunk_rows].astype(np.float32).reshape(-1, nb, b)
        s = np.abs(w).max(axis=2) / 127.0
        safe = np.where(s > 0, s, 1.0)
        qi = np.clip(np.rint(w / safe[..., None]), -127, 127)
        max_err = max(max_err, float(np.abs(qi * s[..., None] - w).max()))
        q[start : start + chunk_rows] = qi.reshape(-1, hidden).astype(np.int8)
        scales[start : start + chunk_rows] = s
    name = node.input[0]
    graph.initializer.remove(inits[name])
    p = name.replace("/", "_") + "_q"
    out = node.output[0]
    ids = node.input[1]
    new_inits = [
        numpy_helper.from_array(q, p + "_int8"),
        numpy_helper.from_array(scales, p + "_scale"),
        numpy_helper.from_array(np.array([0, 0, nb, b], dtype=np.int64), p + "_blocks_shape"),
        numpy_helper.from_array(np.array([0, 0, hidden], dtype=np.int64), p + "_hidden_shape"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), p + "_last_axis"),
    ]
    new_nodes = [
        helper.make_node("Gather", [p + "_int8", ids], [p + "_rows"], name=p + "_gather_rows", axis=0),
        helper.make_node("Gather", [p + "_scale", ids], [p + "_row_scales"], name=p + "_gather_scales", axis=0),
        helper.make_node("Cast", [p + "_rows"], [p + "_rows_f"], name=p + "_cast", to=TensorProto.FLOAT),
        helper.make_node("Reshape", [p + "_rows_f", p + "_blocks_shape"], [p + "_blocks"], name=p + "_reshape_in"),
        helper.make_node("Unsqueeze", [p + "_row_scales", p + "_last_axis"], [p + "_scales_u"], name=p + "_unsq"),
        helper.make_node("Mul", [p + "_blocks", p + "_scales_u"], [p + "_deq"], name=p + "_mul"),
        helper.make_node("Reshape", [p + "_deq", p + "_hidden_shape"], [out], name=p + "_reshape_out"),
    ]
    graph.node.remove(node)
    for i, n in enumerate(new_nodes):
        graph.node.insert(pos + i, n)
    graph.initializer.extend(new_inits)
    logger.info("word embedding %dx%d -> int8, block %d, max abs error %.2e", vocab, hidden, b, max_err)
    return {"embedding": f"int8/block{b}", "embedding_max_abs_error": max_err}


def quantizable_nodes(proto: Any, groups: Sequence[str] = QUANTIZE_GROUPS) -> list[str]:
    """Names of the fused-graph nodes in the given groups (see ``QUANTIZE_GROUPS``)."""
    patterns = {name: re.compile(p) for name, p in _GROUP_PATTERNS.items()}
    out = []
    for node in proto.graph.node:
        for g in groups:
            op, pattern = _GROUP_OPS[g], patterns[g]
            if node.op_type == op and pattern.search(node.name):
                out.append(node.name)
                break
    return out


def _quantize_linear(proto: Any, out: Path) -> dict[str, Any]:
    """int8 weights (dynamic int8 activations) for the layer groups in ``QUANTIZE_GROUPS``.

    Everything else (the FFN down-projection, the task heads) stays fp32; see
    ``QUANTIZE_GROUPS`` for why. Returns what was quantized.
    """
    import onnx
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = quantizable_nodes(proto)
    if not nodes:
        logger.warning("no quantizable layers recognised in the exported graph; keeping it fp32")
        onnx.save_model(proto, str(out))
        return {"int8_layers": 0, "int8_groups": []}
    with _quiet():
        quantize_dynamic(
            proto,
            str(out),
            op_types_to_quantize=["MatMul", "Attention"],
            nodes_to_quantize=nodes,
            per_channel=False,
            reduce_range=False,
            weight_type=QuantType.QInt8,
            extra_options={"DefaultTensorType": TensorProto.FLOAT},
        )
    return {"int8_layers": len(nodes), "int8_groups": list(QUANTIZE_GROUPS)}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime's optimizer and quantizer log hundreds of INFO lines to the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


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
        meta |= _quantize_linear(proto, target)
    else:
        onnx.save_model(proto, str(target))
        meta["embedding"] = "fp32"
    del proto
    save_tokenizer(model.tokenizer, out_dir / TOKENIZER_FILE)
    meta["verify_max_abs_diff"] = _verify(model, out_dir, strict=not quantize)
    return meta


def _verify(model: CalmFirstModel, export_dir: Path, *, strict: bool) -> float:
    """Largest logit difference to PyTorch on a few texts; fp32 exports must be (numerically) exact."""
    onnx_model = OnnxCalmFirstModel.load(export_dir, model.config, threads=1)
    texts = list(_VERIFY_TEXTS)
    ref = model.predict_logits(texts, batch_size=len(texts))
    got = onnx_model.predict_logits(texts, batch_size=len(texts))
    diff = max(float((ref[k] - got[k]).abs().max()) for k in OUTPUT_NAMES)
    logger.info("ONNX export vs PyTorch: max |logit difference| %.2e", diff)
    if not np.isfinite(diff) or (strict and diff > FP32_TOLERANCE):
        raise ExportError(f"ONNX export disagrees with PyTorch (max |logit difference| {diff:.3g})")
    return diff


# ------------------------------------------------------------------- inference
def _session(path: Path, *, threads: int | None) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or available_cores()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if not ALLOW_SPINNING:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class OnnxCalmFirstModel:
    """Drop-in for a loaded ``CalmFirstModel``: ``config``, ``predict``, ``predict_logits``, ``scores_from_logits``.

    Loading a cached export needs neither the backbone nor transformers, which keeps
    a serving process small and quick to start.
    """

    backend = "onnx"

    def __init__(self, session: Any, tokenizer: Any, config: CalmFirstConfig, *, export_dir: Path) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.config = config
        self.export_dir = export_dir
        meta_file = export_dir / META_FILE
        self.export_meta: dict[str, Any] = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        self.pad_id = int(self.export_meta.get("pad_id", _pad_id(tokenizer)))
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=config.max_length)

    @classmethod
    def load(cls, export_dir: Path, config: CalmFirstConfig, *, threads: int | None = None) -> OnnxCalmFirstModel:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(export_dir / TOKENIZER_FILE))
        return cls(_session(export_dir / MODEL_FILE, threads=threads), tokenizer, config, export_dir=export_dir)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, quantize: bool = True, threads: int | None = None
    ) -> OnnxCalmFirstModel:
        """Load a model folder through its cached export (built on first use)."""
        path = Path(path)
        export_dir = ensure_export(path, quantize=quantize)
        config = CalmFirstConfig.from_dict(json.loads((path / CONFIG_NAME).read_text()))
        return cls.load(export_dir, config, threads=threads)

    @property
    def quantized(self) -> bool:
        return bool(self.export_meta.get("quantized", False))

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "quantized": self.quantized, "export_dir": str(self.export_dir)}

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
        """
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

    def predict_logits(self, texts: Sequence[str], *, batch_size: int = 32) -> dict[str, torch.Tensor]:
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
        return {k: torch.from_numpy(v) for k, v in out.items()}

    def scores_from_logits(self, logits: dict[str, torch.Tensor]) -> list[Prediction]:
        return CalmFirstModel.scores_from_logits(self, logits)  # type: ignore[arg-type]  # uses only .config

    def predict(self, texts: str | Iterable[str], *, batch_size: int = 32) -> Any:
        """Score one text (returns one ``Prediction``) or many (returns a list), exactly as ``CalmFirstModel``."""
        return CalmFirstModel.predict(self, texts, batch_size=batch_size)  # type: ignore[arg-type]


def _pad_id(tokenizer: Any) -> int:
    for token in ("<pad>", "[PAD]"):
        tid = tokenizer.token_to_id(token)
        if tid is not None:
            return int(tid)
    return 0


def load_model(
    path: str | Path, *, backend: str = "auto", quantize: bool = True, threads: int | None = None
) -> CalmFirstModel | OnnxCalmFirstModel:
    """The model for serving and scoring: ONNX Runtime when it can be had, else merged PyTorch.

    ``backend``: ``auto`` or ``onnx`` try onnxruntime and fall back to PyTorch with a
    warning (missing package, failed export); ``torch`` skips it.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    path = Path(path)
    if not (path / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{path} is not a CalmFirst model folder (no {CONFIG_NAME})")
    if backend != "torch":
        if not onnxruntime_available():
            logger.warning(
                "onnxruntime is not installed: using PyTorch, which is several times slower "
                "(install the fast extra: pip install 'calmfirst[fast]')"
            )
        else:
            try:
                return OnnxCalmFirstModel.from_pretrained(path, quantize=quantize, threads=threads)
            except Exception as e:  # any export/load failure must leave a working service
                logger.warning("ONNX backend unavailable (%s: %s); falling back to PyTorch", type(e).__name__, e)
    if threads:
        torch.set_num_threads(threads)
    return CalmFirstModel.from_pretrained(path, merge_adapters=True)
