"""The e5 agent-turn model end to end on a tiny BERT: units, features, training, thresholds, save/load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.routing.agent_model import (
    CODES,
    AgentTurnModel,
    CachedEncoder,
    E5Encoder,
    EmbeddingCache,
    HeadSettings,
    NgramModel,
    apply_stack,
    clauses,
    customer_anger,
    evaluate_codes,
    featurize,
    fit_stack,
    fit_thresholds,
    label_matrix,
    load_agent_detector,
    measure,
    stc3_holdout,
    train_and_evaluate,
    units,
    with_conversation_rule,
)
from service.routing.agent_steps import AgentTurn, CustomerAnger
from tests.conftest import TINY_AGENT_TURNS, build_tiny_tokenizer

TURNS = TINY_AGENT_TURNS


def _rows(turns=TURNS, split="train"):  # type: ignore[no-untyped-def]
    return [
        {"id": f"r{i}", "text": t, "context": c, "steps": s, "mistakes": m, "split": split, "source": "stc3"}
        for i, (t, c, s, m) in enumerate(turns)
    ]


@pytest.fixture(scope="module")
def encoder() -> E5Encoder:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    tok = build_tiny_tokenizer()
    cfg = BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    return E5Encoder(module=BertModel(cfg, add_pooling_layer=False), tokenizer=tok, prefix="query: ", backbone="tiny")


def test_clauses_and_units() -> None:
    text = "不好意思讓您久等了。已經幫您重新下單！請問還有其他需要嗎？\n好"
    assert clauses(text) == ["不好意思讓您久等了", "已經幫您重新下單", "請問還有其他需要嗎"]
    assert units(text) == [text, *clauses(text)]
    assert units("謝謝您") == ["謝謝您"]  # one clause: the turn alone
    assert clauses("a;b；cc!dd?ee") == ["cc", "dd", "ee"]  # 1-character pieces are dropped


def test_encoder_is_normalised_and_cached(encoder: E5Encoder, tmp_path: Path) -> None:
    v = encoder.encode(["謝謝", "抱歉讓您久等"])
    assert v.shape == (2, 32) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    cache = EmbeddingCache(tmp_path / "e.sqlite")
    cached = CachedEncoder(encoder, cache)
    first = cached.encode(["謝謝", "抱歉讓您久等", "謝謝"])
    assert np.allclose(first[0], first[2]) and np.allclose(first[:2], v, atol=1e-5)

    class _Broken:
        name, dim = encoder.name, encoder.dim

        def encode(self, texts):  # type: ignore[no-untyped-def]
            raise AssertionError("cache miss")

    again = CachedEncoder(_Broken(), EmbeddingCache(tmp_path / "e.sqlite")).encode(["抱歉讓您久等"])  # type: ignore[arg-type]
    assert np.allclose(again[0], v[1])


def test_features_units_and_context(encoder: E5Encoder) -> None:
    f = featurize(encoder, ["謝謝您。非常抱歉！", "好的"], ["太慢了", None])
    assert f.n_turns == 2 and list(f.owner) == [0, 0, 0, 1]
    assert f.x.shape == (4, 3 * 32 + 1)
    assert f.x[0, -1] == 1.0 and f.x[3, -1] == 0.0  # has_context
    assert np.allclose(f.x[3, 32:64], 0.0)  # no context: zeros


def test_train_predict_save_load_end_to_end(encoder: E5Encoder, tmp_path: Path) -> None:
    settings = HeadSettings(hidden=16, epochs=60, lr=1e-2, batch_size=4, dropout=0.0, folds=2)
    splits = {"train": _rows(), "dev": _rows(split="dev"), "test": _rows(split="test")}
    model, metrics = train_and_evaluate(encoder, splits, settings)
    assert set(model.thresholds) == set(CODES)
    probs = model.probs([r["text"] for r in splits["train"]], [r["context"] for r in splits["train"]])
    assert probs.shape == (len(TURNS), len(CODES)) and ((probs >= 0) & (probs <= 1)).all()
    # a handful of turns is learnt (training data, so this checks the plumbing, not generalisation)
    y = label_matrix(splits["train"]) > 0
    assert probs[y].mean() > probs[~y].mean() + 0.2
    assert {"steps_micro", "mistakes_micro", "per_code"} <= set(metrics["test"]["real"])
    # turns pre-selected by a model's scores are measured with the rest and apart from real traffic's mix
    test = splits["test"]
    marked = [{**r, "selection": "model_score:mistakes"} if i % 2 else r for i, r in enumerate(test)]
    parts = measure(model, marked)
    assert parts["real"]["n"] == len(test) and parts["real_unselected"]["n"] == (len(test) + 1) // 2
    assert "written" not in parts
    out = model.detect(["謝謝您的耐心等候", "系統顯示您已經簽收了"], [None, "我根本沒收到"])
    assert all(isinstance(t, AgentTurn) for t in out)
    assert "thank" in out[0].steps and set(out[0].scores) == set(CODES)
    model.save(tmp_path / "agent", metrics=metrics)
    assert {p.name for p in (tmp_path / "agent").iterdir()} == {
        "agent_heads.safetensors", "agent_model.json", "agent_ngrams.json", "metrics.json",
    }  # fmt: skip
    assert model.ngram is not None and model.stack is not None and model.stack.shape == (len(CODES), 5)
    again = AgentTurnModel.load(tmp_path / "agent", encoder=encoder)
    p2 = again.probs([r["text"] for r in splits["train"]], [r["context"] for r in splits["train"]])
    assert np.allclose(probs, p2, atol=1e-6) and again.thresholds == model.thresholds


def test_thresholds_on_train_out_of_fold_or_dev(encoder: E5Encoder, tmp_path: Path) -> None:
    """The default fits thresholds on the train turns' out-of-fold probabilities: each from parts not trained on
    that turn, so they are the scores a new turn gets; ``thresholds_on="dev"`` fits them on dev as before."""
    train, dev = _rows(), _rows(split="dev")
    base = {"hidden": 16, "epochs": 30, "lr": 1e-2, "batch_size": 4, "dropout": 0.0, "folds": 2}
    oof_model, _ = train_and_evaluate(encoder, {"train": train, "dev": []}, HeadSettings(**base))
    assert oof_model.oof_probs is not None and oof_model.oof_probs.shape == (len(train), len(CODES))
    # the fitted thresholds are exactly the best-F1 ones on those out-of-fold scores
    assert oof_model.thresholds == fit_thresholds(oof_model.oof_probs, label_matrix(train), CODES)
    # out of fold is not in sample: the final model scores its own training turns differently
    in_sample = oof_model.probs([r["text"] for r in train], [r["context"] for r in train])
    assert not np.allclose(in_sample, oof_model.oof_probs, atol=1e-3)
    dev_model, _ = train_and_evaluate(encoder, {"train": train, "dev": dev}, HeadSettings(**base, thresholds_on="dev"))
    p_dev = dev_model.probs([r["text"] for r in dev], [r["context"] for r in dev])
    assert dev_model.thresholds == fit_thresholds(p_dev, label_matrix(dev), CODES)
    # saved and loaded with the setting; a config saved before the setting existed reads as dev
    oof_model.save(tmp_path / "m")
    assert AgentTurnModel.load(tmp_path / "m", encoder=encoder).settings.thresholds_on == "train_oof"
    cfg_path = tmp_path / "m" / "agent_model.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    del cfg["settings"]["thresholds_on"]
    cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
    assert AgentTurnModel.load(tmp_path / "m", encoder=encoder).settings.thresholds_on == "dev"
    with pytest.raises(ValueError, match="thresholds_on"):
        HeadSettings(thresholds_on="test")


def test_interrogated_is_always_also_ask_details(encoder: E5Encoder) -> None:
    model = AgentTurnModel(
        encoder=encoder, settings=HeadSettings(hidden=8, epochs=1, ngram=False, customer_anger=False)
    ).fit(_rows())
    model.thresholds = {c: (0.0 if c == "interrogated" else 1.01) for c in CODES}
    (turn,) = model.detect(["帳號？身分證？講清楚"])
    assert turn.mistakes == ["interrogated"] and turn.steps == ["ask_details"]


def test_ngram_model_is_the_fitted_vectoriser_in_plain_arrays() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = [t for t, *_ in TURNS]
    y = label_matrix(_rows())
    ng = NgramModel.fit(texts, y, CODES)
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), min_df=2, sublinear_tf=True)
    vec.fit([NgramModel.view(t) for t in texts])
    new = ["謝謝您，抱歉", "系統顯示沒問題"]
    ours = ng.transform(new).toarray()
    theirs = vec.transform([NgramModel.view(t) for t in new]).toarray()
    order = [vec.vocabulary_[g] for g in ng.vocabulary]
    assert np.allclose(ours, theirs[:, order], atol=1e-6)
    p = ng.probs(texts)
    assert p.shape == (len(texts), len(CODES))
    assert p[0, CODES.index("thank")] > p[0, CODES.index("argued")]
    assert np.allclose(p[:, CODES.index("promise_callback")], 1 / (1 + np.exp(10)))  # never seen: never predicted


def test_char_ngrams_are_the_vectorisers_without_scikit_learn() -> None:
    """The n-grams a loaded model reads turns with: scikit-learn's char_wb analyzer, reimplemented (no import)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    from service.routing.agent_model import char_wb_ngrams

    analyze = TfidfVectorizer(analyzer="char_wb", ngram_range=NgramModel.NGRAMS).build_analyzer()
    texts = [t for t, *_ in TURNS] + [
        "",
        " ",
        "a",
        "Hi  THERE\tyou\n\n",
        "謝謝 您 。 OK!",
        "  前後空白  ",
        "x y",
        "ÀÉ Straße",
        "好\u3000的",
    ]
    for t in texts:
        assert char_wb_ngrams(NgramModel.view(t), NgramModel.NGRAMS) == analyze(NgramModel.view(t)), t


