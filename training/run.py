"""Plain functions behind ``calmfirst train`` and ``calmfirst evaluate``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from data.schema import ANGER_LABELS
from data.vocab import HEADLINE_METRICS, Script
from model.classifier import CalmFirstConfig, CalmFirstModel
from model.config import SCHEMA_VERSION
from training.breakdown import markdown as breakdown_markdown
from training.calibration import calibrate
from training.config import ConfigError, DataSource, TrainingArguments
from training.contrast import contrast_markdown, contrast_metrics
from training.data import Example, load_examples, load_source
from training.trainer import CalmFirstTrainer, TrainResult, evaluate_model, summarize_examples

logger = logging.getLogger(__name__)


def _check_continued(args: TrainingArguments, continued: CalmFirstConfig) -> None:
    """A continued model keeps its backbone, adapters and head dropout: a config that sets them otherwise is an
    error naming the key, not a setting silently ignored (and then printed in the card as if it had applied).
    ``model.lora: null`` stays allowed: it merges the adapters and fine-tunes the whole encoder."""
    given = args.model.model_fields_set
    where = f"the model it continues ({args.model.init_from})"
    fix = "leave it as that model has it, or train from the backbone (model.init_from=null)"
    if "backbone" in given and args.model.backbone != continued.backbone:
        raise ConfigError(f"model.backbone={args.model.backbone!r}: {where} is built on {continued.backbone!r}; {fix}")
    if "head_dropout" in given and args.model.head_dropout != continued.head_dropout:
        raise ConfigError(f"model.head_dropout={args.model.head_dropout}: {where} has {continued.head_dropout}; {fix}")
    asked, has = args.model.lora, continued.lora
    if "lora" not in given or asked is None:
        return
    if has is None:
        raise ConfigError(f"model.lora: {where} has no adapters (its encoder was fine-tuned whole); {fix}")
    for key in ("r", "alpha", "dropout", "target_modules"):
        if getattr(asked, key) != getattr(has, key):
            raise ConfigError(f"model.lora.{key}={getattr(asked, key)}: {where} has {getattr(has, key)}; {fix}")


def build_model(args: TrainingArguments) -> CalmFirstModel:
    if args.model.init_from:
        logger.info("continuing from %s", args.model.init_from)
        model = CalmFirstModel.from_pretrained(args.model.init_from)
        # the continued model is a new release: it carries this config's name and version
        model.config.name, model.config.version = args.model.name, args.model.version
        # and it is trained on today's labels, whatever schema the model it continues was trained on
        model.config.schema_version = SCHEMA_VERSION
        # and it reads as many tokens as this config says: the positions go to 512 whatever the model was
        # trained at (until 2026-12-04 a continued model kept its own max_length and the setting was ignored)
        if model.config.max_length != args.model.max_length:
            logger.info("max_length %d -> %d", model.config.max_length, args.model.max_length)
            model.config.max_length = args.model.max_length
        _check_continued(args, model.config)
        if args.model.lora is None:
            model.unfreeze_encoder()  # full fine-tuning of the continued model
        return model
    cfg = CalmFirstConfig(
        lora=args.model.lora,
        max_length=args.model.max_length,
        head_dropout=args.model.head_dropout,
        name=args.model.name,
        version=args.model.version,
    )
    model = CalmFirstModel.from_backbone(args.model.backbone, config=cfg, seed=args.seed)
    if args.model.lora is None:
        model.unfreeze_encoder()
    return model


def split_examples(
    args: TrainingArguments, examples: list[Example]
) -> tuple[list[Example], list[Example], list[Example]]:
    train = [e for e in examples if e.split in args.data.train_splits]
    dev = [e for e in examples if e.split == args.data.eval_split and not e.weak]
    test = [e for e in examples if e.split == args.data.test_split and not e.weak]
    present = sorted({e.split for e in examples})
    if not train:
        raise ConfigError(
            f"data.train_splits={args.data.train_splits}: no record is in them (splits present: {present})"
        )
    # checked before the model loads: a misspelt split ran without dev (no best epoch, no calibration) or without
    # test, silently; records lacking a label the metrics read crashed the run after training
    for key, name, part in (
        ("data.eval_split", args.data.eval_split, dev),
        ("data.test_split", args.data.test_split, test),
    ):
        if name == "-":
            continue
        if not part:
            raise ConfigError(f"{key}={name!r}: no record is in that split (splits present: {present}); '-' for none")
        if not any(e.anger_level is not None and e.complaint_type and e.threat is not None for e in part):
            raise ConfigError(
                f"{key}={name!r}: none of its {len(part)} records has all three labels (anger_level, complaint_type, "
                "threat), which its metrics read; label them, or set it to '-'"
            )
    return train, dev, test


def run_training(args: TrainingArguments, *, model: CalmFirstModel | None = None) -> TrainResult:
    examples = load_examples(args.data)
    train, dev, test = split_examples(args, examples)
    summary = summarize_examples(examples)
    summary["weak_sources"] = [s.path for s in args.data.sources if s.weak]
    model = model or build_model(args)
    trainer = CalmFirstTrainer(model, args, train, dev, test, data_summary=summary)
    return trainer.train()


def load_eval_examples(data: str, *, split: str | None, columns: dict[str, str] | None = None) -> list[Example]:
    src = DataSource(path=data, columns=columns or {})
    examples = load_source(src)
    if split and split != "all":
        examples = [e for e in examples if e.split == split]
    if not examples:
        raise ValueError(f"no examples in {data!r}" + (f" for split {split!r}" if split else ""))
    return examples


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when PyTorch sees a GPU, else ``cpu``; anything else must be cpu or cuda[:N]."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        return device
    raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")


def records_fingerprint(examples: list[Example]) -> str:
    """What the evaluated records were, in 16 hex digits (their ids and normalised texts, in any order):
    ``calmfirst compare`` refuses to average runs evaluated on different records even when split and count agree."""
    import hashlib

    from data.splits import text_key

    lines = sorted(f"{e.id}\t{text_key(e.text)}" for e in examples)
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()[:16]


def run_evaluation(
    model_path: str,
    data: str,
    *,
    split: str | None = "test",
    fit_temperature_on: str | None = None,
    report_dir: str | None = None,
    columns: dict[str, str] | None = None,
    resamples: int = 200,
    contrast: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Metrics of a saved model on labelled data, plus (``contrast``) its figures on the contrast set
    (``training.contrast``: minimal pairs, key ``contrast``, a section of report.md). ``device``: cpu, cuda[:N]
    or auto (a GPU when there is one)."""
    model = CalmFirstModel.from_pretrained(model_path).to(resolve_device(device))
    calibration = None
    if fit_temperature_on:
        dev = load_eval_examples(data, split=fit_temperature_on, columns=columns)
        calibration = calibrate(model, dev)
    examples = load_eval_examples(data, split=split, columns=columns)
    metrics = evaluate_model(model, examples, breakdown_resamples=resamples)
    metrics["model"] = {"path": model_path, "name": model.config.name, "version": model.config.version}
    metrics["data"] = {"path": data, "split": split, "n": len(examples), "records": records_fingerprint(examples)}
    metrics["temperature"] = model.config.temperature
    metrics["temperature_by_script"] = model.config.temperature_by_script
    if calibration is not None:
        metrics["calibration"] = calibration.to_dict()
    if contrast:
        metrics["contrast"] = contrast_metrics(model)
    if report_dir:
        write_report(metrics, Path(report_dir))
    return metrics


