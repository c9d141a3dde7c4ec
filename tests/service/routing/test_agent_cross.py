"""The agent-turn cross-encoder on the tiny backbone: settings validated, training lowers the loss on what it
learns, save/load gives the same scores, batches keep every turn once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.routing.agent_cross import CrossEncoder, CrossSettings, length_grouped_batches
from service.routing.agent_model import CODES
from tests.conftest import tiny_agent_rows


@pytest.mark.parametrize(
    ("field", "value"), [("lora_r", 0), ("epochs", 0), ("lr", 0.0), ("lora_dropout", 1.0), ("max_length", -1)]
)
def test_settings_name_the_bad_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        CrossSettings(**{field: value})  # type: ignore[arg-type]


def test_settings_round_trip() -> None:
    s = CrossSettings(lora_r=4, epochs=3, target_modules=("query",))
    assert CrossSettings.from_dict(s.to_dict()) == s


def test_length_grouped_batches_cover_every_index_once() -> None:
    lengths = list(np.random.default_rng(1).integers(1, 100, 203))
    batches = length_grouped_batches(lengths, 8, np.random.default_rng(0))
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(203))
    assert all(1 <= len(b) <= 8 for b in batches)


def test_trains_saves_and_loads(tiny_backbone_dir: Path, tmp_path: Path) -> None:
    rows = tiny_agent_rows()
    settings = CrossSettings(
        backbone=str(tiny_backbone_dir), lora_r=4, lora_alpha=8, lora_dropout=0.0, epochs=40, batch_size=5,
        lr=5e-3, head_lr=5e-2, max_length=48, threads=1,
    )  # fmt: skip
    model = CrossEncoder(settings)
    texts = [r["text"] for r in rows]
    contexts = [r["context"] for r in rows]
    y = np.array([[c in r["steps"] + r["mistakes"] for c in CODES] for r in rows])
    before = model.probs(texts, contexts)
    stats = model.fit(rows)
    after = model.probs(texts, contexts)
    assert stats["steps"] == 40 * 2

    # the codes it was shown: positives up, negatives down (mean log-likelihood of the labels)
    def ll(p: np.ndarray) -> float:
        p = np.clip(p, 1e-6, 1 - 1e-6)
        return float(np.mean(np.where(y, np.log(p), np.log(1 - p))))

    assert ll(after) > ll(before) + 0.1
    j = CODES.index("argued")
    argued = [i for i, r in enumerate(rows) if "argued" in r["mistakes"]]
    others = [i for i in range(len(rows)) if i not in argued]
    assert after[argued, j].min() > after[others, j].max()
    # the context is read: the same agent turn after another customer turn scores differently
    swapped = model.probs(texts, list(reversed(contexts)))
    assert not np.allclose(after, swapped)

    path = model.save(tmp_path / "cross", info={"test": True})
    loaded = CrossEncoder.load(path, threads=1)
    assert loaded.settings == settings.__class__.from_dict({**settings.to_dict(), "threads": 1})
    np.testing.assert_allclose(loaded.probs(texts, contexts), after, atol=1e-5)


def test_cross_fitted_f1_on_hand_checked_scores() -> None:
    from service.routing.agent_cross import cross_fitted_f1

    codes = ("thank", "argued", "last_word")
    y = np.array([[1, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 1]] * 10, dtype=np.float32)
    real = np.ones(len(y), dtype=bool)
    # scores that separate every code perfectly: every halving finds a threshold that gets all mistakes right
    mean, sd = cross_fitted_f1(np.where(y > 0.5, 0.9, 0.1), y, codes, real, halvings=5)
    assert mean == 1.0 and sd == 0.0
    # the step's column never counts: wrong step scores leave the mistakes' F1 alone
    wrong_steps = np.where(y > 0.5, 0.9, 0.1)
    wrong_steps[:, 0] = 1 - wrong_steps[:, 0]
    assert cross_fitted_f1(wrong_steps, y, codes, real, halvings=5)[0] == 1.0
    # scores that say nothing about the mistakes: far below
    flat = np.full_like(y, 0.5)
    assert cross_fitted_f1(flat, y, codes, real, halvings=5)[0] < 0.75
    # only the rows of ``score`` are measured: with none, every figure is 0
    assert cross_fitted_f1(np.where(y > 0.5, 0.9, 0.1), y, codes, ~real, halvings=2) == (0.0, 0.0)
