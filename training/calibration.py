"""Temperature scaling of the anger head, jointly and per script.

Why per script: one temperature fitted on a dev split that is mostly Simplified leaves the
Traditional records over-confident (v1 on the labels-v2 dev split: calm_first ECE 0.075 mainland,
0.086 Taiwan, 0.164 Hong Kong). The script of the model input is known at serving time for free
(``data.script.detect_script``), so each script gets its own temperature, fitted on that script's
dev records; a script with too few dev records keeps the joint one. The fitted values live in the
model config (``temperature``, ``temperature_by_script``) and ``model.scores`` applies them, so the
PyTorch and ONNX backends calibrate identically.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from data.script import HANS, HANT, detect_script
from model.config import CONFIG_NAME, read_config
from model.scores import anger_temperatures
from training.data import model_input
from training.metrics import expected_calibration_error

if TYPE_CHECKING:
    from model.classifier import CalmFirstModel
    from training.data import Example

logger = logging.getLogger(__name__)

#: fewer dev records of a script than this and it keeps the joint temperature (too noisy to fit)
MIN_RECORDS_PER_SCRIPT = 50
SCRIPTS = (HANS, HANT)


def fit_anger_temperature(anger_logits: np.ndarray, levels: Sequence[int]) -> float:
    """The temperature for cumulative anger logits that minimises NLL (Guo et al., 2017)."""
    from model.classifier import ordinal_probs  # the differentiable twin of model.scores.ordinal_probs

    logits = torch.as_tensor(np.asarray(anger_logits, dtype=np.float32))
    y = torch.as_tensor(list(levels), dtype=torch.long)
    if len(y) == 0:
        return 1.0
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        probs = ordinal_probs(logits / log_t.exp()).clamp_min(1e-7)
        loss = F.nll_loss(probs.log(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


@dataclass
class Calibration:
    """What was fitted, and the calm_first ECE per script before and after (on the fitting split)."""

    temperature: float
    by_script: dict[str, float]
    n_by_script: dict[str, int]
    ece_before: dict[str, float] = field(default_factory=dict)
    ece_after: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "temperature": self.temperature,
            "temperature_by_script": self.by_script,
            "n_by_script": self.n_by_script,
            "calm_first_ece_before": self.ece_before,
            "calm_first_ece_after": self.ece_after,
        }


def _calm_first_ece(anger_logits: np.ndarray, temperatures: np.ndarray, levels: Sequence[int]) -> float:
    from model.scores import ordinal_probs

    probs = ordinal_probs(anger_logits / temperatures)
    probs = probs / probs.sum(axis=1, keepdims=True)
    return expected_calibration_error(probs[:, 2:].sum(axis=1).tolist(), [int(y >= 2) for y in levels])


def calibrate(
    model: CalmFirstModel,
    examples: Sequence[Example],
    *,
    batch_size: int = 64,
    min_records: int = MIN_RECORDS_PER_SCRIPT,
) -> Calibration:
    """Fit the joint and per-script anger temperatures on ``examples`` and set them on ``model.config``."""
    labelled = [e for e in examples if e.anger_level is not None]
    if not labelled:
        return Calibration(model.config.temperature, dict(model.config.temperature_by_script), {})
    texts = [model_input(e, use_context=model.config.context_input) for e in labelled]
    logits = model.logits(texts, batch_size=batch_size)["anger_logits"]
    levels = np.asarray([int(e.anger_level) for e in labelled])  # type: ignore[arg-type]
    scripts = np.asarray([detect_script(t) for t in texts])
    before = anger_temperatures(model.config, texts)  # what the model applied until now
    joint = fit_anger_temperature(logits, levels.tolist())
    by_script: dict[str, float] = {}
    counts: dict[str, int] = {}
    for script in SCRIPTS:
        mask = scripts == script
        counts[script] = int(mask.sum())
        if counts[script] >= min_records:
            by_script[script] = fit_anger_temperature(logits[mask], levels[mask].tolist())
    after = np.asarray([[by_script.get(s, joint)] for s in scripts], np.float32)
    result = Calibration(joint, by_script, counts)
    for script in SCRIPTS:
        mask = scripts == script
        if mask.any():
            result.ece_before[script] = _calm_first_ece(logits[mask], before[mask], levels[mask].tolist())
            result.ece_after[script] = _calm_first_ece(logits[mask], after[mask], levels[mask].tolist())
    model.config.temperature = joint
    model.config.temperature_by_script = by_script
    logger.info("anger temperature %.3f joint, per script %s on %d records", joint, by_script, len(labelled))
    return result


def calibrate_folder(
    model_dir: str | Path, examples: Sequence[Example], *, output: str | Path | None = None
) -> Calibration:
    """Calibrate a saved model and write only its config (the weights are not touched)."""
    from model.classifier import CalmFirstModel

    model_dir = Path(model_dir)
    model = CalmFirstModel.from_pretrained(model_dir)
    result = calibrate(model, examples)
    target = Path(output) if output else model_dir
    if target != model_dir:
        import shutil

        shutil.copytree(model_dir, target, dirs_exist_ok=True)
    config = read_config(target)
    config.temperature = model.config.temperature
    config.temperature_by_script = dict(model.config.temperature_by_script)
    config.training = dict(config.training) | {"calibration": result.to_dict()}
    tmp = target / (CONFIG_NAME + ".tmp")
    tmp.write_text(json.dumps(config.to_dict(), indent=2, ensure_ascii=False) + "\n")
    tmp.replace(target / CONFIG_NAME)
    return result


__all__ = ["Calibration", "calibrate", "calibrate_folder", "fit_anger_temperature"]
