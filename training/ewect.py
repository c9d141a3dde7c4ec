"""The public SMP2020-EWECT test: does the model find the angry Weibo posts? (the model-v2 issue's goal: F1 >= 0.76)

EWECT's annotators gave each post one emotion. A post counts as angry for the model when its most likely anger
level is 2 or 3, the same reading ``data.weak`` gives EWECT's ``angry`` label (anger level > 1) when its
training posts are used as a weak source; level >= 1 is reported beside it, and the area under the ROC curve of
P(anger >= 2) says how well the scores rank the posts whatever the cut. The reference the issue quotes is a
TF-IDF + logistic regression trained on EWECT's own usual training posts (train0 + dev0, 27,768): it is
trained and reported here too, so both numbers come from the same run.

Why the usual eval set can be read: it is test data in this project (``data.sources`` puts both labelled eval sets
in the test split), read to report and never to fit, tune or choose. Its posts are mostly about their writers'
lives, not messages to a company, so the model is measured off the task it was trained for (anger *at* a company,
product or service); the issue sets the goal on it anyway, and the gap says how far the anger head carries beyond
customer messages. Some of its rows also occur in EWECT's own usual training posts (133 by the project's text key,
``data.splits.text_key``; ``../shared/data/README.md`` counts 237 whitespace-stripped against all of EWECT's
training files); the figures are given with and without them: the TF-IDF baseline trained on them, and the model may
have met a few (the project's annotated EWECT posts come from those training files).

    python -m training.ewect --model model/default --output runs/ewect/metrics.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score

from data.sources import read_source
from data.splits import text_key

ANGRY = "angry"
#: the EWECT train files the TF-IDF reference learns from (the official usual training posts)
TRAIN_PREFIXES = ("train0:", "dev0:")
EVAL_PREFIX = "usual_eval:"
#: train0/dev0 hold the usual posts and the COVID ("virus") ones; the usual eval set is the usual kind
USUAL = "usual"


@dataclass(frozen=True)
class Post:
    id: str
    text: str
    angry: bool


@dataclass(frozen=True)
class Scores:
    """Angry-vs-not figures on one set of posts."""

    n: int
    angry: int
    model_f1_level2: float
    model_f1_level1: float
    model_auc: float
    tfidf_f1: float


@dataclass(frozen=True)
class EwectReport:
    model: str
    version: str
    backend: str
    all_posts: Scores
    without_train_duplicates: Scores
    train_posts: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def markdown(self) -> list[str]:
        lines = [
            f"SMP2020-EWECT usual eval, angry vs not; model {self.model} ({self.version}, {self.backend}); "
            f"the TF-IDF + logistic regression reference trained on {self.train_posts:,} EWECT usual training posts.",
            "",
            "| posts | n | angry | model F1 (level >= 2) | model F1 (level >= 1) | model AUC | TF-IDF + LR F1 |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, s in (("all", self.all_posts), ("not in EWECT's train", self.without_train_duplicates)):
            lines.append(
                f"| {name} | {s.n} | {s.angry} | {s.model_f1_level2:.3f} | {s.model_f1_level1:.3f} | "
                f"{s.model_auc:.3f} | {s.tfidf_f1:.3f} |"
            )
        return lines


def load_posts(root: Path | None = None) -> tuple[list[Post], list[Post]]:
    """(EWECT's usual training posts, its usual eval posts), each with its angry-or-not label."""
    train, test = [], []
    for row in read_source("smp2020_ewect", root):
        post = Post(row.id, row.text, row.meta.get("emotion") == ANGRY)
        if row.id.startswith(TRAIN_PREFIXES) and row.meta.get("type") == USUAL:
            train.append(post)
        elif row.id.startswith(EVAL_PREFIX):
            test.append(post)
    if not train or not test:
        raise ValueError(f"smp2020_ewect: {len(train)} usual training and {len(test)} usual eval posts found")
    return train, test


def tfidf_reference(train: Sequence[Post], test: Sequence[Post]) -> np.ndarray:
    """The issue's reference: character 1-3-gram TF-IDF and a balanced logistic regression; angry predictions."""
    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), min_df=2, sublinear_tf=True)
    x = vec.fit_transform([p.text for p in train])
    clf = LogisticRegression(max_iter=2000, C=4.0, class_weight="balanced")
    clf.fit(x, [p.angry for p in train])
    return np.asarray(clf.predict(vec.transform([p.text for p in test])), dtype=bool)


def _scores(gold: np.ndarray, levels: np.ndarray, p_ge2: np.ndarray, tfidf: np.ndarray) -> Scores:
    auc = float(roc_auc_score(gold, p_ge2)) if 0 < gold.sum() < len(gold) else float("nan")
    return Scores(
        n=len(gold),
        angry=int(gold.sum()),
        model_f1_level2=float(f1_score(gold, levels >= 2, zero_division=0)),
        model_f1_level1=float(f1_score(gold, levels >= 1, zero_division=0)),
        model_auc=auc,
        tfidf_f1=float(f1_score(gold, tfidf, zero_division=0)),
    )


def evaluate_ewect(
    model_path: str, *, root: Path | None = None, backend: str = "auto", batch_size: int = 64
) -> EwectReport:
    """The model as the service runs it (``backend``) and the TF-IDF reference on EWECT's usual eval posts
    (all of them, and those not in its train)."""
    from model.loading import load_model

    train, test = load_posts(root)
    model = load_model(model_path, backend=backend)
    preds = model.predict([p.text for p in test], batch_size=batch_size)
    levels = np.asarray([p.anger_level for p in preds])
    p_ge2 = np.asarray([p.calm_first_prob for p in preds])
    gold = np.asarray([p.angry for p in test])
    tfidf = tfidf_reference(train, test)
    seen = {text_key(p.text) for p in train}
    fresh = np.asarray([text_key(p.text) not in seen for p in test])
    return EwectReport(
        model=model_path,
        version=model.config.version,
        backend=model.backend,
        all_posts=_scores(gold, levels, p_ge2, tfidf),
        without_train_duplicates=_scores(gold[fresh], levels[fresh], p_ge2[fresh], tfidf[fresh]),
        train_posts=len(train),
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.ewect", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="model/default")
    p.add_argument("--backend", default="auto", help="auto/onnx (what the service runs) or torch")
    p.add_argument("--output", default=None, help="write the figures here as JSON (and .md beside it)")
    args = p.parse_args(argv)
    try:
        report = evaluate_ewect(args.model, backend=args.backend)
    except (FileNotFoundError, ValueError) as e:
        print(f"training.ewect: {e}", file=sys.stderr)  # noqa: T201
        return 2
    lines = report.markdown()
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
