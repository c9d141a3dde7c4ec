"""One object that turns texts into contract results: model + policy + playbook.

Shared by the HTTP API and the batch CLI so both answer identically.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from data.script import detect_script
from model.classifier import CalmFirstModel, Prediction
from service.playbook import SCRIPT_LANG, Playbook
from service.policy import Policy

logger = logging.getLogger(__name__)


class Analyzer:
    def __init__(
        self,
        model: CalmFirstModel,
        *,
        policy: Policy | None = None,
        playbook: Playbook | None = None,
        batch_size: int = 32,
        default_script: str = "hans",
    ) -> None:
        from service.settings import DEFAULT_PLAYBOOK

        self.model = model
        self.policy = policy or Policy()
        self.playbook = playbook or Playbook.load(DEFAULT_PLAYBOOK)
        self.batch_size = batch_size
        self.default_script = default_script

    @classmethod
    def from_settings(cls, settings: Any, *, model_path: str | Path | None = None) -> Analyzer:
        torch.set_num_threads(settings.torch_threads)
        path = Path(model_path or settings.model_path)
        model = CalmFirstModel.from_pretrained(path, merge_adapters=True)
        logger.info("loaded model %s %s from %s", model.config.name, model.config.version, path)
        return cls(
            model,
            policy=Policy.from_settings(settings),
            playbook=Playbook.load(settings.playbook_path),
            batch_size=settings.batch_size,
            default_script=settings.default_script,
        )

    @property
    def model_info(self) -> dict[str, str]:
        return {"name": self.model.config.name, "version": self.model.config.version}

    def result(self, pred: Prediction, text: str, *, id: Any, lang: str | None = None) -> dict[str, Any]:
        script = detect_script(text, default=self.default_script)
        out_lang = lang or SCRIPT_LANG[script]
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
        self, texts: Sequence[str], *, ids: Sequence[Any] | None = None, lang: str | None = None
    ) -> list[dict[str, Any]]:
        ids = list(ids) if ids is not None else list(range(len(texts)))
        preds = self.model.predict(list(texts), batch_size=self.batch_size)
        return [self.result(p, t, id=i, lang=lang) for p, t, i in zip(preds, texts, ids, strict=True)]
