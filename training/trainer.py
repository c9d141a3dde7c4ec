"""Multi-task fine-tuning: a trainer that takes model + arguments + data.

Runs in one process on a laptop CPU, on a GPU when present, and under
``accelerate launch`` / ``torchrun`` with several processes without changes
(``accelerate`` handles device placement, DDP and data sharding).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from data.schema import COMPLAINT_TYPES, SPLITS
from data.vocab import SELECTION_METRICS
from model.classifier import CalmFirstModel, Prediction
from model.context import with_context
from training.augment import augment
from training.breakdown import breakdown, confident_mistakes, gold_record
from training.config import TrainingArguments
from training.data import Example, model_input
from training.metrics import compute_all, prediction_row, selection_score

logger = logging.getLogger(__name__)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def class_weights(counts: Counter[Any], classes: Sequence[Any], mode: str) -> torch.Tensor:
    """Per-class loss weights, mean 1 over the classes present."""
    n = sum(counts.values())
    w = []
    for c in classes:
        k = counts.get(c, 0)
        if mode == "none" or k == 0:
            w.append(1.0)
        else:
            inv = n / (len(classes) * k)
            w.append(inv if mode == "inverse" else math.sqrt(inv))
    t = torch.tensor(w, dtype=torch.float32)
    return t / t.mean()


@dataclass
class TrainResult:
    best_dir: Path
    last_dir: Path
    best_epoch: int
    best_dev: dict[str, Any]
    test: dict[str, Any] | None
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    #: the anger temperatures fitted on dev, jointly and per script (``training.calibration``)
    calibration: dict[str, Any] | None = None


class LengthGroupedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of similar length, in random order: far less padding than plain shuffling.

    Indices are shuffled, cut into mega-batches of ``mega`` batches, sorted by length inside
    each mega-batch and cut into batches; the batch order is shuffled again. Random
    batches of customer messages pad to about 2.3x the real tokens; this brings it near 1.1x.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, seed: int, mega: int = 50) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.mega = mega
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):  # type: ignore[no-untyped-def]
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        idx = torch.randperm(len(self.lengths), generator=g).tolist()
        size = self.batch_size * self.mega
        batches: list[list[int]] = []
        for start in range(0, len(idx), size):
            chunk = sorted(idx[start : start + size], key=lambda i: -self.lengths[i])
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        order = torch.randperm(len(batches), generator=g).tolist()
        return iter([batches[i] for i in order])


class Collator:
    """Tokenizes a batch; Simplified texts become Traditional with ``opencc_prob`` (training only)."""

    def __init__(self, model: CalmFirstModel, args: TrainingArguments, *, train: bool, seed: int) -> None:
        self.model = model
        self.args = args
        self.train = train
        self.rng = random.Random(seed)
        self.types = list(model.config.complaint_types)

    def __call__(self, batch: list[Example]) -> dict[str, torch.Tensor]:
        texts = []
        aug = self.args.augment
        for ex in batch:
            text = ex.text
            if self.train:
                text = augment(
                    text,
                    ex.script,
                    self.rng,
                    opencc_prob=aug.opencc_prob,
                    opencc_configs=aug.opencc_configs,
                    t2s_prob=aug.t2s_prob,
                    noise_prob=aug.noise_prob,
                )
            # context: kept at evaluation; dropped now and then in training so a later turn
            # sent alone (no context) is still read well
            if ex.context and self.args.use_context and not (self.train and self.rng.random() < aug.context_drop):
                text = with_context(text, ex.context)
            texts.append(text)
        enc = self.model.tokenize(texts)
        n_types = len(self.types)
        multi = torch.zeros(len(batch), n_types)
        for i, ex in enumerate(batch):
            for t in ex.types:
                multi[i, self.types.index(t)] = 1.0
        enc.update(
            {
                "anger": torch.tensor([ex.anger_level if ex.anger_level is not None else -1 for ex in batch]),
                "ctype": torch.tensor(
                    [self.types.index(ex.complaint_type) if ex.complaint_type else -1 for ex in batch]
                ),
                "multi": multi,
                "threat": torch.tensor([float(ex.threat) if ex.threat is not None else -1.0 for ex in batch]),
                "weight": torch.tensor([ex.weight for ex in batch], dtype=torch.float32),
                # weak anger: "level > k" is known true/false for one threshold k (data.weak)
                "weak_k": torch.tensor([ex.anger_bound[0] if ex.anger_bound else -1 for ex in batch]),
                "weak_y": torch.tensor([float(ex.anger_bound[1]) if ex.anger_bound else 0.0 for ex in batch]),
            }
        )
        return enc


class CalmFirstTrainer:
    def __init__(
        self,
        model: CalmFirstModel,
        args: TrainingArguments,
        train_examples: Sequence[Example],
        eval_examples: Sequence[Example] | None = None,
        test_examples: Sequence[Example] | None = None,
        *,
        data_summary: dict[str, Any] | None = None,
    ) -> None:
        if not train_examples:
            raise ValueError("no training examples")
        self.model = model
        self.args = args
        self.train_examples = list(train_examples)
        self.eval_examples = list(eval_examples or [])
        self.test_examples = list(test_examples or [])
        self.data_summary = data_summary or {}
        labelled = [e for e in self.train_examples if e.anger_level is not None]
        self.anger_w = class_weights(Counter(e.anger_level for e in labelled), [0, 1, 2, 3], args.loss.class_weighting)
        typed = [e for e in self.train_examples if e.complaint_type]
        self.type_w = class_weights(
            Counter(e.complaint_type for e in typed), list(model.config.complaint_types), args.loss.class_weighting
        )
        threats = [e.threat for e in self.train_examples if e.threat is not None]
        pos = max(sum(threats), 1)
        neg = max(len(threats) - sum(threats), 1)
        self.threat_pos_weight = torch.tensor(min(math.sqrt(neg / pos), 10.0))

    # ------------------------------------------------------------------ loss
    def loss(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg = self.args.loss
        device = out["anger_logits"].device
        w = batch["weight"]
        total = torch.zeros((), device=device)
        anger = batch["anger"]
        m = anger >= 0
        if m.any():
            y = anger[m]
            levels = torch.arange(1, out["anger_logits"].shape[1] + 1, device=device)
            target = (y.unsqueeze(1) >= levels).float()
            per = F.binary_cross_entropy_with_logits(out["anger_logits"][m], target, reduction="none").sum(1)
            cw = self.anger_w.to(device)[y] * w[m]
            total = total + cfg.anger * (per * cw).sum() / cw.sum()
        weak_k = batch.get("weak_k")
        if weak_k is not None and (weak_k >= 0).any():
            # A weak source knows one threshold only (EWECT "angry" = level > 1; a 5-star review =
            # not level > 1): binary cross-entropy on that cumulative logit, down-weighted by the
            # source's weight and averaged over the batch (not over the weights, which would cancel them).
            m = weak_k >= 0
            logit = out["anger_logits"][m].gather(1, weak_k[m].unsqueeze(1)).squeeze(1)
            bce = F.binary_cross_entropy_with_logits(logit, batch["weak_y"][m], reduction="none")
            total = total + cfg.anger * (bce * w[m]).sum() / len(w)
        ctype = batch["ctype"]
        m = ctype >= 0
        if m.any():
            ce = F.cross_entropy(
                out["type_logits"][m],
                ctype[m],
                weight=self.type_w.to(device),
                label_smoothing=cfg.label_smoothing,
                reduction="none",
            )
            total = total + cfg.type * (ce * w[m]).sum() / w[m].sum()
            bce = F.binary_cross_entropy_with_logits(out["multi_logits"][m], batch["multi"][m], reduction="none")
            total = total + cfg.multi * (bce.mean(1) * w[m]).sum() / w[m].sum()
        threat = batch["threat"]
        m = threat >= 0
        if m.any():
            bce = F.binary_cross_entropy_with_logits(
                out["threat_logits"][m], threat[m], pos_weight=self.threat_pos_weight.to(device), reduction="none"
            )
            total = total + cfg.threat * (bce * w[m]).sum() / w[m].sum()
        return total

    # ----------------------------------------------------------------- train
    def train(self) -> TrainResult:
        from accelerate import Accelerator

        args = self.args
        set_seed(args.seed)
        if args.num_threads:
            torch.set_num_threads(args.num_threads)
        accelerator = Accelerator(cpu=not torch.cuda.is_available())
        is_main = accelerator.is_main_process
        out_dir = Path(args.output_dir)
        model = self.model
        # the saved model tells the service whether to feed conversation context (model.context)
        model.config.context_input = bool(args.use_context and any(e.context for e in self.train_examples))
        model.train()
        heads = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
        body = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.")]
        optimizer = torch.optim.AdamW(
            [
                {"params": body, "lr": args.learning_rate},
                {"params": heads, "lr": args.head_learning_rate},
            ],
            weight_decay=args.weight_decay,
        )
        gen = torch.Generator().manual_seed(args.seed)
        collate = Collator(model, args, train=True, seed=args.seed + accelerator.process_index)
        loader: DataLoader[Any]
        if args.group_by_length:
            lengths = [len(e.text) for e in self.train_examples]
            loader = DataLoader(
                self.train_examples,  # type: ignore[arg-type]
                batch_sampler=LengthGroupedBatchSampler(lengths, args.batch_size, seed=args.seed),
                collate_fn=collate,
            )
        else:
            loader = DataLoader(
                self.train_examples,  # type: ignore[arg-type]
                batch_size=args.batch_size,
                shuffle=True,
                generator=gen,
                collate_fn=collate,
            )
        steps_per_epoch = math.ceil(len(loader) / accelerator.num_processes)
        total_steps = args.max_steps or steps_per_epoch * args.epochs
        # max_steps wins over epochs (as in transformers' Trainer): the data is read again until it is reached;
        # it was cut at the end of the last epoch while the schedule decayed towards max_steps
        epochs = math.ceil(total_steps / steps_per_epoch) if args.max_steps else args.epochs
        from transformers import get_linear_schedule_with_warmup

        scheduler = get_linear_schedule_with_warmup(optimizer, int(total_steps * args.warmup_ratio), total_steps)
        wrapped, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
        n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logger.info(
            "training %d examples, %d epochs, %d steps, %d trainable parameters, %d process(es)",
            len(self.train_examples),
            epochs,
            total_steps,
            n_trainable,
            accelerator.num_processes,
        )
        history: list[dict[str, Any]] = []
        best_score = -1.0
        best_epoch = 0
        best_dev: dict[str, Any] = {}
        step = 0
        t0 = time.time()
        for epoch in range(1, epochs + 1):
            wrapped.train()
            running = 0.0
            for batch in loader:
                out = wrapped(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                loss = self.loss(out, batch)
                accelerator.backward(loss)
                if args.grad_clip:
                    accelerator.clip_grad_norm_(wrapped.parameters(), args.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                step += 1
                running += float(loss.detach())
                if is_main and step % args.log_every == 0:
                    logger.info(
                        "epoch %d step %d/%d loss %.4f (%.0fs)",
                        epoch,
                        step,
                        total_steps,
                        running / args.log_every,
                        time.time() - t0,
                    )
                    running = 0.0
                if step >= total_steps:
                    break
            accelerator.wait_for_everyone()
            record: dict[str, Any] = {"epoch": epoch, "step": step, "seconds": round(time.time() - t0, 1)}
            if is_main and self.eval_examples:
                dev = self.evaluate(self.eval_examples)
                record["dev"] = {str(k): dev[k] for k in SELECTION_METRICS}
                score = selection_score(dev)
                record["dev_score"] = score
                logger.info("epoch %d dev %s", epoch, json.dumps(record["dev"]))
                if score > best_score:
                    best_score, best_epoch, best_dev = score, epoch, dev
                    self._save(out_dir / "model-best", dev_metrics=dev, epoch=epoch)
            history.append(record)
            accelerator.wait_for_everyone()
            if step >= total_steps:
                break
        result = TrainResult(
            best_dir=out_dir / "model-best",
            last_dir=out_dir / "model-last",
            best_epoch=best_epoch,
            best_dev=best_dev,
            test=None,
            history=history,
            seconds=time.time() - t0,
        )
        if is_main:
            self._save(out_dir / "model-last", dev_metrics=None, epoch=epoch)
            if not self.eval_examples:
                self._save(out_dir / "model-best", dev_metrics=None, epoch=epoch)
                result.best_epoch = epoch
            result = self._finish(result)
        accelerator.wait_for_everyone()
        return result

    def _finish(self, result: TrainResult) -> TrainResult:
        """Reload the best model, fit temperature on dev, measure test, write metrics and card."""
        best = CalmFirstModel.from_pretrained(result.best_dir)
        if self.args.fit_temperature and self.eval_examples:
            from training.calibration import calibrate

            calibration = calibrate(best, self.eval_examples, batch_size=self.args.eval_batch_size)
            result.calibration = calibration.to_dict()
            result.best_dev = evaluate_model(best, self.eval_examples, batch_size=self.args.eval_batch_size)
        if self.test_examples:
            result.test = evaluate_model(best, self.test_examples, batch_size=self.args.eval_batch_size)
        from training.contrast import contrast_metrics

        # the contrast pairs (data/contrast) are checked on every trained model (shortcut detector)
        contrast = contrast_metrics(best)
        best.config.training = self._training_info(result) | {
            "contrast": {k: contrast[k] for k in ("set", "n_pairs", "pair_accuracy", "item_accuracy", "failed_pairs")}
        }
        best.save_pretrained(result.best_dir)
        metrics = {
            "best_epoch": result.best_epoch,
            "temperature": best.config.temperature,
            "temperature_by_script": best.config.temperature_by_script,
            "calibration": result.calibration,
            "contrast": contrast,
            "dev": result.best_dev,
            "test": result.test,
            "history": result.history,
            "seconds": round(result.seconds, 1),
            "data": self.data_summary,
        }
        Path(self.args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.args.output_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False))
        return result

    def _training_info(
        self, result: TrainResult | None, *, dev_metrics: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        info: dict[str, Any] = {
            "data": self.data_summary,
            "hyperparameters": {k: v for k, v in self.args.to_dict().items() if k != "data"}
            | {"data_sources": [s for s in self.args.to_dict()["data"]["sources"]]},
        }
        if result is not None:
            chosen = result.test or result.best_dev
            if chosen:
                info["metrics"] = {k: v for k, v in chosen.items() if not isinstance(v, list) or k == "type_labels"}
                info["eval_split"] = (
                    f"{self.args.data.test_split} split ({len(self.test_examples)} records)"
                    if result.test
                    else f"{self.args.data.eval_split} split"
                )
            info["best_epoch"] = result.best_epoch
        elif dev_metrics:
            info["metrics"] = {k: v for k, v in dev_metrics.items() if not isinstance(v, list)}
            info["eval_split"] = f"{self.args.data.eval_split} split"
        return info

    def _save(self, path: Path, *, dev_metrics: dict[str, Any] | None, epoch: int) -> None:
        self.model.config.name = self.args.model.name
        self.model.config.version = self.args.model.version
        self.model.config.training = self._training_info(None, dev_metrics=dev_metrics) | {"epoch": epoch}
        self.model.save_pretrained(path)

    def evaluate(self, examples: Sequence[Example]) -> dict[str, Any]:
        return evaluate_model(self.model, examples, batch_size=self.args.eval_batch_size)


def predictions(model: CalmFirstModel, texts: Sequence[str], *, batch_size: int = 64) -> list[Prediction]:
    texts = list(texts)
    return model.scores_from_logits(model.predict_logits(texts, batch_size=batch_size), texts=texts)


def evaluate_model(
    model: CalmFirstModel,
    examples: Sequence[Example],
    *,
    batch_size: int = 64,
    use_context: bool | None = None,
    breakdown_resamples: int | None = None,
) -> dict[str, Any]:
    """Metrics of a model on labelled examples (all three tasks must be labelled)."""
    full = [e for e in examples if e.anger_level is not None and e.complaint_type and e.threat is not None]
    if use_context is None:  # as the service does: context only for a model trained on it (model.context)
        use_context = model.config.context_input
    preds = predictions(model, [model_input(e, use_context=use_context) for e in full], batch_size=batch_size)
    pred_dicts = [prediction_row(p) for p in preds]
    out = compute_all([e.as_gold() for e in full], pred_dicts)
    if breakdown_resamples is not None:
        golds = [gold_record(e) for e in full]
        out["breakdown"] = breakdown(golds, pred_dicts, resamples=breakdown_resamples)
        out["confident_mistakes"] = confident_mistakes(golds, pred_dicts)
    return out


def summarize_examples(examples: Sequence[Example]) -> dict[str, Any]:
    def count(xs: Sequence[Example]) -> dict[str, Any]:
        return {
            "n": len(xs),
            "anger_level": dict(sorted(Counter(e.anger_level for e in xs if e.anger_level is not None).items())),
            "complaint_type": {
                t: c for t, c in Counter(e.complaint_type for e in xs if e.complaint_type).most_common()
            },
            "threat": sum(1 for e in xs if e.threat),
            "script": dict(Counter(e.script for e in xs)),
            "source": dict(Counter(e.source for e in xs).most_common()),
            "weak": sum(1 for e in xs if e.weak),
        }

    return {split: count([e for e in examples if e.split == split]) for split in SPLITS}


__all__ = ["COMPLAINT_TYPES", "CalmFirstTrainer", "evaluate_model"]
