"""From head outputs to scores, in numpy, shared by every backend; and the interface they implement.

The PyTorch model and the ONNX Runtime model differ only in how they compute the four head
outputs (``OUTPUT_NAMES``). Everything after that (temperature, ordinal probabilities, the
primary and secondary types, threat) is here, once, in numpy, so the two backends cannot drift
apart and the ONNX serving path needs no PyTorch at all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from data.script import detect_script
from data.vocab import ComplaintType
from model.config import CalmFirstConfig

#: The heads' outputs, in the order the ONNX graph returns them.
OUTPUT_NAMES = ("anger_logits", "type_logits", "multi_logits", "threat_logits")


@dataclass
class Prediction:
    """Scores for one text; the routing policy turns them into a flag, escalation and a next step."""

    anger_probs: list[float]
    anger_level: int
    anger_label: str
    anger_score: float
    calm_first_prob: float
    complaint_type: str
    types: list[str]
    type_scores: dict[str, float]
    threat_score: float
    threat: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@runtime_checkable
class ScoringModel(Protocol):
    """What serving and scoring need from a model: ``CalmFirstModel`` (PyTorch) and ``OnnxCalmFirstModel``."""

    config: CalmFirstConfig

    @property
    def backend(self) -> str:
        """``torch`` or ``onnx``."""
        ...

    def logits(self, texts: Sequence[str], *, batch_size: int = 32) -> dict[str, np.ndarray]:
        """The heads' outputs (``OUTPUT_NAMES``) for many texts, as float32 arrays in input order."""
        ...

    def predict(self, texts: str | Iterable[str], *, batch_size: int = 32) -> Any:
        """One ``Prediction`` for a string, a list of them for an iterable of strings."""
        ...


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)), dtype=np.float32)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return np.asarray(e / e.sum(axis=-1, keepdims=True), dtype=np.float32)


def ordinal_probs(cum_logits: np.ndarray) -> np.ndarray:
    """P(level = k) from cumulative logits [B, K-1]; valid because the thresholds are ordered."""
    p_ge = _sigmoid(np.asarray(cum_logits, dtype=np.float32))  # P(y>=1), P(y>=2), P(y>=3)
    ones = np.ones_like(p_ge[:, :1])
    zeros = np.zeros_like(p_ge[:, :1])
    upper = np.concatenate([ones, p_ge], axis=1)
    lower = np.concatenate([p_ge, zeros], axis=1)
    return np.clip(upper - lower, 0.0, None)


def anger_temperatures(config: CalmFirstConfig, texts: Sequence[str]) -> np.ndarray:
    """One anger temperature per model input: its script's when the model has one, else the joint one."""
    by_script = config.temperature_by_script
    if not by_script:
        return np.full((len(texts), 1), config.temperature, dtype=np.float32)
    return np.asarray([[by_script.get(detect_script(t), config.temperature)] for t in texts], dtype=np.float32)


def scores_from_logits(
    logits: Mapping[str, np.ndarray], config: CalmFirstConfig, *, texts: Sequence[str] | None = None
) -> list[Prediction]:
    """One ``Prediction`` per row of the head outputs.

    ``texts`` are the model inputs the logits came from; a model calibrated per script needs them
    (without them every row gets the joint ``temperature``).
    """
    anger = np.asarray(logits["anger_logits"], dtype=np.float32)
    if texts is not None and len(texts) != anger.shape[0]:
        raise ValueError(f"{len(texts)} texts for {anger.shape[0]} rows of logits")
    temperature = np.float32(config.temperature) if texts is None else anger_temperatures(config, texts)
    probs = ordinal_probs(anger / temperature)
    type_probs = _softmax(np.asarray(logits["type_logits"], dtype=np.float32))
    multi = _sigmoid(np.asarray(logits["multi_logits"], dtype=np.float32))
    threat = _sigmoid(np.asarray(logits["threat_logits"], dtype=np.float32))
    levels = np.arange(probs.shape[1], dtype=np.float32)
    types_all = config.complaint_types
    out: list[Prediction] = []
    for i in range(probs.shape[0]):
        p = probs[i] / probs[i].sum()
        level = int(p.argmax())
        primary = types_all[int(type_probs[i].argmax())]
        types = [primary]
        if primary != ComplaintType.NONE:
            for j in np.argsort(-multi[i], kind="stable").tolist():
                name = types_all[j]
                if name not in types and name != ComplaintType.NONE and float(multi[i, j]) >= config.type_threshold:
                    types.append(name)
        out.append(
            Prediction(
                anger_probs=[round(float(x), 6) for x in p],
                anger_level=level,
                anger_label=config.anger_labels[level],
                anger_score=float((p * levels).sum() / (len(levels) - 1)),
                calm_first_prob=float(p[2:].sum()),
                complaint_type=primary,
                types=types,
                type_scores={n: round(float(type_probs[i, j]), 6) for j, n in enumerate(types_all)},
                threat_score=float(threat[i]),
                threat=bool(threat[i] >= config.threat_threshold),
            )
        )
    return out


def predict_texts(model: ScoringModel, texts: str | Iterable[str], *, batch_size: int = 32) -> Any:
    """``predict`` for any backend: one ``Prediction`` for a string, a list for an iterable of strings."""
    single = isinstance(texts, str)
    items = [texts] if isinstance(texts, str) else list(texts)
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise TypeError(f"text {i} is {type(t).__name__}, expected str")
    if not items:
        return []
    preds = scores_from_logits(model.logits(items, batch_size=batch_size), model.config, texts=items)
    return preds[0] if single else preds