def test_stack_combines_logits_per_code() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((200, 2)) < 0.3).astype(float)
    good = np.clip(y * 0.8 + rng.random((200, 2)) * 0.2, 0.01, 0.99)
    noise = rng.random((200, 2))
    w = fit_stack([good, noise], y)
    assert w.shape == (2, 3) and (w[:, 0] > 5 * np.abs(w[:, 1])).all()  # the informative part carries it
    p = apply_stack([good, noise], w)
    assert ((p > 0.5) == (y > 0.5)).mean() > 0.95


def test_fit_thresholds_best_f1_per_code() -> None:
    codes = ("a", "b", "c")
    probs = np.array([[0.9, 0.3, 0.1], [0.7, 0.35, 0.2], [0.2, 0.12, 0.3], [0.1, 0.1, 0.4]])
    y = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0]])
    t = fit_thresholds(probs, y, codes)
    assert 0.2 < t["a"] <= 0.7  # separates 0.7/0.9 from 0.1/0.2; ties go to the one nearest 0.5
    assert t["a"] == 0.5
    assert t["b"] == 0.3  # perfect from 0.15 to 0.30: the one nearest 0.5
    assert t["c"] == 0.5  # no positive example: the default


def test_evaluate_codes_micro_and_per_code() -> None:
    codes = ("thank", "apologize", "argued")
    y = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 1]], dtype=bool)
    p = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 1]], dtype=bool)
    m = evaluate_codes(y, p, codes)
    assert m["per_code"]["thank"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
    assert m["per_code"]["apologize"]["precision"] == 0.0 and m["per_code"]["apologize"]["support"] == 1
    assert m["steps_micro"]["f1"] == round(2 * 2 / (3 + 3), 4)
    assert m["mistakes_micro"] == {"precision": 1.0, "recall": 0.5, "f1": round(2 / 3, 4), "support": 2}
    assert m["exact_match"] == 0.0


def test_label_matrix_and_holdout() -> None:
    y = label_matrix(_rows()[:4])
    assert y.shape == (4, len(CODES)) and y[3, CODES.index("argued")] == 1
    assert stc3_holdout({"source": "stc3", "id": "3830401296796825-t1"})
    assert not stc3_holdout({"source": "stc3", "id": "3830401296796826-t1"})
    assert not stc3_holdout({"source": "tw_hospital_reviews", "id": "15:reply"})


def test_fallback_to_tfidf_without_heads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.routing import agent_steps

    sentinel = object()
    monkeypatch.setattr(agent_steps.AgentStepDetector, "from_data", classmethod(lambda cls, *a, **k: sentinel))
    assert load_agent_detector(tmp_path / "missing") is sentinel
    with pytest.raises(FileNotFoundError):
        load_agent_detector(tmp_path / "missing", fallback=False)


def test_environment_chooses_the_detector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from service.routing import agent_steps

    sentinel = object()
    monkeypatch.setattr(agent_steps.AgentStepDetector, "from_data", classmethod(lambda cls, *a, **k: sentinel))
    monkeypatch.setenv("CALMFIRST_AGENT_MODEL", "tfidf")
    assert load_agent_detector() is sentinel
    monkeypatch.setenv("CALMFIRST_AGENT_MODEL", str(tmp_path / "nowhere"))
    with caplog.at_level("WARNING"):
        assert load_agent_detector() is sentinel  # a folder without a model: the fallback, with a warning
    assert any(r.levelname == "WARNING" and "nowhere" in r.getMessage() for r in caplog.records)


def test_shipped_agent_model_files() -> None:
    import json

    from service.routing.agent_model import DEFAULT_MODEL_DIR

    cfg = json.loads((DEFAULT_MODEL_DIR / "agent_model.json").read_text(encoding="utf-8"))
    assert cfg["codes"] == list(CODES) and set(cfg["thresholds"]) == set(CODES)
    assert len(cfg["stack"]) == len(CODES)
    metrics = json.loads((DEFAULT_MODEL_DIR / "metrics.json").read_text(encoding="utf-8"))
    assert {"steps_micro", "mistakes_micro", "per_code"} <= set(metrics["test"]["real"])
    size = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir())
    assert size < 8_000_000  # small enough to commit


