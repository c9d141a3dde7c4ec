"""Typed, validated training configuration (YAML/TOML file + dotted overrides).

pydantic models: every value is type-checked (an integer setting takes an integer, not ``2.5``
or ``"16"``), unknown keys are rejected, and ``load_config`` raises a ``ConfigError`` naming
each dotted key (``data.sources[0].format: ...``). Built in code, the models raise pydantic's
``ValidationError`` (also a ``ValueError``, also naming the field).
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

from model.backbone import DEFAULT_BACKBONE
from model.config import LoraSettings


class ConfigError(ValueError):
    """The training config is invalid; the message names the key."""


#: Integers and booleans are taken as written: 2.5 epochs or "16" as a batch size are mistakes.
Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
#: A number in [0, 1] (not a boolean).
Prob = Annotated[float, Strict(), Field(ge=0.0, le=1.0)]
Task = Literal["anger_level", "complaint_type", "threat"]
_ALL_TASKS: tuple[Task, ...] = ("anger_level", "complaint_type", "threat")
OpenCCConfig = Literal["s2t", "s2tw", "s2twp", "s2hk"]
_DEFAULT_OPENCC: tuple[OpenCCConfig, ...] = ("s2twp", "s2hk")


def _key(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _known(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The setting names of the model an (unknown) key at ``loc`` was given to."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if isinstance(current, type) and issubclass(current, BaseModel) else None
        if field is None:
            return []
        current = field.annotation
        for arg in getattr(current, "__args__", ()):  # list[DataSource], DataSource | None, LoraSettings | None
            if isinstance(arg, type) and (issubclass(arg, BaseModel) or dataclasses.is_dataclass(arg)):
                current = arg
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    if isinstance(current, type) and dataclasses.is_dataclass(current):  # model.lora (model.config.LoraSettings)
        return sorted(f.name for f in dataclasses.fields(current))
    return []


def describe(error: ValidationError, model: type[BaseModel]) -> str:
    """One line per problem, each naming the dotted key."""
    lines = []
    for e in error.errors():
        loc = tuple(e["loc"])
        if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            lines.append(f"{_key(loc)}: unknown setting (known: {_known(model, loc)})")
        else:
            lines.append(f"{_key(loc) or '(top)'}: {e['msg']}, got {e.get('input')!r}")
    return "; ".join(lines)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


class DataSource(_Section):
    """One labelled data set.

    ``path``: ``annotations`` (the project's labels joined with ../shared/data),
    a ``.csv``/``.jsonl`` file, or ``hf:<name or folder>`` for a ``datasets``
    dataset (``load_from_disk`` folder or ``load_dataset`` name).
    ``columns`` maps our field names (text, anger_level, complaint_type, types,
    threat, script, split, id, region) to the file's column names; ``region`` (tw, hk or cn) puts a row
    in the evaluation's per-region rows (rows without one appear per script only).
    ``split``: a fixed split for every row, or ``column`` to read it from the
    ``split`` column, or ``auto`` (the row's own ``split`` where it has one, else a stable hash of its
    normalised text: the same for any path spelling, duplicates always together).
    ``tasks`` lists which labels this source provides; a weak source may give
    only ``anger_level`` (and is named as weak in the model card).
    """

    path: str = "annotations"
    format: Literal["auto", "csv", "jsonl", "hf"] = "auto"
    columns: dict[str, str] = Field(default_factory=dict)
    split: Literal["auto", "column", "train", "dev", "test"] = "auto"
    tasks: list[Task] = Field(default_factory=lambda: list(_ALL_TASKS))
    weak: Bool = False
    weight: float = Field(1.0, gt=0.0)
    limit: Int | None = Field(None, ge=1)  # the first so many rows; None: all


class DataConfig(_Section):
    sources: list[DataSource] = Field(default_factory=lambda: [DataSource()], min_length=1)
    train_splits: list[str] = Field(default_factory=lambda: ["train"])
    eval_split: str = "dev"
    test_split: str = "test"
    shared_dir: str | None = None


class AugmentConfig(_Section):
    """Training-time augmentation (``training.augment``): OpenCC both ways and typing noise."""

    opencc_prob: Prob = 0.5
    opencc_configs: list[OpenCCConfig] = Field(default_factory=lambda: list(_DEFAULT_OPENCC))
    t2s_prob: Prob = 0.0
    noise_prob: Prob = 0.0
    context_drop: Prob = 0.3


class ModelArgs(_Section):
    backbone: str = DEFAULT_BACKBONE
    init_from: str | None = None
    lora: LoraSettings | None = Field(default_factory=LoraSettings)
    max_length: Int = Field(128, ge=8, le=512)
    head_dropout: float = 0.1
    name: str = "calmfirst-zh"
    version: str = "0.1.0"


class LossConfig(_Section):
    anger: float = Field(1.0, ge=0.0)
    type: float = Field(1.0, ge=0.0)
    multi: float = Field(0.5, ge=0.0)
    threat: float = Field(1.0, ge=0.0)
    class_weighting: Literal["none", "inverse", "sqrt_inverse"] = "sqrt_inverse"
    label_smoothing: float = 0.05


class TrainingArguments(_Section):
    """All settings of one training run; bad values are rejected when it is built, naming the key."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelArgs = Field(default_factory=ModelArgs)
    loss: LossConfig = Field(default_factory=LossConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    epochs: Int = Field(4, ge=1)
    batch_size: Int = Field(16, ge=1)
    eval_batch_size: Int = Field(64, ge=1)
    learning_rate: float = Field(5e-4, gt=0.0, lt=1.0)
    head_learning_rate: float = Field(2e-3, gt=0.0, lt=1.0)
    weight_decay: float = 0.01
    warmup_ratio: float = Field(0.06, ge=0.0, lt=1.0)
    grad_clip: float = 1.0
    seed: Int = 42
    fit_temperature: Bool = True
    max_steps: Int | None = Field(None, ge=1)
    group_by_length: Bool = True
    #: feed later conversation turns with their context (``model.context``)
    use_context: Bool = True
    num_threads: Int | None = None
    log_every: Int = 50
    output_dir: str = "runs/default"


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


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainingArguments:
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{p}: cannot read config: {e}") from e
        try:
            raw = tomllib.loads(text) if p.suffix == ".toml" else (yaml.safe_load(text) or {})
        except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
            raise ConfigError(f"{p}: not valid {'TOML' if p.suffix == '.toml' else 'YAML'}: {e}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level")
    raw = apply_overrides(raw, overrides or [])
    try:
        return TrainingArguments(**raw)
    except ValidationError as e:
        raise ConfigError(describe(e, TrainingArguments)) from e
