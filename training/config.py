"""Typed, validated training configuration (YAML/TOML file + dotted overrides)."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from model.backbone import DEFAULT_BACKBONE
from model.classifier import LoraSettings


class ConfigError(ValueError):
    """The training config is invalid; the message names the key."""


@dataclass
class DataSource:
    """One labelled data set.

    ``path``: ``annotations`` (the project's labels joined with ../shared/data),
    a ``.csv``/``.jsonl`` file, or ``hf:<name or folder>`` for a ``datasets``
    dataset (``load_from_disk`` folder or ``load_dataset`` name).
    ``columns`` maps our field names (text, anger_level, complaint_type, types,
    threat, script, split, id) to the file's column names.
    ``split``: a fixed split for every row, or ``column`` to read it from the
    ``split`` column, or ``auto`` (the source's own split / a stable hash).
    ``tasks`` lists which labels this source provides; a weak source may give
    only ``anger_level`` (and is named as weak in the model card).
    """

    path: str = "annotations"
    format: str = "auto"
    columns: dict[str, str] = field(default_factory=dict)
    split: str = "auto"
    tasks: list[str] = field(default_factory=lambda: ["anger_level", "complaint_type", "threat"])
    weak: bool = False
    weight: float = 1.0
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.format not in {"auto", "csv", "jsonl", "hf"}:
            raise ConfigError(f"data.sources[].format: unknown format {self.format!r}")
        if self.split not in {"auto", "column", "train", "dev", "test"}:
            raise ConfigError(f"data.sources[].split: must be auto, column, train, dev or test, got {self.split!r}")
        for t in self.tasks:
            if t not in {"anger_level", "complaint_type", "threat"}:
                raise ConfigError(f"data.sources[].tasks: unknown task {t!r}")
        if self.weight <= 0:
            raise ConfigError(f"data.sources[].weight must be positive, got {self.weight}")


@dataclass
class DataConfig:
    sources: list[DataSource] = field(default_factory=lambda: [DataSource()])
    train_splits: list[str] = field(default_factory=lambda: ["train"])
    eval_split: str = "dev"
    test_split: str = "test"
    shared_dir: str | None = None

    def __post_init__(self) -> None:
        self.sources = [s if isinstance(s, DataSource) else DataSource(**s) for s in self.sources]
        if not self.sources:
            raise ConfigError("data.sources: at least one source is needed")


@dataclass
class AugmentConfig:
    """Training-time augmentation (``training.augment``): OpenCC both ways and typing noise."""

    opencc_prob: float = 0.5
    opencc_configs: list[str] = field(default_factory=lambda: ["s2twp", "s2hk"])
    t2s_prob: float = 0.0
    noise_prob: float = 0.0
    context_drop: float = 0.3

    def __post_init__(self) -> None:
        for name in ("opencc_prob", "t2s_prob", "noise_prob", "context_drop"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ConfigError(f"augment.{name} must be a number in [0, 1], got {value!r}")
        for c in self.opencc_configs:
            if c not in {"s2t", "s2tw", "s2twp", "s2hk"}:
                raise ConfigError(f"augment.opencc_configs: unsupported OpenCC config {c!r}")


@dataclass
class ModelArgs:
    backbone: str = DEFAULT_BACKBONE
    init_from: str | None = None
    lora: LoraSettings | None = field(default_factory=LoraSettings)
    max_length: int = 128
    head_dropout: float = 0.1
    name: str = "calmfirst-zh"
    version: str = "0.1.0"

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        if not 8 <= self.max_length <= 512:
            raise ConfigError(f"model.max_length must be 8-512, got {self.max_length}")


@dataclass
class LossConfig:
    anger: float = 1.0
    type: float = 1.0
    multi: float = 0.5
    threat: float = 1.0
    class_weighting: str = "sqrt_inverse"
    label_smoothing: float = 0.05

    def __post_init__(self) -> None:
        if self.class_weighting not in {"none", "inverse", "sqrt_inverse"}:
            raise ConfigError(f"loss.class_weighting: unknown {self.class_weighting!r}")
        for name in ("anger", "type", "multi", "threat"):
            if getattr(self, name) < 0:
                raise ConfigError(f"loss.{name} must be >= 0")


@dataclass
class TrainingArguments:
    """All settings of one training run; ``__post_init__`` rejects bad values early."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelArgs = field(default_factory=ModelArgs)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    epochs: int = 4
    batch_size: int = 16
    eval_batch_size: int = 64
    learning_rate: float = 5e-4
    head_learning_rate: float = 2e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    grad_clip: float = 1.0
    seed: int = 42
    fit_temperature: bool = True
    max_steps: int | None = None
    group_by_length: bool = True
    #: feed later conversation turns with their context (``model.context``)
    use_context: bool = True
    num_threads: int | None = None
    log_every: int = 50
    output_dir: str = "runs/default"

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            self.data = DataConfig(**self.data)
        if isinstance(self.model, dict):
            self.model = ModelArgs(**self.model)
        if isinstance(self.loss, dict):
            self.loss = LossConfig(**self.loss)
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig(**self.augment)
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("batch_size and eval_batch_size must be >= 1")
        for name in ("learning_rate", "head_learning_rate"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError("max_steps must be >= 1 when set")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as JSON when they can be)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        node = raw
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {p!r} is not a section")
        node[parts[-1]] = _coerce(value)
    return raw


def _check_keys(raw: dict[str, Any], cls: type, prefix: str = "") -> None:
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{prefix}{key}: unknown setting (known: {sorted(known)})")
        sub = hints.get(key)
        if isinstance(value, dict) and dataclasses.is_dataclass(sub):
            _check_keys(value, sub, prefix=f"{prefix}{key}.")  # type: ignore[arg-type]


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainingArguments:
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{p}: cannot read config: {e}") from e
        raw = tomllib.loads(text) if p.suffix == ".toml" else (yaml.safe_load(text) or {})
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level")
    raw = apply_overrides(raw, overrides or [])
    _check_keys(raw, TrainingArguments)
    try:
        return TrainingArguments(**raw)
    except TypeError as e:
        raise ConfigError(f"invalid config: {e}") from e