def test_solution_while_furious_decided_as_a_conversation_decides_it() -> None:
    """The service-path measure: the model's own score for the code is replaced by the playbook's rule on the
    predicted steps and the customer's level (solution content at level 3 without an apology or acknowledgement)."""
    from service.routing.playbook import DEFAULT_PLAYBOOK, Playbook

    class Fixed:
        codes = CODES

        def predict_codes(self, probs: np.ndarray) -> np.ndarray:
            return probs >= 0.5

    def turn(*codes: str) -> list[float]:
        return [1.0 if c in codes else 0.0 for c in CODES]

    probs = np.array(
        [
            turn("answer_question", "solution_while_furious"),  # level 2: the model's own call is overruled
            turn("answer_question"),  # level 3, no apology: the rule fires though the model did not
            turn("answer_question", "apologize"),  # level 3 with an apology: blocked
            turn("ask_details"),  # level 3, a request is not solution content
            turn("commit_action"),  # no customer turn before it
        ]
    )
    rules = Playbook.load(DEFAULT_PLAYBOOK).conversation
    pred = with_conversation_rule(Fixed(), probs, [2, 3, 3, 3, None], rules)
    j = CODES.index("solution_while_furious")
    assert pred[:, j].tolist() == [False, True, False, False, False]
    assert (np.delete(pred, j, axis=1) == np.delete(probs >= 0.5, j, axis=1)).all()  # every other code as predicted


