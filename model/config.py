"""The classifier's saved configuration, torch-free.

Everything needed to rebuild a model (``calmfirst_config.json``) and the names of the files of a
model folder. Kept apart from ``model.classifier`` so that the ONNX serving path can read a model
folder without importing PyTorch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.schema import ANGER_LABELS, COMPLAINT_TYPES, SCHEMA_VERSION
from model.backbone import DEFAULT_BACKBONE

logger = logging.getLogger(__name__)

CONFIG_NAME = "calmfirst_config.json"
WEIGHTS_NAME = "calmfirst_heads.safetensors"
BACKBONE_SUBDIR = "backbone"
FORMAT_VERSION = 1


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("calmfirst")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["query", "key", "value", "dense"])

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ValueError(f"lora.r must be positive, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("lora.target_modules must name at least one module")


@dataclass
class CalmFirstConfig:
    """Everything needed to rebuild the model, written as ``calmfirst_config.json``."""

    backbone: str = DEFAULT_BACKBONE
    backbone_checksum: str = ""
    backbone_embedded: bool = False
    lora: LoraSettings | None = field(default_factory=LoraSettings)
    max_length: int = 160
    text_prefix: str = "query: "
    pooling: str = "mean"
    head_dropout: float = 0.1
    anger_labels: list[str] = field(default_factory=lambda: list(ANGER_LABELS))
    complaint_types: list[str] = field(default_factory=lambda: list(COMPLAINT_TYPES))
    schema_version: str = SCHEMA_VERSION
    temperature: float = 1.0
    #: anger temperature per script of the model input (``hans``/``hant``), fitted on dev by
    #: ``training.calibration``: one temperature over-smooths one script and under-smooths the other
    #: (v1: ECE 0.03 Simplified vs 0.09-0.16 Traditional); a script missing here uses ``temperature``
    temperature_by_script: dict[str, float] = field(default_factory=dict)
    type_threshold: float = 0.5
    threat_threshold: float = 0.5
    #: trained on ``model.context`` inputs (later turns with the turns before them); v1 was not
    context_input: bool = False
    name: str = "calmfirst-model"
    version: str = "0.0.0"
    format_version: int = FORMAT_VERSION
    library_versions: dict[str, str] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        if self.pooling not in {"mean", "cls"}:
            raise ValueError(f"pooling must be 'mean' or 'cls', got {self.pooling!r}")
        if len(self.anger_labels) != 4:
            raise ValueError("anger_labels must list exactly 4 ordered levels")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        for script, t in self.temperature_by_script.items():
            if script not in {"hans", "hant"}:
                raise ValueError(f"temperature_by_script: unknown script {script!r} (hans or hant)")
            if t <= 0:
                raise ValueError(f"temperature_by_script.{script} must be positive, got {t}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CalmFirstConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            logger.warning("ignoring unknown config keys: %s", sorted(unknown))
        return cls(**{k: v for k, v in d.items() if k in known})


def read_config(path: str | Path) -> CalmFirstConfig:
    """The config of a model folder; ``FileNotFoundError`` when ``path`` is not one."""
    path = Path(path)
    cfg_file = path / CONFIG_NAME
    if not cfg_file.exists():
        raise FileNotFoundError(f"{path} is not a CalmFirst model folder (no {CONFIG_NAME})")
    config = CalmFirstConfig.from_dict(json.loads(cfg_file.read_text()))
    if config.format_version > FORMAT_VERSION:
        raise ValueError(f"{path}: model format {config.format_version} is newer than this code supports")
    return config
