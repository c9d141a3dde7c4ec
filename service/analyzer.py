"""One object that turns texts into contract results: model + policy + playbook.

Shared by the HTTP API and the batch CLI so both answer identically.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from data.script import detect_script
from data.vocab import SCRIPT_LANG, Script
from model.classifier import CalmFirstModel, Prediction
from model.onnx import OnnxCalmFirstModel, load_model
from service.microbatch import MicroBatcher
from service.playbook import Playbook
from service.policy import Policy

logger = logging.getLogger(__name__)


class Analyzer:
    def __init__(
        self,
        model: CalmFirstModel | OnnxCalmFirstModel,
        *,
        policy: Policy | None = None,
        playbook: Playbook | None = None,
        batch_size: int = 32,
        default_script: str = "hans",
        microbatch_wait_ms: float = 2.0,
        microbatch_max_size: int = 1,
    ) -> None:
        from service.settings import DEFAULT_PLAYBOOK

        self.model = model
        self.policy = policy or Policy()
        self.playbook = playbook or Playbook.load(DEFAULT_PLAYBOOK)
        self.batch_size = batch_size
        self.default_script = default_script
        # single-text calls from concurrent threads (the HTTP API) can share one forward pass;
        # off by default: on a 2-core CPU it measured slower than concurrent singles (bench/RESULTS.md)
        self.microbatcher: MicroBatcher[str, Prediction] | None = None
        if microbatch_max_size > 1:
            self.microbatcher = MicroBatcher(
                self._predict_many, max_wait_ms=microbatch_wait_ms, max_size=microbatch_max_size
            )

    @classmethod
    def from_settings(cls, settings: Any, *, model_path: str | Path | None = None) -> Analyzer:
        threads = settings.threads() if hasattr(settings, "threads") else settings.torch_threads
        torch.set_num_threads(threads)
        path = Path(model_path or settings.model_path)
        started = time.perf_counter()
        backend, quantize = getattr(settings, "backend", "auto"), getattr(settings, "quantize", True)
        model = load_model(path, backend=backend, quantize=quantize, threads=threads)
        logger.info(
            "loaded model %s %s from %s in %.2f s (backend %s, %d threads)",
            model.config.name,
            model.config.version,
            path,
            time.perf_counter() - started,
            getattr(model, "backend", "torch"),
            threads,
        )
        return cls(
            model,
            policy=Policy.from_settings(settings),
            playbook=Playbook.load(settings.playbook_path),
            batch_size=settings.batch_size,
            default_script=settings.default_script,
            microbatch_wait_ms=getattr(settings, "microbatch_wait_ms", 2.0),
            microbatch_max_size=getattr(settings, "microbatch_max_size", 1),
        )

    def _predict_many(self, texts: list[str]) -> list[Prediction]:
        return list(self.model.predict(texts, batch_size=self.batch_size))

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """Model scores; a lone text goes through the micro-batcher so concurrent requests share a forward."""
        if len(texts) == 1 and self.microbatcher is not None:
            return [self.microbatcher.submit(texts[0])]
        return self._predict_many(list(texts))

    @property
    def model_info(self) -> dict[str, str]:
        return {"name": self.model.config.name, "version": self.model.config.version}

    def result(self, pred: Prediction, text: str, *, id: Any, lang: str | None = None) -> dict[str, Any]:
        script = detect_script(text, default=self.default_script)
        out_lang = lang or SCRIPT_LANG[Script(script)]
        threat = self.policy.threat(pred)
        situation = self.policy.situation(pred)
        step = self.playbook.route(situation, complaint_type=pred.complaint_type, lang=out_lang)
        return {
            "id": id,
            "anger": {
                "level": pred.anger_level,
                "label": pred.anger_label,
                "score": round(pred.anger_score, 6),
                "probs": pred.anger_probs,
            },
            "complaint": {"type": pred.complaint_type, "types": pred.types, "scores": pred.type_scores},
            "threat": {"detected": threat, "score": round(pred.threat_score, 6)},
            "route": {
                "flag": self.policy.flag(pred),
                "escalate": self.policy.escalate(pred),
                "next_step": step.to_dict(),
            },
            "script": script,
            "model": self.model_info,
        }

    def analyze(
        self,
        texts: Sequence[str],
        *,
        ids: Sequence[Any] | None = None,
        lang: str | None = None,
        explain: bool = False,
        redact: bool = False,
    ) -> list[dict[str, Any]]:
        ids = list(ids) if ids is not None else list(range(len(texts)))
        preds = self.predict(list(texts))
        out = [self.result(p, t, id=i, lang=lang) for p, t, i in zip(preds, texts, ids, strict=True)]
        if explain:
            for r, t in zip(out, texts, strict=True):
                r["explanation"] = occlusion_explanation(self.model, t, batch_size=self.batch_size)
        if redact:
            from service.redact import redact as mask

            for r, t in zip(out, texts, strict=True):
                r["text"] = mask(t)
        return out


_UNIT = None


def _units(text: str) -> list[tuple[int, int]]:
    """Character spans to occlude: each CJK character alone, Latin words and numbers whole."""
    import re

    global _UNIT
    if _UNIT is None:
        _UNIT = re.compile(r"[A-Za-z0-9]+|\S")
    return [(m.start(), m.end()) for m in _UNIT.finditer(text)]


def occlusion_explanation(
    model: Any, text: str, *, window: int = 2, max_units: int = 160, batch_size: int = 64, top_k: int = 6
) -> dict[str, Any]:
    """Which phrases drove the anger score: remove each window of characters and measure the drop.

    Occlusion (Zeiler & Fergus 2014) is model-agnostic and its numbers mean something a QA
    lead can check: "without these characters the anger score falls by w". Windows of two
    characters catch two-character words (垃圾, 騙子) that single-character removal misses.
    Each character's weight is the mean drop of the windows that cover it.
    """
    units = _units(text)[:max_units]
    if not units:
        return {"method": "occlusion", "target": "anger.score", "base_score": None, "spans": []}
    window = max(1, min(window, len(units)))
    starts = list(range(0, len(units) - window + 1))
    variants = [text[: units[i][0]] + text[units[i + window - 1][1] :] for i in starts]
    preds = model.predict([text, *variants], batch_size=batch_size)
    base = float(preds[0].anger_score)
    drops = [base - float(p.anger_score) for p in preds[1:]]
    weight = [0.0] * len(units)
    count = [0] * len(units)
    for i, d in zip(starts, drops, strict=True):
        for j in range(i, i + window):
            weight[j] += d
            count[j] += 1
    weight = [w / c if c else 0.0 for w, c in zip(weight, count, strict=True)]
    top = max(weight) if weight else 0.0
    cutoff = max(0.01, 0.3 * top)
    spans: list[dict[str, Any]] = []
    j = 0
    while j < len(units):
        if weight[j] >= cutoff:
            k = j
            while k + 1 < len(units) and weight[k + 1] >= cutoff:
                k += 1
            start, end = units[j][0], units[k][1]
            spans.append(
                {"start": start, "end": end, "text": text[start:end], "weight": round(max(weight[j : k + 1]), 4)}
            )
            j = k + 1
        else:
            j += 1
    spans.sort(key=lambda s: -s["weight"])
    return {
        "method": "occlusion",
        "target": "anger.score",
        "window": window,
        "base_score": round(base, 4),
        "spans": sorted(spans[:top_k], key=lambda s: s["start"]),
        "char_weights": [
            {"start": u[0], "end": u[1], "weight": round(w, 4)} for u, w in zip(units, weight, strict=True)
        ],
    }
