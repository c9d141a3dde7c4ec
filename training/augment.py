"""Training-time text augmentation: scripts both ways and how people really type.

Why: the written training messages were clean (one '!' at most, no typos, no emoji), and the
model learned that clean text is calm or that 「再不…就…」 is what a threat looks like. Real
customers type 「退錢!!!!」, 「等好耐 la」, 「XD」, emoji and typos. These transforms keep the label
by the guideline (repeated punctuation, emoji and spacing never change a level; a dropped or
doubled character keeps the meaning) and teach the model to look past the surface.
The tokenizer already folds full-width punctuation, so width alone needs nothing.

OpenCC goes both ways: Simplified texts become Traditional (s2twp / s2hk) and, with
``t2s_prob``, real Traditional texts become Simplified, so the Taiwan and Hong Kong reviews also
teach the Simplified model.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from data.script import convert

#: emoji that carry no anger by themselves (an angry face alone does not make a 2 either)
EMOJI = ("🙏", "😅", "🙂", "😂", "👍", "😭", "😡", "💢", "🙄", "😓", "🤔", "😤")
PUNCT_REPEAT = {"!": "!", "！": "！", "?": "?", "？": "？", "。": "。", "…": "…", "~": "~"}


def repeat_punctuation(text: str, rng: random.Random) -> str:
    """``!`` -> ``!!!``; adds a run at the end when the text has no punctuation."""
    spots = [i for i, c in enumerate(text) if c in PUNCT_REPEAT]
    if not spots:
        return text + rng.choice(("!!", "??", "…", "~~"))
    i = rng.choice(spots)
    return text[: i + 1] + text[i] * rng.randint(1, 3) + text[i + 1 :]


def add_emoji(text: str, rng: random.Random) -> str:
    e = rng.choice(EMOJI) * rng.randint(1, 2)
    return e + text if rng.random() < 0.3 else text + e


def whitespace(text: str, rng: random.Random) -> str:
    """Insert a space or newline at a random point, or drop the existing spaces."""
    if " " in text and rng.random() < 0.5:
        return text.replace(" ", "")
    i = rng.randint(0, len(text))
    return text[:i] + rng.choice((" ", "  ", "\n")) + text[i:]


def typo(text: str, rng: random.Random) -> str:
    """Drop, double or swap one character (never in texts of 4 characters or fewer)."""
    if len(text) <= 4:
        return text
    i = rng.randrange(len(text) - 1)
    op = rng.randrange(3)
    if op == 0:
        return text[:i] + text[i + 1 :]
    if op == 1:
        return text[: i + 1] + text[i] + text[i + 1 :]
    return text[:i] + text[i + 1] + text[i] + text[i + 2 :]


NOISES = (repeat_punctuation, add_emoji, whitespace, typo)


def noisy(text: str, rng: random.Random, *, max_ops: int = 2) -> str:
    """One or two label-preserving noise operations."""
    for _ in range(rng.randint(1, max_ops)):
        text = rng.choice(NOISES)(text, rng)
    return text


def augment(
    text: str,
    script: str,
    rng: random.Random,
    *,
    opencc_prob: float,
    opencc_configs: Sequence[str],
    t2s_prob: float,
    noise_prob: float,
) -> str:
    """The training view of one example (the label never changes)."""
    if script == "hans" and opencc_configs and rng.random() < opencc_prob:
        text = convert(text, rng.choice(opencc_configs))
    elif script == "hant" and rng.random() < t2s_prob:
        text = convert(text, "t2s")
    if rng.random() < noise_prob:
        text = noisy(text, rng)
    return text
