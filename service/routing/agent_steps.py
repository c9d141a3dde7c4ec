"""Which steps of the practice an agent's turn takes, and which mistakes it makes.

A real, small model: character n-gram TF-IDF + one logistic regression per code, trained
on the project's own labelled agent turns (data/agent_steps/agent_turns.jsonl). Character
n-grams suit short Chinese chat turns in both scripts (no word segmenter needed), and the
model trains in about a second, so it is fitted at load time from the shipped data instead
of shipping a pickle that breaks across scikit-learn versions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from threadpoolctl import threadpool_limits

from data.loader import AGENT_TURNS_FILE, load_agent_turns
from data.script import convert
from data.vocab import TURN_MISTAKES as _TURN_MISTAKES
from data.vocab import Mistake, Step, values
from service.io.readers import read_jsonl_file

logger = logging.getLogger(__name__)

STEP_CODES: tuple[str, ...] = values(Step)
#: Mistakes visible in the agent's own words; ``solution_while_furious`` needs the customer's state.
TURN_MISTAKES: tuple[str, ...] = values(_TURN_MISTAKES)
DEFAULT_DATA = AGENT_TURNS_FILE


@dataclass(frozen=True)
class AgentTurn:
    steps: list[str]
    mistakes: list[str]
    scores: dict[str, float]


@dataclass(frozen=True)
class CustomerAnger:
    """The customer model's ``anger_score`` of the customer turns just before and just after an agent turn, as
    the conversation scored them (None: no such turn, e.g. the chat's last agent turn). The e5 agent-turn model
    reads them for its mistakes: an argued or blaming reply sits between an angry turn and an angrier one."""

    before: float | None = None
    after: float | None = None


class AgentDetector(Protocol):
    """What reads agent turns: the e5 agent-turn model (``service.routing.agent_model``) or this TF-IDF one."""

    def detect(
        self,
        texts: Sequence[str],
        contexts: Sequence[str | None] | None = None,
        anger: Sequence[CustomerAnger] | None = None,
    ) -> list[AgentTurn]: ...


def read_examples(path: Path = DEFAULT_DATA) -> list[dict[str, Any]]:
    """Labelled agent turns, codes checked line by line; real turns' text is joined from ../shared/data.

    The project's written turns carry their text; real ones (STC-3 replies, public replies to
    reviews) carry only an id, and ``data.loader.load_agent_turns`` joins their text. Without
    ../shared/data those are left out, so the detector still fits on the written turns.
    """
    for n, row in read_jsonl_file(path):
        for key in ("steps", "mistakes"):
            if key not in row:
                raise ValueError(f"{path.name}:{n}: missing {key!r}")
        for code in row["steps"]:
            if code not in STEP_CODES:
                raise ValueError(f"{path.name}:{n}: unknown step {code!r}")
        for code in row["mistakes"]:
            # solution_while_furious is labelled on real turns (annotators saw the customer's turn) but
            # is derived from the conversation at run time: accepted here, never learnt from the words
            if code not in (*TURN_MISTAKES, Mistake.SOLUTION_WHILE_FURIOUS):
                raise ValueError(f"{path.name}:{n}: unknown mistake {code!r}")
    return load_agent_turns(path, on_missing="skip")


def _to_simplified_view(text: str) -> str:
    # Both scripts map to the same n-grams: Traditional text is added in its Simplified form.
    return text + " " + convert(text, "t2s")


class AgentStepDetector:
    """Multi-label classifier over agent turns (steps + mistakes)."""

    def __init__(self, *, threshold: float = 0.5, seed: int = 0) -> None:
        self.codes: tuple[str, ...] = STEP_CODES + TURN_MISTAKES
        self.threshold = threshold
        self.seed = seed
        self._vec: Any = None
        self._models: dict[str, Any] = {}

    def fit(self, rows: Sequence[dict[str, Any]]) -> AgentStepDetector:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        texts = [_to_simplified_view(r["text"]) for r in rows]
        self._vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), min_df=1, sublinear_tf=True)
        x = self._vec.fit_transform(texts)
        self._models = {}
        for code in self.codes:
            y = np.array([code in r["steps"] or code in r["mistakes"] for r in rows], dtype=int)
            if y.sum() == 0 or y.sum() == len(y):
                logger.warning("agent-step code %s has no positive or no negative example; never predicted", code)
                continue
            # liblinear on one thread: a few hundred sparse rows fit in milliseconds; multi-threaded BLAS made
            # start-up take tens of seconds on a busy 2-core machine.
            clf = LogisticRegression(
                C=8.0, class_weight="balanced", max_iter=2000, random_state=self.seed, solver="liblinear"
            )
            with threadpool_limits(1):
                clf.fit(x, y)
            self._models[code] = clf
        return self

    @classmethod
    def from_data(cls, path: Path = DEFAULT_DATA, *, split: str | None = "train", **kw: Any) -> AgentStepDetector:
        rows = read_examples(path)
        if split is not None:
            rows = [r for r in rows if r.get("split", "train") == split]
        return cls(**kw).fit(rows)

    def scores(self, texts: Sequence[str]) -> list[dict[str, float]]:
        if self._vec is None:
            raise RuntimeError("detector not fitted")
        if not texts:
            return []
        x = self._vec.transform([_to_simplified_view(t) for t in texts])
        cols = {code: clf.predict_proba(x)[:, 1] for code, clf in self._models.items()}
        return [{code: float(cols[code][i]) if code in cols else 0.0 for code in self.codes} for i in range(len(texts))]

    def detect(
        self,
        texts: Sequence[str],
        contexts: Sequence[str | None] | None = None,
        anger: Sequence[CustomerAnger] | None = None,
    ) -> list[AgentTurn]:
        """Steps and mistakes per turn; ``contexts`` (the customer's turn before) and ``anger`` are accepted for the
        common interface with the e5 model and not read: n-grams of the agent's own words are all this model sees."""
        del contexts, anger
        out = []
        for s in self.scores(texts):
            steps = [c for c in STEP_CODES if s[c] >= self.threshold]
            mistakes = [c for c in TURN_MISTAKES if s[c] >= self.threshold]
            out.append(AgentTurn(steps=steps, mistakes=mistakes, scores={k: round(v, 4) for k, v in s.items()}))
        return out


def evaluate(detector: AgentStepDetector, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-code precision/recall/F1 plus micro/macro F1 and exact-match accuracy."""
    from sklearn.metrics import precision_recall_fscore_support

    pred = detector.detect([r["text"] for r in rows])
    codes = list(detector.codes)
    y_true = np.array([[c in r["steps"] or c in r["mistakes"] for c in codes] for r in rows], dtype=int)
    y_pred = np.array([[c in p.steps or c in p.mistakes for c in codes] for p in pred], dtype=int)
    p, r, f, support = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    micro = precision_recall_fscore_support(y_true, y_pred, average="micro", zero_division=0)
    present = support > 0
    return {
        "n": len(rows),
        "micro_f1": float(micro[2]),
        "macro_f1": float(np.mean(f[present])) if present.any() else 0.0,
        "exact_match": float((y_true == y_pred).all(axis=1).mean()),
        "per_code": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
            for i, c in enumerate(codes)
        },
    }


def main() -> None:  # pragma: no cover - thin report entry point
    import argparse

    ap = argparse.ArgumentParser(description="Train on the train split, report accuracy on the test split.")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--output", type=Path, default=None, help="write the metrics JSON here")
    args = ap.parse_args()
    rows = read_examples(args.data)
    det = AgentStepDetector().fit([r for r in rows if r.get("split", "train") == "train"])
    metrics = evaluate(det, [r for r in rows if r.get("split") == "test"])
    text = json.dumps(metrics, indent=2)
    if args.output:
        args.output.write_text(text + "\n", encoding="utf-8")
    print(text)  # noqa: T201


if __name__ == "__main__":  # pragma: no cover
    main()