def test_customer_anger_enters_the_stack_and_is_saved(encoder: E5Encoder, tmp_path: Path) -> None:
    """With ``customer_anger`` (the default) the stack reads the customer's anger after and before each turn: two
    more parts, named in the saved config; unknown anger is 0.5 (logit 0, no evidence). A model saved before the
    setting existed (a stack of two parts) reads turns as before, whatever anger it is given."""
    train = _rows()
    y = label_matrix(train)
    mistaken = y[:, [CODES.index(c) for c in ("argued", "blamed_customer", "last_word")]].any(axis=1)
    # the customer is angrier around the turns with a mistake: the stack must learn a positive weight for it
    anger = [CustomerAnger(before=0.9 if m else 0.1, after=0.95 if m else 0.05) for m in mistaken]
    settings = HeadSettings(hidden=16, epochs=30, lr=1e-2, batch_size=4, dropout=0.0, folds=2)
    model, _ = train_and_evaluate(encoder, {"train": train, "dev": []}, settings, anger={"train": anger})
    assert model.reads_anger and model.stack is not None and model.stack.shape == (len(CODES), 5)
    argued = CODES.index("argued")
    assert model.stack[argued, 2] > 0 or model.stack[argued, 3] > 0
    texts, ctx = [r["text"] for r in train], [r["context"] for r in train]
    calm = model.probs(texts, ctx, anger=[CustomerAnger(0.05, 0.05)] * len(texts))
    angry = model.probs(texts, ctx, anger=[CustomerAnger(0.95, 0.95)] * len(texts))
    unknown = model.probs(texts, ctx)
    assert (angry[:, argued] > calm[:, argued]).all()
    assert np.allclose(unknown, model.probs(texts, ctx, anger=[CustomerAnger(0.5, 0.5)] * len(texts)))
    with pytest.raises(ValueError, match="anger"):
        model.probs(texts, ctx, anger=[CustomerAnger()])
    model.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "agent_model.json").read_text(encoding="utf-8"))
    assert cfg["stack_parts"][2:] == ["customer anger after", "customer anger before"]
    assert cfg["settings"]["customer_anger"] is True
    again = AgentTurnModel.load(tmp_path / "m", encoder=encoder)
    assert np.allclose(again.probs(texts, ctx, anger=[CustomerAnger(0.95, 0.95)] * len(texts)), angry, atol=1e-6)
    # the format of before: two parts, no setting
    cfg["stack"] = [row[:2] + row[-1:] for row in cfg["stack"]]
    cfg["stack_parts"] = cfg["stack_parts"][:2]
    del cfg["settings"]["customer_anger"]
    (tmp_path / "m" / "agent_model.json").write_text(json.dumps(cfg), encoding="utf-8")
    old = AgentTurnModel.load(tmp_path / "m", encoder=encoder)
    assert not old.reads_anger and old.settings.customer_anger is False
    assert np.allclose(old.probs(texts, ctx, anger=[CustomerAnger(0.95, 0.95)] * len(texts)), old.probs(texts, ctx))
    with pytest.raises(ValueError, match="customer_anger"):
        HeadSettings(ngram=False)


