"""The contrast set: minimal pairs that differ only in what decides one label, scored on any model.

Why: a model can pass a test split by learning templates instead of the task (the v1 model read
「再不…就…」 as a threat and as fury, and missed 「我要上網留言讓大家知道」). Each pair in
``data/contrast/contrast_v1.jsonl`` changes only the part that decides one label (``decides``):

- ``kind: contrast``: the two members' gold labels differ on ``decides`` (a declared threat vs the
  same complaint without it; a calm 請問 vs an accusing 請問; plan terms vs a wrong charge);
- ``kind: invariance``: the change must not move ``decides`` (emoji, !!!, a typo, the form of a threat).

A member is right when the model's label on ``decides`` equals the gold one; a pair is right when
both members are. The texts are the project's own (``calmfirst_written``), labelled by hand under
guideline v1.2, and never used for training.

``contrast_metrics(model)`` is the one call for a trainer or an evaluation: a JSON-ready dict.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from data.schema import WRITTEN_SOURCE
from data.vocab import ComplaintType

#: The contrast set shipped with the project.
CONTRAST_PATH = Path(__file__).resolve().parent.parent / "data" / "contrast" / "contrast_v1.jsonl"

Decides = Literal["anger_level", "threat", "complaint_type"]
#: The labels a pair can be about, in report order.
DECIDES: tuple[str, ...] = ("anger_level", "threat", "complaint_type")
KINDS: tuple[str, ...] = ("contrast", "invariance")


class ContrastItem(BaseModel):
    """One message of a pair, with its full gold labels (schema v1.2) and the label the pair is about."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^contrast-\d{3}[ab]$")
    pair: str = Field(pattern=r"^contrast-\d{3}$")
    text: str = Field(min_length=1)
    script: Literal["hans", "hant"]
    region: Literal["cn", "tw", "hk"]
    source: Literal["calmfirst_written"] = WRITTEN_SOURCE
    anger_level: int = Field(ge=0, le=3, strict=True)
    complaint_type: ComplaintType
    threat: bool = Field(strict=True)
    threat_kind: Literal["legal", "regulator", "media", "leaving", "chargeback"] | None = None
    decides: Decides
    kind: Literal["contrast", "invariance"]
    why: str = Field(min_length=1)
    #: a real judgement call under the guideline (section 3, step 5)
    hard_case: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> ContrastItem:
        if self.id[:-1] != self.pair:
            raise ValueError(f"id {self.id!r} does not belong to pair {self.pair!r}")
        if self.threat != (self.threat_kind is not None):
            raise ValueError("threat_kind is set exactly when threat is true")
        return self

    def gold(self) -> Any:
        """The gold value of the label this pair is about."""
        return getattr(self, self.decides)


@dataclass(frozen=True)
class ContrastPair:
    pair: str
    a: ContrastItem
    b: ContrastItem

    @property
    def decides(self) -> str:
        return self.a.decides

    @property
    def kind(self) -> str:
        return self.a.kind


class ContrastError(ValueError):
    """The contrast file breaks its format; the message names the line or the pair."""


def load_contrast(path: str | Path = CONTRAST_PATH) -> list[ContrastItem]:
    """Every record of a contrast file, checked: ids unique, each pair two members (a, b) that agree
    on ``decides``, ``kind``, script and region."""
    items: list[ContrastItem] = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(ContrastItem.model_validate(json.loads(line)))
        except (ValidationError, json.JSONDecodeError) as e:
            raise ContrastError(f"{path}:{n}: {e}") from e
    ids = [i.id for i in items]
    if len(set(ids)) != len(ids):
        raise ContrastError(f"{path}: duplicate ids {sorted({i for i in ids if ids.count(i) > 1})}")
    pairs(items)  # raises on a broken pair
    return items


def pairs(items: Sequence[ContrastItem]) -> list[ContrastPair]:
    """Items grouped into their pairs, in file order."""
    by_pair: dict[str, list[ContrastItem]] = {}
    for it in items:
        by_pair.setdefault(it.pair, []).append(it)
    out = []
    for pid, members in by_pair.items():
        if sorted(m.id[-1] for m in members) != ["a", "b"]:
            raise ContrastError(f"pair {pid}: needs exactly members a and b, got {[m.id for m in members]}")
        a, b = sorted(members, key=lambda m: m.id)
        for what in ("decides", "kind", "script", "region"):
            if getattr(a, what) != getattr(b, what):
                raise ContrastError(f"pair {pid}: members differ on {what}")
        out.append(ContrastPair(pid, a, b))
    return out


class Predicts(Protocol):
    """Any model with ``predict(texts)`` returning objects with ``anger_level``, ``threat`` and
    ``complaint_type`` (``model.scores.Prediction``): ``CalmFirstModel``, ``OnnxCalmFirstModel``."""

    def predict(self, texts: Iterable[str], *, batch_size: int = 32) -> Any: ...


@dataclass
class ItemResult:
    id: str
    pair: str
    decides: str
    kind: str
    gold: Any
    pred: Any
    ok: bool
    text: str


@dataclass
class ContrastResult:
    """Accuracy on the deciding label, per item and per pair, overall and per ``decides``/``kind``."""

    n_items: int
    n_pairs: int
    item_accuracy: float
    pair_accuracy: float
    failed_pairs: list[str]
    groups: dict[str, dict[str, Any]]
    items: list[ItemResult] = field(repr=False)
    set_name: str = CONTRAST_PATH.name

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the figures, the failed pair ids and every item's gold, prediction and text."""
        return {
            "set": self.set_name,
            "n_items": self.n_items,
            "n_pairs": self.n_pairs,
            "item_accuracy": self.item_accuracy,
            "pair_accuracy": self.pair_accuracy,
            "failed_pairs": list(self.failed_pairs),
            "groups": self.groups,
            "items": [
                {"id": r.id, "decides": r.decides, "gold": r.gold, "pred": r.pred, "ok": r.ok, "text": r.text}
                for r in self.items
            ],
        }

    def markdown(self) -> str:
        return "\n".join(contrast_markdown(self.to_dict()))


