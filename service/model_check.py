"""A model folder checked before anything loads: a missing or corrupt file is an error naming the file.

Loading a broken folder fails deep inside safetensors, transformers or ONNX Runtime with messages that
do not say which file is at fault ("MetadataIncompleteBuffer"), or worse, half-way through a server's
start. :func:`check_model_dir` reads every file the model needs, cheaply and without PyTorch: the
config must parse, each safetensors file must hold a readable header whose tensors fill the file to
the byte (a truncated or padded download fails here), the tokenizer must parse. ``Analyzer.from_settings``
runs it first, so ``calmfirst serve`` refuses to start (and the app's startup fails) instead of
serving half-loaded, and ``score`` / ``qa`` stop before reading their input.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from model.backbone import DEFAULT_BACKBONE, default_backbone_dir
from model.config import BACKBONE_SUBDIR, CONFIG_NAME, WEIGHTS_NAME, CalmFirstConfig

#: bytes per element of the safetensors dtypes
_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
_MAX_HEADER = 100 * 1024 * 1024


class ModelFolderError(ValueError):
    """A model folder that cannot be loaded; the message starts with the file at fault."""

    def __init__(self, file: Path, problem: str) -> None:
        super().__init__(f"{file}: {problem}")
        self.file = file
        self.problem = problem


def _json_file(path: Path) -> Any:
    if not path.is_file():
        raise ModelFolderError(path, "missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ModelFolderError(path, f"not UTF-8 text (byte {e.start}): corrupt") from None
    except (ValueError, RecursionError) as e:
        raise ModelFolderError(path, f"not valid JSON ({e}): corrupt or truncated") from None


def check_safetensors(path: Path) -> None:
    """The header parses and the tensors it lists fill the file exactly."""
    if not path.is_file():
        raise ModelFolderError(path, "missing")
    size = path.stat().st_size
    if size < 8:
        raise ModelFolderError(path, f"truncated ({size} bytes)")
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > min(size - 8, _MAX_HEADER):
            raise ModelFolderError(path, f"corrupt or truncated: header of {n} bytes in a file of {size}")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError):
            raise ModelFolderError(path, "corrupt: the header is not JSON") from None
    if not isinstance(header, dict):
        raise ModelFolderError(path, "corrupt: the header is not a JSON object")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = (int(x) for x in entry["data_offsets"])
            count = math.prod(int(d) for d in entry["shape"])
            width = _DTYPE_BYTES[entry["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise ModelFolderError(path, f"corrupt: tensor {name!r} badly described") from None
        if stop - start != count * width or start < 0:
            raise ModelFolderError(path, f"corrupt: tensor {name!r} has {stop - start} bytes for {count} values")
        end = max(end, stop)
    if 8 + n + end != size:
        what = "truncated" if 8 + n + end > size else "has trailing bytes"
        raise ModelFolderError(path, f"{what}: the tensors end at byte {8 + n + end}, the file has {size}")


def _check_encoder(folder: Path) -> None:
    """A transformers folder: config, weights, tokenizer."""
    _json_file(folder / "config.json")
    weights = folder / "model.safetensors"
    if weights.exists() or not (folder / "pytorch_model.bin").is_file():
        check_safetensors(weights)
    tokenizer = folder / "tokenizer.json"
    if tokenizer.exists() or not (folder / "vocab.txt").is_file():
        _json_file(tokenizer)


def check_model_dir(path: str | Path) -> CalmFirstConfig:
    """Every file the model in ``path`` needs, checked; its config. Raises :class:`ModelFolderError`."""
    path = Path(path)
    if not path.is_dir():
        raise ModelFolderError(path, "no such model folder")
    raw = _json_file(path / CONFIG_NAME)
    if not isinstance(raw, dict):
        raise ModelFolderError(path / CONFIG_NAME, "not a JSON object")
    try:
        config = CalmFirstConfig.from_dict(raw)
    except (TypeError, ValueError) as e:
        raise ModelFolderError(path / CONFIG_NAME, f"invalid: {e}") from None
    check_safetensors(path / WEIGHTS_NAME)
    if config.backbone_embedded:
        _check_encoder(path / BACKBONE_SUBDIR)
    else:
        # the prepared bundled copy or a local folder; a missing bundled copy is prepared at load, a hub id
        # is the hub's business
        backbone = default_backbone_dir() if config.backbone == DEFAULT_BACKBONE else Path(config.backbone)
        if backbone.is_dir() and (backbone / "config.json").exists():
            _check_encoder(backbone)
        elif config.backbone != DEFAULT_BACKBONE and os.sep in config.backbone:
            raise ModelFolderError(backbone, "backbone folder named in the model's config is missing")
    return config
