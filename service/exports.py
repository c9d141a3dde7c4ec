"""The ONNX exports a server loads, built ahead of it (``make backbone``; ``make bench`` before its servers).

Why ahead: a server that finds no export builds it in its own process, which then keeps PyTorch loaded
(~1.7 GB RSS, ~5 GB at peak) until it restarts, and a benchmark would report that one-time build as the
server's memory. One list, so that ``calmfirst prepare-backbone --exports`` and the bench build the same.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

#: the customer model's export (returns its folder)
MODEL = "model"
#: the agent-turn model's encoder export (loading the detector builds it once and caches it)
AGENT_ENCODER = "agent-turn encoder"


def server_exports(model_dir: str | Path, *, quantize: bool, threads: int | None) -> dict[str, Callable[[], Any]]:
    """Name -> a call that builds (or finds in the cache) one export the server loads."""
    from model.onnx import ensure_export
    from service.routing.agent_model import load_agent_detector

    return {
        MODEL: lambda: ensure_export(model_dir, quantize=quantize),
        AGENT_ENCODER: lambda: load_agent_detector(threads=threads),
    }
