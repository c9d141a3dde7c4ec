"""The CalmFirst classifier: a transformer encoder with three task heads.

* anger: ordinal (cumulative-link / CORAL-style). One scalar score per text and
  three ordered thresholds give P(level >= k); the ordering is enforced by
  construction (positive gaps), so the level probabilities are always valid and
  ``anger.score`` (expected level / 3) rises with anger.
* complaint type: a softmax head picks the primary type and a sigmoid head
  scores every type for the secondary ``types`` list.
* threat: one sigmoid logit.

Only the fine-tuned part is saved (LoRA adapters + heads, safetensors); the
backbone is referenced by id and checksum, or embedded when it was built in
memory (tiny test models) or fully fine-tuned.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from model.backbone import DEFAULT_BACKBONE, resolve_backbone
from model.config import (
    BACKBONE_SUBDIR,
    CONFIG_NAME,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    CalmFirstConfig,
    LoraSettings,
    package_version,
    read_config,
)

__all__ = [
    "BACKBONE_SUBDIR",
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "CalmFirstConfig",
    "CalmFirstModel",
    "LoraSettings",
    "Prediction",
    "ordinal_probs",
]
from model.scores import Prediction, predict_texts, scores_from_logits

logger = logging.getLogger(__name__)


def library_versions() -> dict[str, str]:
    import transformers

    versions = {"python": platform.python_version(), "torch": torch.__version__.split("+")[0]}
    versions["transformers"] = transformers.__version__
    try:
        import peft

        versions["peft"] = peft.__version__
    except ImportError:  # pragma: no cover - peft is a dependency
        pass
    versions["calmfirst"] = package_version()
    return versions


def _tensor_checksum(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return "tensors:" + h.hexdigest()


class OrdinalHead(nn.Module):
    """Cumulative-link head: logit_k = s(x) - b_k with b_1 < b_2 < b_3 by construction."""

    def __init__(self, hidden: int, n_levels: int = 4) -> None:
        super().__init__()
        self.score = nn.Linear(hidden, 1)
        self.first = nn.Parameter(torch.tensor([-1.0]))
        self.gaps = nn.Parameter(torch.ones(n_levels - 2))

    def thresholds(self) -> torch.Tensor:
        return torch.cumsum(torch.cat([self.first, F.softplus(self.gaps)]), dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(x) - self.thresholds()  # [B, n_levels-1]


def ordinal_probs(cum_logits: torch.Tensor) -> torch.Tensor:
    """P(level = k) from cumulative logits; valid because thresholds are ordered.

    The differentiable twin of ``model.scores.ordinal_probs`` (training and temperature fitting).
    """
    p_ge = torch.sigmoid(cum_logits)  # P(y>=1), P(y>=2), P(y>=3)
    ones = torch.ones_like(p_ge[:, :1])
    zeros = torch.zeros_like(p_ge[:, :1])
    upper = torch.cat([ones, p_ge], dim=1)
    lower = torch.cat([p_ge, zeros], dim=1)
    return (upper - lower).clamp_min(0.0)


class CalmFirstModel(nn.Module):
    """Backbone + heads. Owns save/load and prediction (implements ``model.scores.ScoringModel``)."""

    backend = "torch"

    def __init__(self, backbone: nn.Module, tokenizer: Any, config: CalmFirstConfig) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.backbone = backbone
        backbone_config: Any = backbone.config
        hidden = int(backbone_config.hidden_size)
        self.dropout = nn.Dropout(config.head_dropout)
        self.anger_head = OrdinalHead(hidden, len(config.anger_labels))
        self.type_head = nn.Linear(hidden, len(config.complaint_types))
        self.multi_head = nn.Linear(hidden, len(config.complaint_types))
        self.threat_head = nn.Linear(hidden, 1)
        self._merged = False

    # ------------------------------------------------------------------ build
    @classmethod
    def from_backbone(
        cls,
        backbone: str | nn.Module = DEFAULT_BACKBONE,
        *,
        tokenizer: Any = None,
        lora: LoraSettings | None = None,
        config: CalmFirstConfig | None = None,
        seed: int | None = None,
    ) -> CalmFirstModel:
        """A fresh classifier on a pretrained backbone (id, local folder, or a module)."""
        if seed is not None:
            torch.manual_seed(seed)
        config = config or CalmFirstConfig(lora=lora if lora is not None else LoraSettings())
        if isinstance(backbone, nn.Module):
            if tokenizer is None:
                raise ValueError("a backbone module needs its tokenizer")
            encoder = backbone
            config.backbone = getattr(encoder.config, "_name_or_path", "") or "in-memory"
            config.backbone_embedded = True
            config.backbone_checksum = _tensor_checksum(encoder)
        else:
            encoder, tokenizer, meta = _load_encoder(backbone)
            config.backbone = backbone
            config.backbone_checksum = str(meta.get("weights_sha256") or _tensor_checksum(encoder))
            if "text_prefix" in meta:
                config.text_prefix = str(meta["text_prefix"])
        if config.lora is not None:
            encoder = _add_lora(encoder, config.lora)
        return cls(encoder, tokenizer, config)

    # ---------------------------------------------------------------- forward
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out.last_hidden_state
        if self.config.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.dropout(self.encode(input_ids, attention_mask))
        return {
            "anger_logits": self.anger_head(pooled),
            "type_logits": self.type_head(pooled),
            "multi_logits": self.multi_head(pooled),
            "threat_logits": self.threat_head(pooled).squeeze(-1),
        }

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        prefixed = [self.config.text_prefix + t for t in texts]
        enc = self.tokenizer(
            prefixed, padding=True, truncation=True, max_length=self.config.max_length, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    # ---------------------------------------------------------------- predict
    @torch.no_grad()
    def predict_logits(self, texts: Sequence[str], *, batch_size: int = 32) -> dict[str, torch.Tensor]:
        """Raw head outputs for many texts, batched by length to waste little padding."""
        was_training = self.training
        self.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        device = next(self.parameters()).device
        chunks: list[dict[str, torch.Tensor]] = []
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = {k: v.to(device) for k, v in self.tokenize([texts[i] for i in idx]).items()}
            chunks.append({k: v.cpu() for k, v in self(**enc).items()})
        if was_training:
            self.train()
        if not chunks:
            return {}
        merged = {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return {k: v[inverse] for k, v in merged.items()}

    def logits(self, texts: Sequence[str], *, batch_size: int = 32) -> dict[str, np.ndarray]:
        """The heads' outputs as numpy arrays (the backend-neutral form ``model.scores`` works on)."""
        return {k: v.numpy() for k, v in self.predict_logits(texts, batch_size=batch_size).items()}

    def scores_from_logits(
        self, logits: dict[str, torch.Tensor], *, texts: Sequence[str] | None = None
    ) -> list[Prediction]:
        """Predictions from ``predict_logits`` output (post-processing shared with ONNX: ``model.scores``).

        ``texts`` (the inputs) select the per-script temperature of a model calibrated per script.
        """
        return scores_from_logits({k: v.detach().cpu().numpy() for k, v in logits.items()}, self.config, texts=texts)

    def predict(self, texts: str | Iterable[str], *, batch_size: int = 32) -> Any:
        """Score one text (returns one ``Prediction``) or many (returns a list)."""
        return predict_texts(self, texts, batch_size=batch_size)

    # -------------------------------------------------------------- save/load
    def _finetuned_state(self) -> dict[str, torch.Tensor]:
        """What training changed: the heads, and the LoRA adapters or (fully fine-tuned) the encoder layers.

        The embedding layer (word, position and token-type tables and its LayerNorm) is never saved: it is
        frozen in full fine-tuning and comes from the backbone.
        """
        state = {}
        full = self.config.lora is None
        for name, tensor in self.state_dict().items():
            if (
                name.startswith(("anger_head.", "type_head.", "multi_head.", "threat_head."))
                or "lora_" in name
                or (full and name.startswith("backbone.") and "embeddings" not in name)
            ):
                state[name] = tensor.detach().cpu().contiguous()
        return state

    def _stored_state(self) -> dict[str, torch.Tensor]:
        """``_finetuned_state`` as written to disk: a fully fine-tuned encoder's layers in float16.

        Why: e5-small's 12 encoder layers are 21M parameters, 85 MB in float32, over the 50 MB the committed
        weights may take; in float16 they are 43 MB and the outputs move by about 1e-3 (loading casts them back
        to float32). The heads and LoRA adapters (~11 MB together) stay float32.
        """
        state = self._finetuned_state()
        if self.config.lora is None:
            state = {
                k: v.half() if k.startswith("backbone.") and v.is_floating_point() else v for k, v in state.items()
            }
        return state

    def save_pretrained(self, path: str | Path, *, model_card: str | None = None) -> Path:
        """Write config JSON, fine-tuned weights (safetensors) and a model card."""
        if self._merged:
            raise RuntimeError("adapters were merged for inference; load the model again unmerged to save it")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.config.library_versions = library_versions()
        if self.config.backbone_embedded:
            encoder: Any = self.backbone
            base = encoder.get_base_model() if hasattr(encoder, "get_base_model") else encoder
            sub = path / BACKBONE_SUBDIR
            # peft wraps modules in place; save the pure base weights (adapters go to the heads file)
            base_state = {k.replace(".base_layer", ""): v for k, v in base.state_dict().items() if "lora_" not in k}
            base.save_pretrained(sub, state_dict=base_state, safe_serialization=True)
            tok: Any = self.tokenizer
            tok.save_pretrained(sub)
        save_file(self._stored_state(), str(path / WEIGHTS_NAME), metadata={"format": "pt"})
        (path / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2, ensure_ascii=False) + "\n")
        from model.card import render_model_card

        (path / "README.md").write_text(model_card or render_model_card(self.config), encoding="utf-8")
        logger.info("saved model to %s", path)
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, *, merge_adapters: bool = False) -> CalmFirstModel:
        """Load a saved classifier. ``merge_adapters`` folds LoRA into the weights for fast inference."""
        path = Path(path)
        config = read_config(path)
        source = str(path / BACKBONE_SUBDIR) if config.backbone_embedded else config.backbone
        encoder, tokenizer, meta = _load_encoder(source)
        checksum = meta.get("weights_sha256")
        if checksum and config.backbone_checksum and checksum != config.backbone_checksum:
            logger.warning(
                "backbone checksum differs from the one the model was trained on (%s vs %s)",
                checksum,
                config.backbone_checksum,
            )
        if config.lora is not None:
            encoder = _add_lora(encoder, config.lora)
        model = cls(encoder, tokenizer, config)
        state = load_file(str(path / WEIGHTS_NAME))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected:
            raise RuntimeError(f"{path}: unexpected weights {unexpected[:5]}")
        expected = set(model._finetuned_state())
        lost = sorted(expected & set(missing))
        if lost:
            raise RuntimeError(f"{path}: weights missing from {WEIGHTS_NAME}: {lost[:5]}")
        model.eval()
        if merge_adapters:
            model.merge_adapters()
        return model

    def merge_adapters(self) -> None:
        """Fold LoRA into the base weights: same outputs, plain BERT speed."""
        if self.config.lora is not None and hasattr(self.backbone, "merge_and_unload"):
            wrapped: Any = self.backbone
            self.backbone = wrapped.merge_and_unload()
            self._merged = True

    def unfreeze_encoder(self) -> None:
        """Switch to full fine-tuning: fold any LoRA adapters into the weights for good (``config.lora``
        becomes None, so saving writes the encoder layers) and train every encoder parameter except the
        embedding layer (frozen and never saved: its word table is 96M parameters that real traffic would
        barely move; the position and token-type tables and its LayerNorm go with it)."""
        if self.config.lora is not None and hasattr(self.backbone, "merge_and_unload"):
            wrapped: Any = self.backbone
            self.backbone = wrapped.merge_and_unload()
        self.config.lora = None
        for name, param in self.backbone.named_parameters():
            param.requires_grad = "embeddings" not in name

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def _load_encoder(name_or_path: str) -> tuple[nn.Module, Any, dict[str, Any]]:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    source, meta = resolve_backbone(name_or_path)
    try:
        cfg = AutoConfig.from_pretrained(source)
        kwargs: dict[str, Any] = {}
        if cfg.model_type == "bert":
            kwargs["add_pooling_layer"] = False
        encoder = AutoModel.from_pretrained(source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as e:
        raise OSError(
            f"could not load backbone {name_or_path!r}: give a local folder, a hub id with network access, "
            f"or {DEFAULT_BACKBONE!r} for the bundled offline copy"
        ) from e
    return encoder, tokenizer, meta


def _add_lora(encoder: nn.Module, settings: LoraSettings) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
    )
    return get_peft_model(encoder, lcfg)
