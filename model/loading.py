"""The model for serving and scoring: ONNX Runtime when it can be had, else merged PyTorch.

With onnxruntime installed and the export of the model already cached, nothing here imports
PyTorch: the export is found by its key (``model.onnx.cache``) and run by ``model.onnx.runtime``.
PyTorch is imported only to build a missing export (once per model) or to fall back.
"""

from __future__ import annotations

import logging
from pathlib import Path

from model.config import CONFIG_NAME, read_config
from model.onnx.cache import export_key, find_export
from model.onnx.runtime import BACKENDS, OnnxCalmFirstModel, check_spin, onnxruntime_available
from model.scores import ScoringModel

logger = logging.getLogger(__name__)


def export_dir_for(path: str | Path, *, quantize: bool) -> Path:
    """The cached export of a model folder; a missing one is built first (the one step that needs PyTorch)."""
    found = find_export(path, export_key(path, quantize=quantize))
    if found is not None:
        logger.info("using cached ONNX export %s", found)
        return found
    from model.onnx.export import ensure_export

    return ensure_export(path, quantize=quantize)


def load_onnx(
    path: str | Path, *, quantize: bool = True, threads: int | None = None, spin: str = "forward"
) -> OnnxCalmFirstModel:
    """A model folder through its cached export (built on first use, which needs PyTorch)."""
    path = Path(path)
    config = read_config(path)
    return OnnxCalmFirstModel.load(export_dir_for(path, quantize=quantize), config, threads=threads, spin=spin)


def load_model(
    path: str | Path,
    *,
    backend: str = "auto",
    quantize: bool = True,
    threads: int | None = None,
    spin: str = "forward",
) -> ScoringModel:
    """The model for serving and scoring: ONNX Runtime when it can be had, else merged PyTorch.

    ``backend``: ``auto`` or ``onnx`` try onnxruntime and fall back to PyTorch with a
    warning (missing package, failed export); ``torch`` skips it. With ONNX Runtime and a
    cached export, PyTorch is never imported. ``spin``: how ONNX Runtime's threads wait between
    ops (``model.onnx.runtime.SPIN_MODES``; ``forward``, the default of scoring and the server since 2026-12-03).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    check_spin(spin)  # a wrong value is an error, not a silent fall-back to PyTorch
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
                return load_onnx(path, quantize=quantize, threads=threads, spin=spin)
            except Exception as e:  # any export/load failure must leave a working service
                logger.warning("ONNX backend unavailable (%s: %s); falling back to PyTorch", type(e).__name__, e)
    import torch

    from model.classifier import CalmFirstModel

    if threads:
        torch.set_num_threads(threads)
    return CalmFirstModel.from_pretrained(path, merge_adapters=True)
