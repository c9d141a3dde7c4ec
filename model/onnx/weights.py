"""Weights beside the graph (``model.onnx.data``), mapped once and shared by every session of a process.

Why: the serving process runs more than one ONNX Runtime session of the same export. Under
concurrent load, one single-threaded session per core ("lanes", ``service.microbatch``) gets more
out of the cores than one session whose forward is split over them (2-core Intel Xeon, 1,000 bench
messages one at a time: 139 messages/s through one 2-thread session, 156 through two 1-thread
sessions side by side). A session that parses its own copy of a 131 MB export costs ~140 MB, so
three would break the server's 500 MB budget. Here the large tensors are written once to
``WEIGHTS_FILE`` (each at a ``WEIGHTS_ALIGN`` boundary), mapped read-only once
(:class:`SharedWeights`) and handed to every session as pre-allocated initializers
(``SessionOptions.add_initializer``): a further session then costs only what ONNX Runtime
pre-packs for its kernels (~25 MB), and of the 96 MB int8 word-embedding table only the pages of
rows actually looked up become resident (file-backed, shared between worker processes,
reclaimable). Loading needs no transient copy of the weights either.

Across exports too: the classifier and the agent-turn encoder (``model.onnx.encoder``) are built
from the same backbone, and their int8 word-embedding tables (96 MB, with 12 MB of scales) are the
same bytes. Each external tensor carries the SHA-1 of its bytes (the ONNX external-data
``checksum`` key), and a tensor whose checksum, type and shape a process has already mapped is
handed over from the first mapping (``_REGISTRY``): the server keeps one table, not two
(``bench/server_memory.json``).
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import numpy as np

#: The weights, next to ``model.onnx``: tensors of ``WEIGHTS_ALIGN`` bytes or more, each aligned to it.
WEIGHTS_FILE = "model.onnx.data"
WEIGHTS_ALIGN = 64 * 1024


def externalize_weights(model_file: Path, *, align: int = WEIGHTS_ALIGN) -> dict[str, Any]:
    """Move the large initializers of ``model_file`` to ``WEIGHTS_FILE`` beside it, each at an ``align``-byte
    offset: ONNX Runtime memory-maps such external data (aligned to the page size) rather than copying it,
    and :class:`SharedWeights` maps it once for several sessions."""
    import onnx
    from onnx.external_data_helper import set_external_data

    proto = onnx.load(str(model_file))
    moved = 0
    with open(model_file.with_name(WEIGHTS_FILE), "wb") as f:
        for t in proto.graph.initializer:
            if not t.HasField("raw_data") or len(t.raw_data) < align:
                continue
            f.write(b"\0" * (-f.tell() % align))
            offset = f.tell()
            f.write(t.raw_data)
            set_external_data(t, WEIGHTS_FILE, offset, len(t.raw_data), checksum=hashlib.sha1(t.raw_data).hexdigest())
            t.ClearField("raw_data")
            t.data_location = onnx.TensorProto.EXTERNAL
            moved += 1
    onnx.save_model(proto, str(model_file))
    return {"external_weights": {"file": WEIGHTS_FILE, "tensors": moved, "align": align}}


#: Tensors this process has mapped, by (checksum, ONNX type, shape): the value and the array it views.
_REGISTRY: dict[tuple[str, int, tuple[int, ...]], tuple[Any, np.ndarray]] = {}
_REGISTRY_LOCK = threading.Lock()


class SharedWeights:
    """The external initializers of one export as ONNX Runtime values over one read-only mapping.

    Every session built with :meth:`add_to` uses these buffers instead of reading its own copy;
    the object must outlive those sessions (sessions created through ``model.onnx.runtime`` keep a
    reference to it). A tensor with the same checksum, type and shape as one mapped before in this
    process (another export of the same backbone) reuses that one (``reused`` counts them).
    """

    def __init__(self, model_file: Path) -> None:
        import onnx
        import onnxruntime as ort
        from onnx import helper

        proto = onnx.load(str(model_file), load_external_data=False)
        self.model_file = model_file
        self.values: dict[str, Any] = {}
        self.reused = 0
        self._maps: dict[Path, np.memmap] = {}
        with _REGISTRY_LOCK:
            for t in proto.graph.initializer:
                if t.data_location != onnx.TensorProto.EXTERNAL:
                    continue
                info = {e.key: e.value for e in t.external_data}
                key = (info["checksum"], int(t.data_type), tuple(t.dims)) if "checksum" in info else None
                if key is not None and key in _REGISTRY:
                    self.values[t.name] = _REGISTRY[key][0]
                    self.reused += 1
                    continue
                path = model_file.parent / info["location"]
                if path not in self._maps:
                    self._maps[path] = np.memmap(path, dtype=np.uint8, mode="r")
                start, length = int(info.get("offset", 0)), int(info["length"])
                dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
                data = self._maps[path][start : start + length].view(dtype).reshape(tuple(t.dims))
                self.values[t.name] = ort.OrtValue.ortvalue_from_numpy(data)
                if key is not None:
                    _REGISTRY[key] = (self.values[t.name], data)  # the array keeps its mapping alive

    @classmethod
    def of(cls, model_file: Path) -> SharedWeights | None:
        """The shared weights of an export that keeps them beside the graph, else None (ONNX Runtime reads them)."""
        return cls(model_file) if has_external_weights(model_file) else None

    def __len__(self) -> int:
        return len(self.values)

    def add_to(self, options: Any) -> None:
        """Give ``options`` (an ``onnxruntime.SessionOptions``) every shared tensor."""
        for name, value in self.values.items():
            options.add_initializer(name, value)


def has_external_weights(model_file: Path) -> bool:
    """Whether an export keeps its weights in ``WEIGHTS_FILE`` (recipe 3 and the agent-turn encoder)."""
    return model_file.with_name(WEIGHTS_FILE).is_file()
