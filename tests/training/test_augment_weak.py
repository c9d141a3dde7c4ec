"""Training augmentation (typing noise, OpenCC both ways) and the weak-source loss."""

from __future__ import annotations

import random

import torch

from training.augment import NOISES, add_emoji, augment, noisy, repeat_punctuation, typo, whitespace


def test_each_noise_keeps_the_words_and_changes_only_the_surface() -> None:
    rng = random.Random(0)
    text = "等了三天還沒收到,麻煩幫我查一下!"
    assert repeat_punctuation(text, rng).startswith("等了三天還沒收到,")
    assert "!!" in repeat_punctuation("退錢!", random.Random(1))
    assert repeat_punctuation("退錢", random.Random(2)) != "退錢"  # a run is added when there is none
    e = add_emoji(text, random.Random(3))
    assert e.replace(text, "") and text in e
    assert whitespace("我 要 退款", random.Random(0)).replace(" ", "").replace("\n", "") == "我要退款"
    t = typo(text, random.Random(5))
    assert abs(len(t) - len(text)) <= 1 and t != text
    assert typo("好的", rng) == "好的"  # short turns are never mangled
    assert len(NOISES) == 4
    for seed in range(50):
        out = noisy(text, random.Random(seed))
        assert out and len(out) <= len(text) + 12


def test_augment_converts_both_ways_and_only_when_asked() -> None:
    rng = random.Random(0)
    kw = dict(opencc_prob=1.0, opencc_configs=["s2twp"], t2s_prob=1.0, noise_prob=0.0)
    assert augment("为什么还没发货", "hans", rng, **kw) == "為什麼還沒發貨"
    assert augment("為什麼還沒發貨", "hant", rng, **kw) == "为什么还没发货"
    off = dict(opencc_prob=0.0, opencc_configs=["s2twp"], t2s_prob=0.0, noise_prob=0.0)
    assert augment("為什麼還沒發貨", "hant", rng, **off) == "為什麼還沒發貨"


def test_weak_bound_loss_uses_one_threshold_and_its_weight(tiny_model) -> None:  # type: ignore[no-untyped-def]
    from training.config import TrainingArguments
    from training.data import Example
    from training.trainer import CalmFirstTrainer, Collator

    args = TrainingArguments(epochs=1)
    gold = Example("你們太扯了", 2, "billing", ["billing"], False, "hant", "train")
    weak = Example("气死了", None, None, [], None, "hans", "train", weak=True, weight=0.3, anger_bound=(1, 1))
    trainer = CalmFirstTrainer(tiny_model, args, [gold, weak])
    batch = Collator(tiny_model, args, train=False, seed=0)([gold, weak])
    assert batch["weak_k"].tolist() == [-1, 1] and batch["weak_y"].tolist() == [0.0, 1.0]
    assert batch["anger"].tolist() == [2, -1]
    logits = torch.zeros(2, 3)
    out = {
        "anger_logits": logits,
        "type_logits": torch.zeros(2, 10),
        "multi_logits": torch.zeros(2, 10),
        "threat_logits": torch.zeros(2),
    }
    base = trainer.loss(out, batch).item()
    # raising only the weak row's threshold-1 logit (towards its target "level > 1") lowers the loss
    logits2 = logits.clone()
    logits2[1, 1] = 3.0
    assert trainer.loss({**out, "anger_logits": logits2}, batch).item() < base
    # a weak row's weight scales its loss: weight 0.3 moves the loss less than weight 1.0 would
    weak_full = Example("气死了", None, None, [], None, "hans", "train", weak=True, weight=1.0, anger_bound=(1, 1))
    batch_full = Collator(tiny_model, args, train=False, seed=0)([gold, weak_full])
    d_small = base - trainer.loss({**out, "anger_logits": logits2}, batch).item()
    full = trainer.loss(out, batch_full).item()
    d_full = full - trainer.loss({**out, "anger_logits": logits2}, batch_full).item()
    assert 0 < d_small < d_full


def test_weak_review_stars_give_one_bound_each_and_skip_annotated_texts(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from pathlib import Path

    import data.weak as weak

    shared = Path(__file__).resolve().parents[1] / "fixtures" / "shared" / "data"
    monkeypatch.setattr(weak, "_annotated", lambda root: ({("tw_hospital_reviews", "hosp:0")}, set()))
    monkeypatch.setattr(weak, "STAR_SOURCES", ("tw_hospital_reviews", "hk_openrice_senti"))
    rows = {(r.id, r.k, r.y) for r in weak.weak_rows("review_stars", shared_dir=shared)}
    # hosp:0 (1 star) is annotated: left out; 5 stars and smile: not above 1; cry: above 0; "ok": no signal
    assert rows == {("hosp:2", 1, 0), ("openrice:test:0", 0, 1), ("openrice:test:1", 1, 0)}


def test_context_follows_the_message_and_single_messages_are_unchanged() -> None:
    from model.context import CONTEXT_MARK, MAX_CONTEXT_CHARS, previous_turns, with_context

    assert with_context("还是不行", None) == "还是不行"
    turns = [("customer", "登录不了"), ("agent", "请清除缓存后重试"), ("customer", "还是不行")]
    ctx = previous_turns(turns, 2)
    assert ctx == [("customer", "登录不了"), ("agent", "请清除缓存后重试")]
    text = with_context("还是不行", ctx)
    assert text.startswith("还是不行" + CONTEXT_MARK) and "agent:请清除缓存后重试" in text
    assert previous_turns(turns, 0) == []
    long = with_context("好", [("agent", "长" * 500)])
    assert len(long) < 1 + len(CONTEXT_MARK) + MAX_CONTEXT_CHARS + 10  # context cut, message whole


def test_collator_feeds_context_at_evaluation_and_drops_it_sometimes_in_training(tiny_model) -> None:  # type: ignore[no-untyped-def]
    from training.config import TrainingArguments
    from training.data import Example
    from training.trainer import Collator, model_input

    ex = Example(
        "还是不行",
        1,
        "account_technical",
        ["account_technical"],
        False,
        "hans",
        "dev",
        context=[("agent", "请重启试试")],
    )
    assert "请重启试试" in model_input(ex) and model_input(ex, use_context=False) == "还是不行"
    args = TrainingArguments(epochs=1, augment={"opencc_prob": 0.0, "context_drop": 0.5})
    seen = []
    orig = tiny_model.tokenize
    tiny_model.tokenize = lambda texts: (seen.extend(texts), orig(texts))[1]  # type: ignore[method-assign]
    try:
        Collator(tiny_model, args, train=False, seed=0)([ex])
        assert "请重启试试" in seen[-1]
        train = Collator(tiny_model, args, train=True, seed=0)
        for _ in range(40):
            train([ex])
    finally:
        tiny_model.tokenize = orig  # type: ignore[method-assign]
    with_ctx = sum("请重启试试" in t for t in seen[1:])
    assert 5 < with_ctx < 35  # about half kept
