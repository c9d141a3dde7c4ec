"""The agent-turn model: steps and mistakes as a multi-label classifier on the frozen e5 backbone.

How it reads a turn
-------------------
Real agents write long, polite turns that carry two or three codes ("不好意思讓您久等了，已經幫您
重新下單，請問還有其他需要嗎？" is apologize + commit_action + confirm_satisfaction). So a turn is
read as *units*: the whole turn and each of its clauses (split on 。！？!?；; and newlines). Every
unit is embedded by the frozen multilingual-e5-small encoder (mean pooled, L2-normalised) and put
next to the embedding of the customer's turn before it (the context that ``argued``,
``blamed_customer`` and ``solution_while_furious`` depend on) and their element-wise product. A
small head (one hidden layer, one output per code) scores every unit; a code is present when any
unit fires (max over units: the whole turn or any clause). The head is trained on whole-turn
labels through that max (multiple-instance learning), so clause-level labels are never needed.

Per-code thresholds are fitted on the train split's out-of-fold scores (best F1 on a grid): ten
times the mistake labels dev has, each scored by parts not trained on that turn, so the threshold
sees the scores a new turn gets (``HeadSettings.thresholds_on``; ``dev`` is the older way). Dev
and test are then only measured. The heads are a small safetensors file (``model/agent_steps/``); the encoder is
the backbone every CalmFirst install already prepares. Where the backbone or the heads are
absent, :func:`load_agent_detector` falls back to the TF-IDF detector of
``service.routing.agent_steps``.

Serving without PyTorch
-----------------------
Training needs PyTorch; reading turns does not. A loaded model runs its heads in numpy
(:class:`NumpyHead`) and, with the ``onnx``/``auto`` backend (the serving default, as for the
customer model), embeds through the ONNX export of the same frozen encoder
(``model.onnx.encoder``: built once under ``~/.cache/calmfirst/onnx-encoder/``, reused by every
later start). PyTorch is then never imported, which keeps a server with both models under 500 MB.
``backend="torch"`` (``CALMFIRST_BACKEND=torch``) embeds through PyTorch (:class:`E5Encoder`).

Commands::

    python -m service.routing.agent_model embed      # fill the embedding cache (work/cache/, ignored)
    python -m service.routing.agent_model train      # train on train, thresholds out of fold, report test
    python -m service.routing.agent_model evaluate   # the saved heads on the test split
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from data.vocab import Mistake, Step, values
from service.io.store import SqliteStore
from service.routing.agent_steps import STEP_CODES, AgentTurn, CustomerAnger

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
#: Where the trained heads are shipped (committed: a few MB).
DEFAULT_MODEL_DIR = ROOT / "model" / "agent_steps"
#: Embedding cache for training and validation runs (``work/`` is ignored by git).
DEFAULT_CACHE = ROOT / "work" / "cache" / "agent_e5.sqlite"
#: the customer model whose anger scores the agent-turn model is trained and measured with (the shipped one)
DEFAULT_CUSTOMER_MODEL = ROOT / "model" / "default"
HEADS_FILE = "agent_heads.safetensors"
CONFIG_FILE = "agent_model.json"
METRICS_FILE = "metrics.json"
NGRAMS_FILE = "agent_ngrams.json"
#: ``tfidf`` or the folder of an agent-turn model (read by ``load_agent_detector``)
AGENT_MODEL_ENV = "CALMFIRST_AGENT_MODEL"
#: ``auto``/``onnx`` (the ONNX encoder, no PyTorch) or ``torch``, when ``load_agent_detector`` is not told
BACKEND_ENV = "CALMFIRST_BACKEND"
ENCODER_BACKENDS = ("auto", "onnx", "torch")

MISTAKE_CODES: tuple[str, ...] = values(Mistake)
#: Every code the model predicts: the ten steps, then the five mistakes.
CODES: tuple[str, ...] = STEP_CODES + MISTAKE_CODES
#: Clause boundaries (CONTRACT.md: "long turns are read clause by clause").
CLAUSE_SPLIT = re.compile(r"[。！？!?；;\n\r]+")
MAX_CLAUSES = 12
MIN_CLAUSE_CHARS = 2


def clauses(text: str) -> list[str]:
    """The clauses of a turn (empty and 1-character pieces dropped, at most ``MAX_CLAUSES``)."""
    parts = [p.strip() for p in CLAUSE_SPLIT.split(text)]
    parts = [p for p in parts if len(p) >= MIN_CLAUSE_CHARS]
    return parts[:MAX_CLAUSES]


def units(text: str) -> list[str]:
    """What the model reads of a turn: the whole turn, then its clauses when there are two or more."""
    whole = text.strip() or text
    parts = clauses(text)
    return [whole] + (parts if len(parts) > 1 else [])


# ------------------------------------------------------------------ encoders
class TextEncoder(Protocol):
    """Texts in, one L2-normalised float32 row per text out."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class E5Encoder:
    """A frozen sentence encoder: a ``transformers`` encoder, mean pooled over tokens, L2-normalised.

    ``backbone`` is the id or folder ``model.backbone`` resolves (default: the offline e5-small);
    tests pass a tiny in-memory BERT and its tokenizer as ``module``/``tokenizer``.
    """

    def __init__(
        self,
        backbone: str | None = None,
        *,
        module: Any = None,
        tokenizer: Any = None,
        prefix: str | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        threads: int | None = None,
    ) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        if module is None:
            from model.backbone import DEFAULT_BACKBONE
            from model.classifier import _load_encoder

            backbone = backbone or DEFAULT_BACKBONE
            module, tokenizer, meta = _load_encoder(backbone)
            checksum = str(meta.get("weights_sha256", ""))[:12]
            prefix = str(meta.get("text_prefix", "query: ")) if prefix is None else prefix
            self.name = f"{backbone}@{checksum}" if checksum else backbone
        else:
            if tokenizer is None:
                raise ValueError("an encoder module needs its tokenizer")
            self.name = backbone or "in-memory"
        self.module = module.eval()
        self.tokenizer = tokenizer
        self.prefix = prefix or ""
        self.max_length = max_length
        self.batch_size = batch_size
        self.dim = int(module.config.hidden_size)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                enc = self.tokenizer(
                    [self.prefix + texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = self.module(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[idx] = pooled.float().numpy()
        return out


def _f32_bytes(vec: np.ndarray) -> bytes:
    return np.asarray(vec, dtype=np.float32).tobytes()


def _f32_array(blob: bytes | str) -> np.ndarray:
    assert isinstance(blob, bytes)
    return np.frombuffer(blob, dtype=np.float32)


class EmbeddingCache(SqliteStore[np.ndarray]):
    """Embeddings on disk (SQLite), keyed by the encoder's name and the text's hash (``key(name, text)``)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, table="emb", column="vec", column_type="BLOB", encode=_f32_bytes, decode=_f32_array)


class CachedEncoder:
    """An encoder whose results are kept in an :class:`EmbeddingCache`; texts are embedded once."""

    def __init__(self, encoder: TextEncoder, cache: EmbeddingCache, *, chunk: int = 256) -> None:
        self.encoder = encoder
        self.cache = cache
        self.name = encoder.name
        self.dim = encoder.dim
        self.chunk = chunk

    def encode(self, texts: Sequence[str], *, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        keys = [EmbeddingCache.key(self.name, t) for t in texts]
        have = self.cache.get_many(sorted(set(keys)))
        todo = sorted({(k, t) for k, t in zip(keys, texts, strict=True) if k not in have})
        for start in range(0, len(todo), self.chunk):
            part = todo[start : start + self.chunk]
            vecs = self.encoder.encode([t for _, t in part])
            self.cache.put_many((k, v) for (k, _), v in zip(part, vecs, strict=True))
            have.update({k: v for (k, _), v in zip(part, vecs, strict=True)})
            if progress is not None:
                progress(start + len(part), len(todo))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([have[k] for k in keys]).astype(np.float32)


def _encoder_backbone(encoder_name: str) -> str:
    """The backbone a model's heads were trained on, from the encoder name they recorded (``<backbone>@<sha>``).

    The default backbone or a local folder is used as named; anything else (an in-memory test encoder,
    a hub id) gives the default backbone, as before the name was read.
    """
    from model.backbone import DEFAULT_BACKBONE

    name = encoder_name.rpartition("@")[0] if "@" in encoder_name else encoder_name
    if name == DEFAULT_BACKBONE or (name and Path(name).is_dir()):
        return name
    return DEFAULT_BACKBONE


def load_encoder(backbone: str | None = None, *, backend: str = "auto", threads: int | None = None) -> TextEncoder:
    """The frozen sentence encoder for reading turns.

    ``auto``/``onnx``: the ONNX Runtime export of ``backbone`` (``model.onnx.encoder``), built on first use
    (which needs PyTorch) and cached; from the cache no PyTorch is imported. Without onnxruntime, or when
    the export fails, PyTorch with a warning (as ``model.loading.load_model`` does for the customer model).
    ``torch``: :class:`E5Encoder`.
    """
    if backend not in ENCODER_BACKENDS:
        raise ValueError(f"backend must be one of {ENCODER_BACKENDS}, got {backend!r}")
    if backend != "torch":
        from model.onnx.runtime import onnxruntime_available

        if not onnxruntime_available():
            logger.warning("onnxruntime is not installed: the agent-turn encoder runs on PyTorch")
        else:
            try:
                from model.onnx.encoder import OnnxSentenceEncoder, ensure_encoder_export

                return OnnxSentenceEncoder.load(ensure_encoder_export(backbone), threads=threads)
            except Exception as e:  # a failed export must leave a working detector
                logger.warning(
                    "ONNX agent-turn encoder unavailable (%s: %s); using PyTorch", type(e).__name__, str(e)[:200]
                )
    return E5Encoder(backbone, threads=threads)


# ------------------------------------------------------------------ features
@dataclass
class TurnFeatures:
    """The units of many turns, flattened: ``x[i]`` belongs to turn ``owner[i]``."""

    x: np.ndarray
    owner: np.ndarray
    n_turns: int


def featurize(encoder: TextEncoder, texts: Sequence[str], contexts: Sequence[str | None] | None = None) -> TurnFeatures:
    """Unit features ``[unit, context, unit * context, has_context]`` for every unit of every turn."""
    given = list(contexts) if contexts is not None else [None] * len(texts)
    ctx = [(c or "").strip() for c in given]
    if len(ctx) != len(texts):
        raise ValueError("one context (or None) per agent turn")
    all_units: list[str] = []
    owner: list[int] = []
    for i, t in enumerate(texts):
        us = units(t)
        all_units.extend(us)
        owner.extend([i] * len(us))
    ctx_texts = sorted({c for c in ctx if c})
    emb = encoder.encode(all_units + ctx_texts)
    u = emb[: len(all_units)]
    ctx_emb = dict(zip(ctx_texts, emb[len(all_units) :], strict=True))
    zero = np.zeros(encoder.dim, dtype=np.float32)
    per_turn = [ctx_emb[c] if c else zero for c in ctx]
    c = np.stack([per_turn[i] for i in owner]) if owner else np.zeros((0, encoder.dim), dtype=np.float32)
    has = np.array([[1.0 if ctx[i] else 0.0] for i in owner], dtype=np.float32)
    x = np.concatenate([u, c, u * c, has.reshape(-1, 1)], axis=1) if owner else np.zeros((0, 3 * encoder.dim + 1))
    return TurnFeatures(x=x.astype(np.float32), owner=np.asarray(owner, dtype=np.int64), n_turns=len(texts))


# ------------------------------------------------------------------ the head
#: where per-code thresholds can be fitted -> what the saved model's info says of it
THRESHOLD_SOURCES: dict[str, str] = {
    "train_oof": "out-of-fold scores of the train split, best F1 per code",
    "dev": "dev split (all turns), best F1 per code",
}


@dataclass
class HeadSettings:
    """The head's shape and training recipe (saved with it)."""

    hidden: int = 256
    dropout: float = 0.2
    epochs: int = 40
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 64
    max_pos_weight: float = 8.0
    real_weight: float = 1.0
    seed: int = 0
    #: combine with character n-grams (``NgramModel``) through a per-code stack fitted out of fold
    ngram: bool = True
    folds: int = 5
    #: where the per-code thresholds are fitted: ``train_oof``, the out-of-fold scores of the train split
    #: (4,752 turns, 905 with a mistake), or ``dev`` (487 turns, 95 real mistake labels). Why train_oof:
    #: thresholds fitted on dev alone were noisy (real mistakes micro-F1 0.593 on dev, 0.389 on test); in
    #: the cross-fitted dev measure (50 halvings) train_oof gave 0.574 against 0.549 (model README).
    thresholds_on: str = "train_oof"
    #: the customer model's anger_score of the customer turns after and before the agent turn as two more parts of
    #: the stack (``CustomerAnger``; 0.5, logit 0, where a turn is absent). Chosen on dev by a rule written
    #: before the run (2026-12-05; model README): real dev mistakes micro-F1 0.562 -> 0.629 with the model's own
    #: thresholds, 0.529 -> 0.593 cross-fitted, steps 0.916 -> 0.916; the turn before carries most of it.
    customer_anger: bool = True

    def __post_init__(self) -> None:
        if self.thresholds_on not in THRESHOLD_SOURCES:
            raise ValueError(f"thresholds_on: {self.thresholds_on!r} is not one of {', '.join(THRESHOLD_SOURCES)}")
        if self.customer_anger and not self.ngram:
            raise ValueError("customer_anger: needs ngram (the customer's anger enters through the per-code stack)")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _build_head(n_in: int, n_out: int, s: HeadSettings) -> Any:
    from torch import nn

    return nn.Sequential(nn.Linear(n_in, s.hidden), nn.GELU(), nn.Dropout(s.dropout), nn.Linear(s.hidden, n_out))


class NumpyHead:
    """The trained head (``Linear -> GELU -> Dropout -> Linear``, in eval mode) in numpy: no PyTorch to read turns.

    ``state`` holds the ``nn.Sequential``'s ``state_dict`` as arrays (``0.weight``, ``0.bias``, ``3.weight``,
    ``3.bias``); GELU is the exact (erf) one of ``nn.GELU()``.
    """

    def __init__(self, state: dict[str, np.ndarray]) -> None:
        self.w1 = np.ascontiguousarray(state["0.weight"], dtype=np.float32)
        self.b1 = np.asarray(state["0.bias"], dtype=np.float32)
        self.w2 = np.ascontiguousarray(state["3.weight"], dtype=np.float32)
        self.b2 = np.asarray(state["3.bias"], dtype=np.float32)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"0.weight": self.w1, "0.bias": self.b1, "3.weight": self.w2, "3.bias": self.b2}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        h = np.asarray(x, dtype=np.float32) @ self.w1.T + self.b1
        erf = np.asarray(_ERF(h.astype(np.float64) / math.sqrt(2.0)), dtype=np.float32)  # math.erf: no SciPy
        h = 0.5 * h * (1.0 + erf)
        return np.asarray(h @ self.w2.T + self.b2, dtype=np.float32)


_ERF = np.frompyfunc(math.erf, 1, 1)


def _turn_logits(head: Any, x: Any, owner: Any, n_turns: int) -> Any:
    """Max over each turn's units of the units' logits (a code fires if any unit fires)."""
    import torch

    unit_logits = head(x)
    out = torch.full((n_turns, unit_logits.shape[1]), -1e4, dtype=unit_logits.dtype)
    index = owner.unsqueeze(1).expand_as(unit_logits)
    return out.scatter_reduce(0, index, unit_logits, reduce="amax", include_self=True)


def subset(features: TurnFeatures, turns: np.ndarray) -> TurnFeatures:
    """The units of some turns, renumbered 0..len(turns)-1 in the order given."""
    new_index = np.full(features.n_turns, -1, dtype=np.int64)
    new_index[turns] = np.arange(len(turns))
    keep = new_index[features.owner] >= 0
    owner = new_index[features.owner[keep]]
    return TurnFeatures(x=features.x[keep], owner=owner, n_turns=len(turns))


def _train_head(
    features: TurnFeatures,
    y: np.ndarray,
    weights: np.ndarray,
    s: HeadSettings,
    n_codes: int,
    *,
    log: Callable[[str], None] | None = None,
) -> Any:
    """One head trained through the max over each turn's units (multiple-instance learning)."""
    import torch

    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    n = features.n_turns
    n_pos = y.sum(0)
    pos_weight = np.clip(np.sqrt((n - n_pos) / np.maximum(n_pos, 1.0)), 1.0, s.max_pos_weight)
    head = _build_head(features.x.shape[1], n_codes, s)
    opt = torch.optim.AdamW(head.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight, dtype=torch.float32), reduction="none")
    order = np.argsort(features.owner, kind="stable")
    bounds = np.searchsorted(features.owner[order], np.arange(n + 1))
    by_turn = [order[bounds[i] : bounds[i + 1]] for i in range(n)]
    x_all = torch.from_numpy(features.x)
    steps_per_epoch = math.ceil(n / s.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=s.lr, total_steps=s.epochs * steps_per_epoch)
    head.train()
    for epoch in range(s.epochs):
        perm = rng.permutation(n)
        total = 0.0
        for start in range(0, n, s.batch_size):
            batch = perm[start : start + s.batch_size]
            unit_idx = np.concatenate([by_turn[i] for i in batch])
            owner = np.concatenate([np.full(len(by_turn[i]), k) for k, i in enumerate(batch)])
            logits = _turn_logits(head, x_all[unit_idx], torch.from_numpy(owner), len(batch))
            loss = loss_fn(logits, torch.from_numpy(y[batch]))
            loss = (loss.mean(1) * torch.from_numpy(weights[batch])).sum() / float(weights[batch].sum())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(batch)
        if log is not None and (epoch + 1) % 10 == 0:
            log(f"epoch {epoch + 1}/{s.epochs}: loss {total / n:.4f}")
    head.eval()
    return head


def _head_probs(head: Any, features: TurnFeatures) -> np.ndarray:
    if isinstance(head, NumpyHead):
        unit_logits = head(features.x).astype(np.float64)
        logits = np.full((features.n_turns, unit_logits.shape[1]), -1e4, dtype=np.float64)
        np.maximum.at(logits, features.owner, unit_logits)  # a code fires if any unit of the turn fires
        return np.asarray(1.0 / (1.0 + np.exp(-logits)))
    import torch

    with torch.inference_mode():
        logits = _turn_logits(head, torch.from_numpy(features.x), torch.from_numpy(features.owner), features.n_turns)
    return np.asarray(torch.sigmoid(logits).numpy(), dtype=np.float64)


def label_matrix(rows: Sequence[dict[str, Any]], codes: Sequence[str] = CODES) -> np.ndarray:
    return np.array([[c in r["steps"] or c in r["mistakes"] for c in codes] for r in rows], dtype=np.float32)


def fit_thresholds(
    probs: np.ndarray, y: np.ndarray, codes: Sequence[str], *, grid: Sequence[float] | None = None, default: float = 0.5
) -> dict[str, float]:
    """Per code, the threshold with the best F1 on (dev) data; ties go to the one nearest ``default``.

    A code with no positive example keeps ``default`` (there is nothing to fit it on).
    """
    grid = list(grid) if grid is not None else [round(v, 2) for v in np.arange(0.05, 0.951, 0.05)]
    out: dict[str, float] = {}
    for j, code in enumerate(codes):
        pos = y[:, j] > 0.5
        if not pos.any():
            out[code] = default
            continue
        best: tuple[float, float, float] | None = None
        for t in grid:
            pred = probs[:, j] >= t
            tp = float((pred & pos).sum())
            f1 = 2 * tp / (float(pred.sum()) + float(pos.sum())) if tp else 0.0
            key = (f1, -abs(t - default), t)
            if best is None or key > best:
                best = key
        assert best is not None
        out[code] = float(best[2])
    return out


_WHITE_SPACES = re.compile(r"\s\s+")


def char_wb_ngrams(text: str, ngram_range: tuple[int, int] = (1, 3)) -> list[str]:
    """The n-grams of ``TfidfVectorizer(analyzer="char_wb", ngram_range=...)``'s analyzer (lowercased, each
    word padded with a space, n-grams inside words), without importing scikit-learn: reading turns in a
    server then costs no scikit-learn/SciPy (about 150 MB of RSS). ``fit`` still uses the vectoriser."""
    text = _WHITE_SPACES.sub(" ", text.lower())
    min_n, max_n = ngram_range
    out: list[str] = []
    for w in text.split():
        w = " " + w + " "
        w_len = len(w)
        for n in range(min_n, max_n + 1):
            offset = 0
            out.append(w[offset : offset + n])
            while offset + n < w_len:
                offset += 1
                out.append(w[offset : offset + n])
            if offset == 0:  # a word shorter than n is counted once
                break
    return out


class NgramModel:
    """Character 1-3-gram TF-IDF and one logistic regression per code, stored as plain arrays (no pickle).

    The lexical half of the agent-turn model: thanks, apologies and requests for details are words, and
    character n-grams read them in both scripts (Traditional text is also seen in its Simplified form).
    """

    NGRAMS = (1, 3)

    def __init__(
        self, vocabulary: Sequence[str], idf: np.ndarray, coef: np.ndarray, intercept: np.ndarray, codes: Sequence[str]
    ) -> None:
        self.vocabulary = list(vocabulary)
        self.index = {g: i for i, g in enumerate(self.vocabulary)}
        self.idf = np.asarray(idf, dtype=np.float32)
        self.coef = np.asarray(coef, dtype=np.float32)
        self.intercept = np.asarray(intercept, dtype=np.float32)
        self.codes = tuple(codes)

    @staticmethod
    def _analyzer() -> Callable[[str], list[str]]:
        return lambda text: char_wb_ngrams(text, NgramModel.NGRAMS)

    @staticmethod
    def view(text: str) -> str:
        from data.script import convert

        return text + " " + convert(text, "t2s")

    @classmethod
    def fit(
        cls, texts: Sequence[str], y: np.ndarray, codes: Sequence[str], *, c: float = 8.0, seed: int = 0
    ) -> NgramModel:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        vec = TfidfVectorizer(analyzer="char_wb", ngram_range=cls.NGRAMS, min_df=2, sublinear_tf=True)
        x = vec.fit_transform([cls.view(t) for t in texts])
        vocab = [""] * len(vec.vocabulary_)
        for g, i in vec.vocabulary_.items():
            vocab[i] = g
        coef = np.zeros((len(codes), x.shape[1]), dtype=np.float32)
        intercept = np.full(len(codes), -10.0, dtype=np.float32)  # a code never seen is never predicted
        for j in range(len(codes)):
            yj = y[:, j] > 0.5
            if yj.sum() == 0 or yj.all():
                continue
            clf = LogisticRegression(C=c, class_weight="balanced", max_iter=2000, random_state=seed, solver="liblinear")
            with threadpool_limits(1):
                clf.fit(x, yj.astype(int))
            coef[j] = clf.coef_[0]
            intercept[j] = clf.intercept_[0]
        return cls(vocab, vec.idf_, coef, intercept, codes)

    def _rows(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per text, the TF-IDF row as (columns, float32 values): sublinear tf, idf, L2-normalised."""
        analyze = self._analyzer()
        out = []
        for t in texts:
            counts: dict[int, int] = {}
            for g in analyze(self.view(t)):
                i = self.index.get(g)
                if i is not None:
                    counts[i] = counts.get(i, 0) + 1
            idx = np.fromiter(counts, dtype=np.int64, count=len(counts))
            v = (1.0 + np.log(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))) * self.idf[idx]
            v /= np.linalg.norm(v) or 1.0
            out.append((idx, v.astype(np.float32)))
        return out

    def transform(self, texts: Sequence[str]) -> Any:
        """The TF-IDF rows (sublinear tf, idf, L2-normalised), as the fitted vectoriser would give them."""
        from scipy.sparse import csr_matrix

        rows = self._rows(texts)
        return csr_matrix(
            (
                np.concatenate([v for _, v in rows]) if rows else np.zeros(0, dtype=np.float32),
                np.concatenate([idx for idx, _ in rows]) if rows else np.zeros(0, dtype=np.int64),
                np.cumsum([0] + [len(idx) for idx, _ in rows]),
            ),
            shape=(len(texts), len(self.vocabulary)),
            dtype=np.float32,
        )

    def probs(self, texts: Sequence[str]) -> np.ndarray:
        """P(code) per text, in numpy (the sparse rows never need SciPy here)."""
        z = np.tile(self.intercept, (len(texts), 1))
        for r, (idx, v) in enumerate(self._rows(texts)):
            if len(idx):
                z[r] += self.coef[:, idx] @ v
        return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def fit_stack(parts: Sequence[np.ndarray], y: np.ndarray) -> np.ndarray:
    """Per code, a logistic regression on the parts' logits (out-of-fold scores): weights (codes, parts + 1)."""
    from sklearn.linear_model import LogisticRegression

    k = len(parts)
    w = np.zeros((y.shape[1], k + 1))
    for j in range(y.shape[1]):
        yj = y[:, j] > 0.5
        if yj.sum() < 2 or yj.all():
            w[j, :k] = 1.0 / k  # nothing to learn from: the mean logit
            continue
        clf = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000)
        clf.fit(np.stack([_logit(p[:, j]) for p in parts], axis=1), yj.astype(int))
        w[j, :k] = clf.coef_[0]
        w[j, k] = clf.intercept_[0]
    return w


def apply_stack(parts: Sequence[np.ndarray], w: np.ndarray) -> np.ndarray:
    z = sum(w[:, i] * _logit(p) for i, p in enumerate(parts)) + w[:, len(parts)]
    return np.asarray(1.0 / (1.0 + np.exp(-z)))


#: the stack's parts, in order (the last two only with ``HeadSettings.customer_anger``)
STACK_PARTS: tuple[str, ...] = ("e5 heads", "character n-grams", "customer anger after", "customer anger before")


def anger_parts(anger: Sequence[CustomerAnger] | None, n_turns: int, n_codes: int) -> list[np.ndarray]:
    """The customer's anger after and before each turn as two stack parts of shape (turns, codes): the same
    score for every code (the stack weighs it per code), 0.5 (logit 0: no evidence) where a turn is absent."""
    given = list(anger) if anger is not None else [CustomerAnger()] * n_turns
    if len(given) != n_turns:
        raise ValueError(f"anger: {len(given)} values for {n_turns} agent turns")
    out = []
    for side in ("after", "before"):
        col = np.array([0.5 if getattr(a, side) is None else getattr(a, side) for a in given], dtype=np.float64)
        out.append(np.repeat(col[:, None], n_codes, axis=1))
    return out


@dataclass
class AgentTurnModel:
    """Heads over the frozen encoder; implements the detector interface (``detect``, ``scores``, ``codes``)."""

    encoder: TextEncoder | None
    settings: HeadSettings = field(default_factory=HeadSettings)
    codes: tuple[str, ...] = CODES
    thresholds: dict[str, float] = field(default_factory=dict)
    head: Any = None
    n_in: int = 0
    encoder_name: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    kind: str = "e5-heads"
    ngram: NgramModel | None = None
    stack: np.ndarray | None = None
    #: the final probabilities of the train turns, each from parts not trained on it (set by ``fit`` when
    #: there are folds; not saved): what ``fit_thresholds_out_of_fold`` fits on
    oof_probs: np.ndarray | None = field(default=None, repr=False)
    #: the two text parts' scores of turns already read, by (turn, context) (``keep_parts``; off by default)
    parts_cache: Any = field(default=None, repr=False)

    def keep_parts(self, size: int) -> None:
        """Keep the e5 and n-gram scores of the last ``size`` turns read (by turn and customer turn before it).

        Why: in a live chat an agent turn is read again when the customer answers it (the customer's anger after
        it is one of the stack's parts), and only the stack needs computing again: without this the re-read costs
        the e5 forwards of all its units again (a call after a customer message 6 -> 15 ms, 2-core Intel Xeon,
        2026-12-05). A turn's parts do not depend on what it is read with (each missing one is read alone)."""
        from service.live_cache import LruCache

        self.parts_cache = LruCache(size) if size else None

    # -------------------------------------------------------------- train
    def fit(
        self,
        rows: Sequence[dict[str, Any]],
        *,
        features: TurnFeatures | None = None,
        anger: Sequence[CustomerAnger] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> AgentTurnModel:
        """Train on labelled turns (``text``, ``context``, ``steps``, ``mistakes``): the e5 head on every turn,
        and with ``settings.ngram`` the n-gram model and the per-code stack of the two (fitted on out-of-fold
        scores of ``settings.folds`` folds, so the stack never sees a score of a turn its part was trained on)."""
        if features is None:
            features = self._features([r["text"] for r in rows], [r.get("context") for r in rows])
        s = self.settings
        y = label_matrix(rows, self.codes)
        weights = np.array(
            [s.real_weight if r.get("source") != "calmfirst_written" else 1.0 for r in rows], dtype=np.float32
        )
        self.n_in = features.x.shape[1]
        self.head = _train_head(features, y, weights, s, len(self.codes), log=log)
        self.ngram = None
        self.stack = None
        self.oof_probs = None
        if s.ngram or s.thresholds_on == "train_oof":
            texts = [r["text"] for r in rows]
            oof_e5 = np.zeros_like(y)
            oof_ng = np.zeros_like(y)
            fold = np.random.default_rng(s.seed).integers(0, s.folds, len(rows))
            for k in range(s.folds):
                train_idx, test_idx = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
                head = _train_head(subset(features, train_idx), y[train_idx], weights[train_idx], s, len(self.codes))
                oof_e5[test_idx] = _head_probs(head, subset(features, test_idx))
                if s.ngram:
                    ng = NgramModel.fit([texts[i] for i in train_idx], y[train_idx], self.codes, seed=s.seed)
                    oof_ng[test_idx] = ng.probs([texts[i] for i in test_idx])
                if log is not None:
                    log(f"fold {k + 1}/{s.folds} done")
            self.oof_probs = oof_e5
            if s.ngram:
                parts = [oof_e5, oof_ng, *self._anger_parts(anger, len(rows))]
                self.stack = fit_stack(parts, y)
                self.ngram = NgramModel.fit(texts, y, self.codes, seed=s.seed)
                # in-sample for the stack's few weights per code, out of fold for both parts
                self.oof_probs = apply_stack(parts, self.stack)
        self.thresholds = {c: self.thresholds.get(c, 0.5) for c in self.codes}
        self.encoder_name = getattr(self.encoder, "name", "")
        return self

    def fit_thresholds(
        self,
        rows: Sequence[dict[str, Any]],
        *,
        features: TurnFeatures | None = None,
        anger: Sequence[CustomerAnger] | None = None,
    ) -> dict[str, float]:
        """Per-code thresholds with the best F1 on ``rows`` (the dev split)."""
        probs = self.probs([r["text"] for r in rows], [r.get("context") for r in rows], features=features, anger=anger)
        self.thresholds = fit_thresholds(probs, label_matrix(rows, self.codes), self.codes)
        return self.thresholds

    def fit_thresholds_out_of_fold(self, rows: Sequence[dict[str, Any]]) -> dict[str, float]:
        """Per-code thresholds with the best F1 on the out-of-fold probabilities ``fit`` left for ``rows``."""
        if self.oof_probs is None or len(self.oof_probs) != len(rows):
            raise ValueError("thresholds_on: train_oof needs the out-of-fold scores of fit on these rows")
        self.thresholds = fit_thresholds(self.oof_probs, label_matrix(rows, self.codes), self.codes)
        return self.thresholds

    # ------------------------------------------------------------ predict
    @property
    def reads_anger(self) -> bool:
        """Whether the stack has the customer-anger parts (models saved before 2026-12-05 do not)."""
        return self.stack is not None and self.stack.shape[1] == len(STACK_PARTS) + 1

    def _anger_parts(self, anger: Sequence[CustomerAnger] | None, n_turns: int) -> list[np.ndarray]:
        if not (self.settings.customer_anger if self.stack is None else self.reads_anger):
            return []
        return anger_parts(anger, n_turns, len(self.codes))

    def _features(self, texts: Sequence[str], contexts: Sequence[str | None] | None) -> TurnFeatures:
        if self.encoder is None:
            raise RuntimeError("the agent-turn model has no encoder")
        return featurize(self.encoder, texts, contexts)

    def probs(
        self,
        texts: Sequence[str],
        contexts: Sequence[str | None] | None = None,
        *,
        features: TurnFeatures | None = None,
        anger: Sequence[CustomerAnger] | None = None,
    ) -> np.ndarray:
        """P(code) per turn, shape (turns, codes); ``anger``: the customer's around each turn (None: unknown)."""
        if self.head is None:
            raise RuntimeError("the agent-turn model is not trained")
        if not texts:
            return np.zeros((0, len(self.codes)), dtype=np.float32)
        if features is None and self.parts_cache is not None and self.ngram is not None and self.stack is not None:
            p_e5, p_ng = self._kept_parts(texts, contexts)
            return apply_stack([p_e5, p_ng, *self._anger_parts(anger, len(texts))], self.stack).astype(np.float32)
        features = features if features is not None else self._features(texts, contexts)
        p = _head_probs(self.head, features)
        if self.ngram is not None and self.stack is not None:
            p = apply_stack([p, self.ngram.probs(texts), *self._anger_parts(anger, len(texts))], self.stack)
        return p.astype(np.float32)

    def _kept_parts(self, texts: Sequence[str], contexts: Sequence[str | None] | None) -> tuple[np.ndarray, np.ndarray]:
        """The e5 and n-gram scores of each turn, from ``parts_cache`` or read now, each missing turn alone."""
        if self.ngram is None:  # pragma: no cover - checked by the caller
            raise RuntimeError("no n-gram part")
        ctx = list(contexts) if contexts is not None else [None] * len(texts)
        rows_e5, rows_ng = [], []
        for text, c in zip(texts, ctx, strict=True):
            key = (text, c or "")
            kept = self.parts_cache.get(key)
            if kept is None:
                kept = (_head_probs(self.head, self._features([text], [c]))[0], self.ngram.probs([text])[0])
                self.parts_cache.put(key, kept)
            rows_e5.append(kept[0])
            rows_ng.append(kept[1])
        return np.stack(rows_e5), np.stack(rows_ng)

    def scores(
        self,
        texts: Sequence[str],
        contexts: Sequence[str | None] | None = None,
        anger: Sequence[CustomerAnger] | None = None,
    ) -> list[dict[str, float]]:
        p = self.probs(texts, contexts, anger=anger)
        return [{c: float(p[i, j]) for j, c in enumerate(self.codes)} for i in range(len(texts))]

    def predict_codes(self, probs: np.ndarray) -> np.ndarray:
        t = np.array([self.thresholds.get(c, 0.5) for c in self.codes], dtype=np.float32)
        return probs >= t

    def detect(
        self,
        texts: Sequence[str],
        contexts: Sequence[str | None] | None = None,
        anger: Sequence[CustomerAnger] | None = None,
    ) -> list[AgentTurn]:
        """Steps and mistakes per agent turn; ``contexts``: the customer's turn before each (or None); ``anger``:
        the customer model's scores of the customer turns around each (``CustomerAnger``; None: unknown)."""
        p = self.probs(texts, contexts, anger=anger)
        on = self.predict_codes(p)
        out = []
        for i in range(len(texts)):
            steps = [c for j, c in enumerate(self.codes) if on[i, j] and c in STEP_CODES]
            mistakes = [c for j, c in enumerate(self.codes) if on[i, j] and c not in STEP_CODES]
            if Mistake.INTERROGATED in mistakes and Step.ASK_DETAILS not in steps:
                steps.append(Step.ASK_DETAILS)  # CONTRACT.md: interrogated is always also ask_details
                steps = [c for c in STEP_CODES if c in steps]
            scores = {c: round(float(p[i, j]), 4) for j, c in enumerate(self.codes)}
            out.append(AgentTurn(steps=steps, mistakes=mistakes, scores=scores))
        return out

    # ------------------------------------------------------------ save / load
    def save(self, path: str | Path, *, metrics: dict[str, Any] | None = None) -> Path:
        from safetensors.numpy import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {f"head.{k}": _as_array(v) for k, v in self.head.state_dict().items()}
        if self.ngram is not None:
            state["ngram.idf"] = np.ascontiguousarray(self.ngram.idf)
            state["ngram.coef"] = np.ascontiguousarray(self.ngram.coef)
            state["ngram.intercept"] = np.ascontiguousarray(self.ngram.intercept)
            (path / NGRAMS_FILE).write_text(json.dumps(self.ngram.vocabulary, ensure_ascii=False) + "\n", "utf-8")
        save_file(state, str(path / HEADS_FILE))
        cfg = {
            "kind": self.kind,
            "codes": list(self.codes),
            "thresholds": self.thresholds,
            "n_in": self.n_in,
            "encoder": self.encoder_name,
            "units": {"split": CLAUSE_SPLIT.pattern, "max_clauses": MAX_CLAUSES, "min_clause_chars": MIN_CLAUSE_CHARS},
            "features": "[unit, context, unit * context, has_context]; unit = whole turn or one clause",
            "settings": self.settings.to_dict(),
            "stack": None if self.stack is None else np.round(self.stack, 6).tolist(),
            "stack_parts": None if self.stack is None else list(STACK_PARTS[: self.stack.shape[1] - 1]),
            "info": self.info,
        }
        (path / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if metrics is not None:
            (path / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(
        cls,
        path: str | Path,
        encoder: TextEncoder | None = None,
        *,
        backend: str = "auto",
        threads: int | None = None,
    ) -> AgentTurnModel:
        """The heads of ``path`` (run in numpy); without ``encoder`` the backbone they were trained on is
        loaded by :func:`load_encoder` (``backend``: ``auto``/``onnx`` without PyTorch, ``torch``)."""
        from safetensors.numpy import load_file

        path = Path(path)
        cfg = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        # models saved before thresholds_on existed had theirs fitted on dev
        # ... and did not read the customer's anger
        settings = HeadSettings(**{"thresholds_on": "dev", "customer_anger": False, **cfg.get("settings", {})})
        codes = tuple(cfg["codes"])
        tensors = load_file(str(path / HEADS_FILE))
        head = NumpyHead({k[len("head.") :]: v for k, v in tensors.items() if k.startswith("head.")})
        if head.w1.shape[1] != int(cfg["n_in"]) or head.w2.shape[0] != len(codes):
            raise ValueError(f"{path}: heads of shape {head.w1.shape}/{head.w2.shape} do not match the config")
        ngram = None
        if "ngram.coef" in tensors:
            vocab = json.loads((path / NGRAMS_FILE).read_text(encoding="utf-8"))
            ngram = NgramModel(vocab, tensors["ngram.idf"], tensors["ngram.coef"], tensors["ngram.intercept"], codes)
        trained_on = str(cfg.get("encoder", ""))
        if encoder is None:
            encoder = load_encoder(_encoder_backbone(trained_on), backend=backend, threads=threads)
            if trained_on and not encoder.name.startswith(trained_on):
                logger.warning("agent-turn heads were trained on encoder %s, reading with %s", trained_on, encoder.name)
        if encoder.dim * 3 + 1 != int(cfg["n_in"]):
            raise ValueError(f"{path}: heads expect {cfg['n_in']} inputs, the encoder gives {encoder.dim * 3 + 1}")
        return cls(
            encoder=encoder,
            settings=settings,
            codes=codes,
            thresholds={c: float(v) for c, v in cfg["thresholds"].items()},
            head=head,
            n_in=int(cfg["n_in"]),
            encoder_name=str(cfg.get("encoder", "")),
            info=dict(cfg.get("info", {})),
            ngram=ngram,
            stack=None if cfg.get("stack") is None else np.asarray(cfg["stack"], dtype=np.float64),
        )


def _as_array(v: Any) -> np.ndarray:
    """A head parameter (a torch tensor or an array) as a contiguous float32 array."""
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    return np.ascontiguousarray(v, dtype=np.float32)


# ------------------------------------------------------------------ evaluation
def evaluate_codes(y_true: np.ndarray, y_pred: np.ndarray, codes: Sequence[str] = CODES) -> dict[str, Any]:
    """Per-code precision/recall/F1/support and micro-F1 for steps, for mistakes and over all codes."""

    def prf(t: np.ndarray, p: np.ndarray) -> dict[str, float]:
        tp = float((t & p).sum())
        n_pred, n_true = float(p.sum()), float(t.sum())
        prec = tp / n_pred if n_pred else 0.0
        rec = tp / n_true if n_true else 0.0
        f1 = 2 * tp / (n_pred + n_true) if (n_pred + n_true) else 0.0
        return {"precision": round(prec, 4), "recall": round(rec, 4), "f1": round(f1, 4), "support": int(n_true)}

    t = y_true.astype(bool)
    p = y_pred.astype(bool)
    steps = [j for j, c in enumerate(codes) if c in STEP_CODES]
    mistakes = [j for j, c in enumerate(codes) if c not in STEP_CODES]
    return {
        "n": len(t),
        "steps_micro": prf(t[:, steps], p[:, steps]),
        "mistakes_micro": prf(t[:, mistakes], p[:, mistakes]),
        "all_micro": prf(t, p),
        "exact_match": round(float((t == p).all(axis=1).mean()), 4) if len(t) else 0.0,
        "turns_without_any_code_predicted": int((~p.any(axis=1)).sum()),
        "per_code": {c: prf(t[:, j], p[:, j]) for j, c in enumerate(codes)},
    }


def is_real(row: dict[str, Any]) -> bool:
    return row.get("source") != "calmfirst_written"


def is_drawn_by_model(row: dict[str, Any]) -> bool:
    """A turn pre-selected by a model's scores (``selection`` ``model_score:...``, the mistake-rich round):
    richer in mistakes than real traffic, so the figures are also given without them."""
    return str(row.get("selection", "")).startswith("model_score:")


def measure(
    model: Any,
    rows: Sequence[dict[str, Any]],
    *,
    probs: np.ndarray | None = None,
    anger: Sequence[CustomerAnger] | None = None,
    levels: Sequence[int | None] | None = None,
    rules: Any = None,
) -> dict[str, Any]:
    """Per-code figures of ``model`` on ``rows``: all turns, real turns, real turns drawn without a model's
    pre-selection (``real_unselected``, the mix of real traffic) and written turns. With ``levels`` (the
    customer model's level of each turn's context) and ``rules``, ``solution_while_furious`` is decided as a
    conversation decides it (:func:`with_conversation_rule`). ``probs``: the model's scores of ``rows`` when
    already computed (both measures of one evaluation read the turns once); ``anger``: the customer's around
    each turn (:func:`customer_anger`), for a model that reads it."""
    if probs is None:
        probs = model.probs([r["text"] for r in rows], [r.get("context") for r in rows], anger=anger)
    pred = model.predict_codes(probs) if levels is None else with_conversation_rule(model, probs, levels, rules)
    y = label_matrix(rows, model.codes)
    real = np.array([is_real(r) for r in rows])
    unselected = real & ~np.array([is_drawn_by_model(r) for r in rows])
    out = {"all": evaluate_codes(y, pred, model.codes)}
    for name, mask in (("real", real), ("real_unselected", unselected), ("written", ~real)):
        if mask.any():
            out[name] = evaluate_codes(y[mask], pred[mask], model.codes)
    return out


def with_conversation_rule(model: Any, probs: np.ndarray, levels: Sequence[int | None], rules: Any) -> np.ndarray:
    """Predicted codes with ``solution_while_furious`` decided as a conversation decides it (the
    playbook's rule on the predicted steps and the customer model's level of the turn before), not by
    the model's own score: what ``POST /v1/conversations/analyze`` and ``calmfirst qa`` report."""
    from service.routing.conversation import solution_while_furious

    pred = model.predict_codes(probs).copy()
    j = model.codes.index(Mistake.SOLUTION_WHILE_FURIOUS)
    steps_idx = [(k, c) for k, c in enumerate(model.codes) if c in STEP_CODES]
    for i, level in enumerate(levels):
        steps = [c for k, c in steps_idx if pred[i, k]]
        pred[i, j] = solution_while_furious(rules, steps, level)
    return pred


# ------------------------------------------------------------------ loading for the service
def load_agent_detector(
    model_dir: str | Path | None = None,
    *,
    encoder: TextEncoder | None = None,
    fallback: bool = True,
    backend: str | None = None,
    threads: int | None = None,
) -> Any:
    """The agent-turn detector the service uses: the e5 heads when they and the backbone load, else
    the TF-IDF detector fitted from the shipped labels (with a warning saying why).

    ``CALMFIRST_AGENT_MODEL`` chooses when ``model_dir`` is not given: ``tfidf`` for the TF-IDF detector
    (fast; what the tests use), or the folder of another trained model. ``backend`` (default:
    ``CALMFIRST_BACKEND``, else ``auto``) picks the encoder as for the customer model: ``auto``/``onnx``
    through ONNX Runtime without PyTorch, ``torch`` through PyTorch (see :func:`load_encoder`).
    """
    from service.routing.agent_steps import AgentStepDetector

    choice = os.environ.get(AGENT_MODEL_ENV, "").strip()
    if model_dir is None and choice.lower() == "tfidf":
        return AgentStepDetector.from_data()
    path = Path(model_dir) if model_dir is not None else Path(choice) if choice else DEFAULT_MODEL_DIR
    backend = backend or os.environ.get(BACKEND_ENV, "").strip().lower() or "auto"
    try:
        started = time.perf_counter()
        model = AgentTurnModel.load(path, encoder=encoder, backend=backend, threads=threads)
        logger.info(
            "agent-turn model %s loaded in %.1f s (encoder %s)",
            path,
            time.perf_counter() - started,
            type(model.encoder).__name__,
        )
        return model
    except Exception as e:
        if not fallback:
            raise
        logger.warning(
            "agent-turn model unavailable (%s: %s); using the TF-IDF detector", type(e).__name__, str(e)[:200]
        )
        return AgentStepDetector.from_data()


# ------------------------------------------------------------------ commands
def _stc3_dialogue(row_id: str) -> int | None:
    """The numeric STC-3 dialogue id of an agent-turn id ``<dialogue>-t<turn>`` (None for other sources)."""
    head = row_id.split("-t")[0]
    return int(head) if head.isdigit() else None


def stc3_holdout(row: dict[str, Any]) -> bool:
    """True for a turn of an STC-3 dialogue whose id % 5 == 0: the handling score's held-out dialogues.
    The shipped agent model is trained without them so that nothing fitted has seen those chats."""
    if row.get("source") != "stc3":
        return False
    d = _stc3_dialogue(str(row["id"]))
    return d is not None and d % 5 == 0


def training_rows(path: Path | None = None, *, exclude_stc3_holdout: bool = True) -> dict[str, list[dict[str, Any]]]:
    """The labelled agent turns by stored split (text and context joined from ../shared/data)."""
    from service.routing.agent_steps import read_examples

    rows = read_examples(path) if path is not None else read_examples()
    out: dict[str, list[dict[str, Any]]] = {"train": [], "dev": [], "test": []}
    for r in rows:
        split = r.get("split", "train")
        if split != "test" and exclude_stc3_holdout and stc3_holdout(r):
            continue
        out.setdefault(split, []).append(r)
    return out


def _cached_encoder(cache: Path | None, threads: int | None) -> TextEncoder:
    enc: TextEncoder = E5Encoder(threads=threads)
    return CachedEncoder(enc, EmbeddingCache(cache)) if cache is not None else enc


def _progress(label: str) -> Callable[[int, int], None]:
    started = time.perf_counter()

    def report(done: int, total: int) -> None:
        rate = done / max(time.perf_counter() - started, 1e-6)
        logger.info("%s: %d/%d embedded (%.1f/s)", label, done, total, rate)

    return report


def _cmd_embed(args: Any) -> int:
    """Fill the embedding cache with every unit and context of the labelled turns (and, with --stc3, of
    every STC-3 helpdesk turn): later train/validate runs then only read the cache."""
    enc = _cached_encoder(args.cache, args.threads)
    assert isinstance(enc, CachedEncoder)
    texts: list[str] = []
    rows = [r for split in training_rows(exclude_stc3_holdout=False).values() for r in split]
    for r in rows:
        texts.extend(units(r["text"]))
        if r.get("context"):
            texts.append(str(r["context"]).strip())
    if args.stc3:
        from data.tools.stc3_transcripts import dialogues

        last = ""
        for dia in dialogues():
            for t in dia["turns"]:
                if t["role"] == "customer":
                    last = t["text"]
                else:
                    texts.extend(units(t["text"]))
                    if last:
                        texts.append(last.strip())
    uniq = list(dict.fromkeys(texts))
    logger.info("%d units to embed (%d distinct)", len(texts), len(uniq))
    enc.encode(uniq, progress=_progress("embed"))
    return 0


def train_and_evaluate(
    encoder: TextEncoder,
    splits: dict[str, list[dict[str, Any]]],
    settings: HeadSettings,
    *,
    anger: dict[str, list[CustomerAnger]] | None = None,
    log: Callable[[str], None] | None = None,
    measure_test: bool = True,
) -> tuple[AgentTurnModel, dict[str, Any]]:
    """Train on ``train``, thresholds on the train split's out-of-fold scores (or on ``dev``, as
    ``settings.thresholds_on`` says); metrics on dev and (real turns of) test. ``anger``: per split, the
    customer's around each turn (:func:`customer_anger`; without it, unknown everywhere)."""
    anger = anger or {}
    model = AgentTurnModel(encoder=encoder, settings=settings)
    train = splits["train"]
    model.fit(train, anger=anger.get("train"), log=log)
    dev = splits.get("dev", [])
    if settings.thresholds_on == "train_oof":
        model.fit_thresholds_out_of_fold(train)
    elif dev:
        model.fit_thresholds(dev, anger=anger.get("dev"))
    metrics: dict[str, Any] = {"train_turns": len(train), "dev_turns": len(dev)}
    for name, part in (("dev", dev), ("test", splits.get("test", []) if measure_test else [])):
        if part:
            metrics[name] = measure(model, part, anger=anger.get(name))
    return model, metrics


def customer_anger(rows: Sequence[dict[str, Any]], scorer: Any) -> list[CustomerAnger]:
    """The customer model's ``anger_score`` of the customer turns before and after each labelled agent turn, read
    as a conversation reads them (with their context when ``scorer`` was trained on that format). STC-3 turns
    carry both (``customer_before``/``customer_after``, ``data.sources.customer_turns_around``); a reply to a
    review has the review before it; a written turn its ``context``."""
    from model.context import with_context

    reads_context = scorer.config.context_input

    def model_input(turn: Any) -> str | None:
        if not turn or not str(turn[0]).strip():
            return None
        text, ctx = str(turn[0]), [(str(a), str(b)) for a, b in turn[1]]
        return with_context(text, ctx) if reads_context else text

    pairs = []
    for r in rows:
        before = r.get("customer_before") or [r.get("context") or "", []]
        pairs.append((model_input(before), model_input(r.get("customer_after"))))
    inputs = sorted({x for pair in pairs for x in pair if x})
    score = {x: p.anger_score for x, p in zip(inputs, scorer.predict(inputs), strict=True)} if inputs else {}
    return [CustomerAnger(before=score.get(b or ""), after=score.get(a or "")) for b, a in pairs]


def _cmd_train(args: Any) -> int:
    settings = HeadSettings(
        hidden=args.hidden, epochs=args.epochs, lr=args.lr, dropout=args.dropout, real_weight=args.real_weight,
        seed=args.seed, thresholds_on=args.thresholds_on,
    )  # fmt: skip
    enc = _cached_encoder(args.cache, args.threads)
    splits = training_rows(args.data, exclude_stc3_holdout=not args.keep_stc3_holdout)
    started = time.perf_counter()
    anger = None
    if settings.customer_anger:
        from model.loading import load_model

        scorer = load_model(args.customer_model)
        anger = {name: customer_anger(rows, scorer) for name, rows in splits.items()}
    model, metrics = train_and_evaluate(
        enc, splits, settings, anger=anger, log=logger.info, measure_test=not args.no_test
    )
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    model.info = {
        "trained_on": "train split of data/agent_steps/agent_turns.jsonl (real + written)"
        + ("" if args.keep_stc3_holdout else ", without the STC-3 dialogues whose id % 5 == 0"),
        "thresholds_on": THRESHOLD_SOURCES[settings.thresholds_on],
        "measured_on": "test split (held out), real turns reported apart",
        "encoder": enc.name,
    }
    if settings.customer_anger:
        model.info["customer_anger_from"] = str(args.customer_model)
    model.encoder_name = enc.name
    if args.output is not None:
        model.save(args.output, metrics=metrics)
        logger.info("saved %s", args.output)
    summary = {
        k: {
            part: {m: v[part][m]["f1"] for m in ("steps_micro", "mistakes_micro")}
            for part in ("all", "real", "real_unselected", "written")
            if part in v
        }
        for k, v in metrics.items()
        if k in ("dev", "test")
    }
    print(json.dumps(summary, indent=2))  # noqa: T201
    return 0


def _rule_inputs(scorer: Any, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The customer model's level of each turn's context and the default playbook's conversation rules."""
    from service.routing.playbook import DEFAULT_PLAYBOOK, Playbook

    ctx = [(i, r["context"]) for i, r in enumerate(rows) if r.get("context")]
    levels: list[int | None] = [None] * len(rows)
    for (i, _), pred in zip(ctx, scorer.predict([c for _, c in ctx]), strict=True):
        levels[i] = pred.anger_level
    return {"levels": levels, "rules": Playbook.load(DEFAULT_PLAYBOOK).conversation}


def _cmd_evaluate(args: Any) -> int:
    """The saved model on the held-out test split; ``--write`` adds the figures to its metrics.json."""
    enc = _cached_encoder(args.cache, args.threads)
    model = AgentTurnModel.load(args.model, encoder=enc)
    rows = training_rows(args.data)[args.split]
    scorer = None
    if args.customer_model is not None or model.reads_anger:
        from model.loading import load_model

        scorer = load_model(args.customer_model or DEFAULT_CUSTOMER_MODEL)
    anger = customer_anger(rows, scorer) if model.reads_anger and scorer is not None else None
    probs = model.probs([r["text"] for r in rows], [r.get("context") for r in rows], anger=anger)
    out = measure(model, rows, probs=probs)
    if args.customer_model is not None:
        by_rule = measure(model, rows, probs=probs, **_rule_inputs(scorer, rows))
        out = {"model_score": out, "conversation_rule": by_rule}
    if args.write:
        path = Path(args.model) / METRICS_FILE
        metrics = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        if args.customer_model is not None:
            metrics[args.split], metrics[f"{args.split}_conversation_rule"] = (
                out["model_score"],
                out["conversation_rule"],
            )
        else:
            metrics[args.split] = out
        path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(out, indent=2))  # noqa: T201
    return 0


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - exercised by hand
    import argparse

    ap = argparse.ArgumentParser(prog="python -m service.routing.agent_model", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("embed", "train", "evaluate"):
        p = sub.add_parser(name)
        p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="embedding cache (SQLite)")
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--data", type=Path, default=None, help="agent_turns.jsonl (default: the shipped one)")
        if name == "embed":
            p.add_argument("--stc3", action="store_true", help="also every STC-3 helpdesk turn (for validation)")
        if name == "train":
            p.add_argument("--output", type=Path, default=DEFAULT_MODEL_DIR)
            p.add_argument("--hidden", type=int, default=HeadSettings.hidden)
            p.add_argument("--epochs", type=int, default=HeadSettings.epochs)
            p.add_argument("--lr", type=float, default=HeadSettings.lr)
            p.add_argument("--dropout", type=float, default=HeadSettings.dropout)
            p.add_argument("--real-weight", type=float, default=HeadSettings.real_weight)
            p.add_argument("--seed", type=int, default=HeadSettings.seed)
            p.add_argument("--thresholds-on", default=HeadSettings.thresholds_on, choices=tuple(THRESHOLD_SOURCES))
            p.add_argument("--keep-stc3-holdout", action="store_true", help="train on the held-out STC-3 chats too")
            p.add_argument("--no-test", action="store_true", help="dev figures only (for choosing settings)")
            p.add_argument(
                "--customer-model",
                type=Path,
                default=DEFAULT_CUSTOMER_MODEL,
                help="the customer model whose anger the stack reads (HeadSettings.customer_anger)",
            )
        if name == "evaluate":
            p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
            p.add_argument("--write", action="store_true", help="record the figures in the model's metrics.json")
            p.add_argument("--split", default="test", choices=("dev", "test"))
            p.add_argument(
                "--customer-model",
                type=Path,
                default=None,
                help="also decide solution_while_furious as a conversation does, from this customer model's levels",
            )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.cmd == "train" and args.output is not None and str(args.output) in ("-", "none"):
        args.output = None
    return {"embed": _cmd_embed, "train": _cmd_train, "evaluate": _cmd_evaluate}[args.cmd](args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
