"""Weight soups: one model whose fine-tuned part is the average of several runs from the same start.

Why: runs of one recipe that differ only in their seed (the data order, dropout and augmentation
draws) land in the same basin when they start from the same weights, and their average is often
better than either (Wortsman et al., 2022, "Model soups"). It costs no extra inference time: the
soup is one model.

Exact for LoRA: each run's update of a weight is ``scale * B_i @ A_i``; stacking the runs' ``A``
along the rank and their ``B`` (divided by k) along the rank gives ``scale * mean_i(B_i @ A_i)``
with rank ``k * r`` and ``alpha`` scaled alike, so the scale ``alpha / r`` is unchanged. The task
heads are averaged as they are. The temperatures are the first run's; calibrate the soup on dev
afterwards (``calmfirst calibrate``). Only runs of one backbone, one label vocabulary and one LoRA
layout can be souped; anything else is a ``SoupError`` naming the differing key.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.config import BACKBONE_SUBDIR, CONFIG_NAME, WEIGHTS_NAME
from model.onnx.cache import backbone_fingerprint

#: Config keys that must agree for the average to mean anything.
MUST_AGREE = (
    "backbone",
    "backbone_checksum",
    "backbone_embedded",
    "max_length",
    "text_prefix",
    "pooling",
    "anger_labels",
    "complaint_types",
    "schema_version",
    "context_input",
    "lora.r",
    "lora.alpha",
    "lora.dropout",
    "lora.target_modules",
    # the model each run continued: runs from different starts sit in different basins, their average in neither
    "training.hyperparameters.model.init_from",
)


class SoupError(ValueError):
    """The runs cannot be averaged; the message names the key that differs."""


@dataclass(frozen=True)
class SoupResult:
    output: Path
    sources: tuple[str, ...]
    rank: int | None
    tensors: int

    def to_dict(self) -> dict[str, object]:
        return {"output": str(self.output), "sources": list(self.sources), "rank": self.rank, "tensors": self.tensors}


def _load(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    from safetensors.numpy import load_file

    if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
        raise SoupError(f"{path}: not a CalmFirst model folder (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    return json.loads((path / CONFIG_NAME).read_text(encoding="utf-8")), load_file(str(path / WEIGHTS_NAME))


def _config_value(cfg: dict, dotted: str) -> object:
    """``cfg["lora"]["r"]`` for ``"lora.r"``; None where a level is missing."""
    value: object = cfg
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def soup_folders(sources: Sequence[str | Path], output: str | Path, *, version: str | None = None) -> SoupResult:
    """Average the fine-tuned parts of ``sources`` (model folders) into ``output``; see the module doc."""
    paths = [Path(p) for p in sources]
    if len(paths) < 2:
        raise SoupError("a soup needs at least two model folders")
    loaded = [_load(p) for p in paths]
    (cfg0, state0), k = loaded[0], len(loaded)
    for path, (cfg, state) in zip(paths[1:], loaded[1:], strict=True):
        for key in MUST_AGREE:
            if _config_value(cfg, key) != _config_value(cfg0, key):
                raise SoupError(
                    f"{path}: config key {key!r} is {_config_value(cfg, key)!r} where {paths[0]} has "
                    f"{_config_value(cfg0, key)!r}"
                )
        if set(state) != set(state0):
            diff = sorted(set(state) ^ set(state0))
            raise SoupError(f"{path}: weights differ in their names from {paths[0]} (e.g. {diff[0]!r})")
        for name, value in state.items():
            if value.shape != state0[name].shape:
                raise SoupError(f"{path}: weight {name!r} has shape {value.shape}, not {state0[name].shape}")
    if cfg0.get("backbone_embedded"):
        digests = {backbone_fingerprint(cfg, p) for p, (cfg, _) in zip(paths, loaded, strict=True)}
        if len(digests) > 1:
            raise SoupError(f"config key 'backbone_embedded': the embedded backbones of {paths} differ")

    souped: dict[str, np.ndarray] = {}
    for name, first in state0.items():
        values = [state[name] for _, state in loaded]
        if ".lora_A." in name:
            souped[name] = np.concatenate(values, axis=0)
        elif ".lora_B." in name:
            souped[name] = (np.concatenate([v.astype(np.float32) for v in values], axis=1) / k).astype(first.dtype)
        else:
            souped[name] = np.mean([v.astype(np.float32) for v in values], axis=0).astype(first.dtype)

    from safetensors.numpy import save_file

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    save_file(souped, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    if cfg0.get("backbone_embedded"):
        shutil.copytree(paths[0] / BACKBONE_SUBDIR, out / BACKBONE_SUBDIR, dirs_exist_ok=True)
    cfg = dict(cfg0)
    rank = None
    if cfg0.get("lora"):
        lora = dict(cfg0["lora"])
        lora["r"], lora["alpha"] = lora["r"] * k, lora["alpha"] * k
        rank = lora["r"]
        cfg["lora"] = lora
    if version:
        cfg["version"] = version
    training = dict(cfg0.get("training") or {})
    training.pop("metrics", None)  # the first run's figures, not the soup's: evaluate the soup itself
    training["soup"] = {
        "of": [str(p) for p in paths],
        "versions": [c.get("version") for c, _ in loaded],
        "seeds": [((c.get("training") or {}).get("hyperparameters") or {}).get("seed") for c, _ in loaded],
        "note": "fine-tuned weights averaged exactly (LoRA updates stacked by rank); temperatures of the first run",
    }
    cfg["training"] = training
    (out / CONFIG_NAME).write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    from model.card import render_model_card
    from model.config import read_config

    # the card every model folder has, from the same template, saying what was averaged and that it is not measured
    runs = "\n".join(
        f"- `{p}` (version {c.get('version')}, seed {seed})"
        for p, (c, _), seed in zip(paths, loaded, training["soup"]["seeds"], strict=True)
    )
    soup_section = (
        f"## Soup\n\nThe fine-tuned weights of {k} runs averaged exactly (LoRA updates stacked by rank):\n\n{runs}\n\n"
        "Its temperatures are the first run's and it has not been evaluated as a soup: run `calmfirst calibrate` "
        "and `calmfirst evaluate` on it before using its figures. The training data and hyperparameters above are "
        "the first run's."
    )
    (out / "README.md").write_text(render_model_card(read_config(out), sections=[soup_section]), encoding="utf-8")
    return SoupResult(out, tuple(str(p) for p in paths), rank, len(souped))
