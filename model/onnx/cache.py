"""The export cache: the key of an export, where exports live, and the lock a build holds.

The export is cached next to the model (``<model>/onnx/<key>/``), or under
``~/.cache/calmfirst/onnx/<key>`` when the model folder is read-only. ``key`` hashes the model
config, the fine-tuned weights, the backbone's checksum, the export recipe and the onnxruntime
version, so new weights get a new export and a stale one is never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from filelock import FileLock

from model.backbone import DEFAULT_BACKBONE, cache_dir, default_backbone_dir, sha256_file
from model.config import BACKBONE_SUBDIR, CONFIG_NAME, WEIGHTS_NAME
from model.onnx.quantize import (
    CALIBRATION_TEXTS,
    FFN_OUT_INT8_FROM,
    NBITS_ACCURACY,
    NBITS_BITS,
    NBITS_BLOCK,
    NBITS_GROUPS,
    QUANTIZE_GROUPS,
    SMOOTH_ALPHA,
)

logger = logging.getLogger(__name__)

#: Bump when the export steps change: every cached export is then rebuilt.
RECIPE_VERSION = 4  # 2: per-channel attention, MatMulNBits FFN, a SentencePiece copy of the tokenizer;
# 3: the weights beside the graph, checksummed (``model.onnx.weights``), shared by the sessions of a process;
# 4: SmoothQuant (``model.onnx.quantize``): attention smoothed, most of the FFN int8 too; task heads kept fp32
EXPORT_SUBDIR = "onnx"
MODEL_FILE = "model.onnx"
META_FILE = "export.json"
TOKENIZER_FILE = "tokenizer.json"
#: The same tokenizer as a SentencePiece model (when it is one): a fifth of the memory, several times faster.
SPM_FILE = "tokenizer.spm"
INPUT_NAMES = ("input_ids", "attention_mask")


def backbone_fingerprint(config: dict[str, Any], model_dir: Path) -> bytes:
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
        ("quantize", _quantize_spec().encode() if quantize else b"fp32"),
        ("onnxruntime", onnxruntime.__version__.encode()),
        ("config", config_bytes),
        ("heads", sha256_file(model_dir / WEIGHTS_NAME).encode()),
        ("backbone", backbone_fingerprint(json.loads(config_bytes), model_dir)),
    ):
        h.update(label.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()[:20]


def _quantize_spec() -> str:
    nbits = f"nbits{NBITS_BITS}/{NBITS_BLOCK}/{NBITS_ACCURACY}:" + ",".join(NBITS_GROUPS)
    smooth = (
        "smoothquant:"
        + ",".join(f"{k}={v}" for k, v in sorted(SMOOTH_ALPHA.items()))
        + f"@{FFN_OUT_INT8_FROM}/{CALIBRATION_TEXTS}"
    )
    return "int8-per-channel:" + ",".join(QUANTIZE_GROUPS) + ";" + nbits + ";" + smooth


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
                info = json.loads(meta.read_text())
                weights = info.get("external_weights", {}).get("file")
                if info.get("key") == key and (weights is None or (d / weights).is_file()):
                    return d
            except (OSError, ValueError):
                continue
    return None


def writable_parent(model_dir: str | Path) -> Path | None:
    """The first place an export of ``model_dir`` can be written, or None."""
    return next((p for p in export_parents(model_dir) if _writable(p)), None)


def build_lock(parent: Path) -> FileLock:
    """Serialises builds between processes (``serve --workers N`` start together)."""
    return FileLock(str(parent / ".lock"))


def remove_stale(parent: Path, *, keep: str, quantized: bool) -> None:
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