def _label(pred: Any, decides: str) -> Any:
    value = getattr(pred, decides) if not isinstance(pred, dict) else pred[decides]
    if decides == "anger_level":
        return int(value)
    if decides == "threat":
        return bool(value)
    return str(value)


def _summary(rows: Sequence[ItemResult]) -> dict[str, Any]:
    by_pair: dict[str, list[bool]] = {}
    for r in rows:
        by_pair.setdefault(r.pair, []).append(r.ok)
    return {
        "items": len(rows),
        "item_accuracy": round(sum(r.ok for r in rows) / len(rows), 4) if rows else float("nan"),
        "pairs": len(by_pair),
        "pair_accuracy": round(sum(all(v) for v in by_pair.values()) / len(by_pair), 4) if by_pair else float("nan"),
    }


def score_predictions(
    items: Sequence[ContrastItem], preds: Sequence[Any], *, set_name: str = CONTRAST_PATH.name
) -> ContrastResult:
    """The contrast figures from one prediction per item (in item order)."""
    if len(items) != len(preds):
        raise ValueError(f"{len(items)} contrast items but {len(preds)} predictions")
    rows = []
    for it, p in zip(items, preds, strict=True):
        pred = _label(p, it.decides)
        gold = it.gold()
        gold = str(gold) if it.decides == "complaint_type" else gold
        rows.append(ItemResult(it.id, it.pair, it.decides, it.kind, gold, pred, pred == gold, it.text))
    overall = _summary(rows)
    groups: dict[str, dict[str, Any]] = {}
    for decides in DECIDES:
        for kind in KINDS:
            sub = [r for r in rows if r.decides == decides and r.kind == kind]
            if sub:
                groups[f"{decides} {kind}"] = _summary(sub)
    ok_pair: dict[str, bool] = {}
    for r in rows:
        ok_pair[r.pair] = ok_pair.get(r.pair, True) and r.ok
    return ContrastResult(
        n_items=overall["items"],
        n_pairs=overall["pairs"],
        item_accuracy=overall["item_accuracy"],
        pair_accuracy=overall["pair_accuracy"],
        failed_pairs=[pid for pid, ok in ok_pair.items() if not ok],
        groups=groups,
        items=rows,
        set_name=set_name,
    )


def score_contrast(
    model: Predicts,
    items: Sequence[ContrastItem] | None = None,
    *,
    path: str | Path = CONTRAST_PATH,
    batch_size: int = 32,
) -> ContrastResult:
    """Score a contrast set (``items``, else the file at ``path``) with ``model.predict``."""
    items = load_contrast(path) if items is None else items
    preds = model.predict([it.text for it in items], batch_size=batch_size)
    return score_predictions(items, list(preds), set_name=Path(path).name)


def contrast_metrics(model: Predicts, *, path: str | Path = CONTRAST_PATH, batch_size: int = 32) -> dict[str, Any]:
    """The contrast figures of ``model`` as a JSON-ready dict: what ``calmfirst evaluate`` puts under
    ``contrast`` in its metrics, and what a trainer calls on each trained model."""
    return score_contrast(model, path=path, batch_size=batch_size).to_dict()


def contrast_markdown(d: dict[str, Any]) -> list[str]:
    """Report lines from ``contrast_metrics``'s dict: the figures per label and kind, then every failed
    pair with its gold and predicted labels (the texts are the project's own, so they are shown)."""
    lines = [
        "## Contrast pairs",
        "",
        f"`{d['set']}`: {d['n_pairs']} minimal pairs ({d['n_items']} messages). A member is right when its label on "
        "the deciding field is; a pair when both are. *contrast*: the change flips the label; "
        "*invariance*: it must not (emoji, !!!, typos, the form of a threat).",
        "",
        "| deciding label | kind | pairs | pair acc. | items | item acc. |",
        "|---|---|---|---|---|---|",
    ]
    for name, g in d["groups"].items():
        decides, kind = name.split(" ")
        acc = f"{g['pairs']} | {g['pair_accuracy']:.3f} | {g['items']} | {g['item_accuracy']:.3f}"
        lines.append(f"| {decides} | {kind} | {acc} |")
    lines.append(
        f"| **all** | | {d['n_pairs']} | **{d['pair_accuracy']:.3f}** | {d['n_items']} | **{d['item_accuracy']:.3f}** |"
    )
    if d["failed_pairs"]:
        by_id = {r["id"]: r for r in d["items"]}
        lines += [
            "",
            f"Failed pairs ({len(d['failed_pairs'])}):",
            "",
            "| pair | label | gold a / b | predicted a / b | a | b |",
            "|---|---|---|---|---|---|",
        ]
        for pid in d["failed_pairs"]:
            a, b = by_id[f"{pid}a"], by_id[f"{pid}b"]

            def cell(r: dict[str, Any]) -> str:
                mark = "" if r["ok"] else " ✗"
                return f"{r.get('text', '')}{mark}".replace("|", "｜")

            labels = f"{a['gold']} / {b['gold']} | {a['pred']} / {b['pred']}"
            lines.append(f"| {pid} | {a['decides']} | {labels} | {cell(a)} | {cell(b)} |")
    return lines