class _Scorer:
    """A customer model stand-in that records what it is asked to score (the inputs are what is tested)."""

    def __init__(self, context_input: bool) -> None:
        from types import SimpleNamespace

        self.config = SimpleNamespace(context_input=context_input)
        self.seen: list[str] = []

    def predict(self, texts):  # type: ignore[no-untyped-def]
        from types import SimpleNamespace

        self.seen += list(texts)
        return [SimpleNamespace(anger_score=len(t) / 100) for t in texts]


def test_customer_anger_reads_the_turns_around_as_a_conversation_does() -> None:
    from model.context import with_context

    rows = [
        # an STC-3 turn: the customer turns before and after, each with its own context
        {"text": "a", "context": "太慢了", "customer_before": ["太慢了", [["agent", "您好"]]],
         "customer_after": ["還是不行", [["customer", "太慢了"], ["agent", "a"]]]},
        {"text": "b", "context": "評論很長"},  # a reply to a review: the review before, nothing after
        {"text": "c", "context": ""},  # a written turn with nothing before it
    ]  # fmt: skip
    scorer = _Scorer(context_input=True)
    out = customer_anger(rows, scorer)
    before0 = with_context("太慢了", [("agent", "您好")])
    after0 = with_context("還是不行", [("customer", "太慢了"), ("agent", "a")])
    assert out[0] == CustomerAnger(before=len(before0) / 100, after=len(after0) / 100)
    assert out[1] == CustomerAnger(before=len("評論很長") / 100, after=None)
    assert out[2] == CustomerAnger()
    assert sorted(scorer.seen) == sorted({before0, after0, "評論很長"})
    alone = _Scorer(context_input=False)
    assert customer_anger(rows, alone)[0] == CustomerAnger(before=0.03, after=0.04)  # the turns alone


def test_kept_parts_make_a_re_read_cost_only_the_stack(encoder: E5Encoder) -> None:
    """With ``keep_parts`` (the live server's), a turn read again with new anger around it is not embedded again,
    and its scores are those of a turn read alone without the cache."""
    settings = HeadSettings(hidden=16, epochs=10, lr=1e-2, batch_size=4, dropout=0.0, folds=2)
    model, _ = train_and_evaluate(encoder, {"train": _rows(), "dev": []}, settings)
    text, ctx = "系統顯示您已經簽收了", "我根本沒收到"
    alone = [model.probs([text], [ctx], anger=[a]) for a in (CustomerAnger(0.2), CustomerAnger(0.2, 0.9))]

    class _Counting:
        def __init__(self, inner: E5Encoder) -> None:
            self.inner, self.dim, self.name, self.texts = inner, inner.dim, inner.name, 0

        def encode(self, texts):  # type: ignore[no-untyped-def]
            self.texts += len(texts)
            return self.inner.encode(texts)

    counting = _Counting(encoder)
    model.encoder = counting  # type: ignore[assignment]
    model.keep_parts(8)
    first = model.probs([text], [ctx], anger=[CustomerAnger(0.2)])
    read = counting.texts
    again = model.probs([text], [ctx], anger=[CustomerAnger(0.2, 0.9)])
    assert read > 0 and counting.texts == read  # the second read embedded nothing
    assert np.allclose(first, alone[0], atol=1e-6) and np.allclose(again, alone[1], atol=1e-6)
    model.keep_parts(0)
    assert model.parts_cache is None