def write_report(metrics: dict[str, Any], out: Path) -> None:
    """Markdown report with confusion matrices, plus a PNG of calibration and per-class F1."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False))
    lines = [f"# Evaluation: {metrics['model']['name']} {metrics['model']['version']}", ""]
    lines.append(f"Data: `{metrics['data']['path']}` split `{metrics['data']['split']}` ({metrics['n']} records)")
    lines += ["", "| metric | overall | hant | hans |", "|---|---|---|---|"]
    per = metrics.get("per_script", {})
    for key in HEADLINE_METRICS:
        cells = [f"{metrics[key]:.3f}"] + [f"{per[s][key]:.3f}" if s in per else "-" for s in Script]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", "## Anger confusion (rows gold, columns predicted)", ""]
    lines.append("| gold \\ pred | " + " | ".join(ANGER_LABELS) + " |")
    lines.append("|---" * (len(ANGER_LABELS) + 1) + "|")
    for name, row in zip(ANGER_LABELS, metrics["anger_confusion"], strict=True):
        lines.append(f"| {name} | " + " | ".join(str(x) for x in row) + " |")
    labels = metrics["type_labels"]
    lines += ["", "## Complaint-type confusion (rows gold, columns predicted)", ""]
    lines.append("| gold \\ pred | " + " | ".join(labels) + " |")
    lines.append("|---" * (len(labels) + 1) + "|")
    for name, row in zip(labels, metrics["type_confusion"], strict=True):
        lines.append(f"| {name} | " + " | ".join(str(x) for x in row) + " |")
    lines += ["", "## Per-type F1", "", "| type | F1 | support |", "|---|---|---|"]
    for t in labels:
        lines.append(f"| {t} | {metrics['type_f1'][t]:.3f} | {metrics['type_support'][t]} |")
    if "breakdown" in metrics:
        lines += ["", *breakdown_markdown(metrics["breakdown"], metrics.get("confident_mistakes", []))]
    if "contrast" in metrics:
        lines += ["", *contrast_markdown(metrics["contrast"])]
    lines += ["", "![calibration and per-class F1](report.png)", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    _plot(metrics, out / "report.png")


def _plot(metrics: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    rel = [b for b in metrics["calm_first_reliability"] if b["n"] > 0]
    ax1.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    ax1.plot([b["confidence"] for b in rel], [b["frequency"] for b in rel], "o-", label="model")
    ax1.set_xlabel("predicted P(calm_first)")
    ax1.set_ylabel("observed frequency")
    ax1.set_title(f"calm_first calibration (ECE {metrics['calm_first_ece']:.3f})")
    ax1.legend()
    labels = metrics["type_labels"]
    ax2.barh(labels, [metrics["type_f1"][t] for t in labels])
    ax2.set_xlim(0, 1)
    ax2.set_title(f"complaint-type F1 (macro {metrics['type_macro_f1']:.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
