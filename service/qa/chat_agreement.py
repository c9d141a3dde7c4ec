"""How far a conversation's outputs agree with people: the same code run on the models' reads and on people's labels.

``POST /v1/conversations/analyze`` and ``calmfirst qa`` turn per-turn reads (each customer turn's anger, type and
threat; each agent turn's steps and mistakes) into the conversation's state: anger trend, flag, escalation,
situation and the next step (CONTRACT.md v1.1). This command measures that whole path on held-out STC-3 helpdesk
dialogues whose every turn the project has labelled: it runs the *same* ``ConversationAnalyzer`` twice, once on the
shipped models and once on an oracle that answers every turn with its label, and counts how often the two agree
per dialogue. The second run is what the contract's rules give from people's labels, so a disagreement is the
models' doing, never the rules'.

    python -m service.qa.chat_agreement                  # test dialogues, shipped models, writes chat_agreement.json
    python -m service.qa.chat_agreement --split dev --no-write

Only dialogues of the chosen split are read (the models never trained on them); the next step, situation and
steps are compared only where every agent turn is labelled too. Model outputs share ``service.qa.validate``'s
cache, so a re-run takes seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data.vocab import AngerLabel, ComplaintType, Role
from model.scores import Prediction
from service.results import ConversationResult
from service.routing.agent_steps import AgentTurn, CustomerAnger
from service.routing.conversation import Turn
from service.text import normalize_text

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "chat_agreement.json"


@dataclass
class LabelledDialogue:
    """A dialogue's non-empty turns in order, each with its label (None where the turn is not labelled)."""

    id: str
    split: str
    turns: list[Turn]
    labels: list[dict[str, Any] | None]

    @property
    def customers_labelled(self) -> bool:
        return all(lab is not None for t, lab in zip(self.turns, self.labels, strict=True) if t.role == Role.CUSTOMER)

    @property
    def all_labelled(self) -> bool:
        return all(lab is not None for lab in self.labels)

    @property
    def customer_turns(self) -> int:
        return sum(1 for t in self.turns if t.role == Role.CUSTOMER)


def labelled_dialogues(
    dialogues: Iterable[dict[str, Any]],
    customer_labels: dict[str, dict[str, Any]],
    agent_labels: dict[str, dict[str, Any]],
) -> list[LabelledDialogue]:
    """STC-3-shaped dialogues with the labels of their turns (ids ``<dialogue>-t<turn>``, as the label files
    have them); a dialogue's split is its labelled customer turns' (they share one). Dialogues without a labelled
    customer turn are left out."""
    from data.sources import stc3_turns

    out = []
    for dia in dialogues:
        turns: list[Turn] = []
        labels: list[dict[str, Any] | None] = []
        for i, (role, text) in enumerate(stc3_turns(dia)):
            if not text:
                continue
            key = f"{dia['id']}-t{i}"
            turns.append(Turn(role=Role.CUSTOMER if role == "customer" else Role.AGENT, text=text))
            labels.append((customer_labels if role == "customer" else agent_labels).get(key))
        splits = {lab["split"] for t, lab in zip(turns, labels, strict=True) if lab and t.role == Role.CUSTOMER}
        if len(splits) == 1:
            out.append(LabelledDialogue(str(dia["id"]), splits.pop(), turns, labels))
    return out


def gold_prediction(label: dict[str, Any], complaint_types: Sequence[str]) -> Prediction:
    """A customer turn's label as the prediction an oracle model would make (certain of it)."""
    level = int(label["anger_level"])
    probs = [1.0 if k == level else 0.0 for k in range(4)]
    primary = str(label["complaint_type"])
    types = [primary] + [t for t in label.get("types") or [] if t != primary and t != ComplaintType.NONE]
    if primary == ComplaintType.NONE:
        types = [primary]
    return Prediction(
        anger_probs=probs,
        anger_level=level,
        anger_label=list(AngerLabel)[level].value,
        anger_score=level / 3,
        calm_first_prob=float(level >= 2),
        complaint_type=primary,
        types=types,
        type_scores={t: float(t == primary) for t in complaint_types},
        threat_score=float(bool(label["threat"])),
        threat=bool(label["threat"]),
    )


class GoldModel:
    """A ``ScoringModel`` that answers each labelled customer turn with its label (looked up by its text)."""

    backend = "labels"

    def __init__(self, config: Any, dialogues: Sequence[LabelledDialogue]) -> None:
        import dataclasses

        self.config = dataclasses.replace(config, context_input=False)  # a turn is looked up by its own text
        self._by_text: dict[str, Prediction] = {}
        for d in dialogues:
            for t, lab in zip(d.turns, d.labels, strict=True):
                if t.role == Role.CUSTOMER and lab is not None:
                    self._by_text[normalize_text(t.text)] = gold_prediction(lab, config.complaint_types)

    def logits(self, texts: Sequence[str], *, batch_size: int = 32) -> dict[str, np.ndarray]:
        raise NotImplementedError("an oracle of labels has no logits")

    def predict(self, texts: Any, *, batch_size: int = 32) -> Any:
        if isinstance(texts, str):
            return self._by_text[texts]
        return [self._by_text[t] for t in texts]


class GoldDetector:
    """An agent-turn detector that answers each labelled agent turn with its steps and mistakes, and an unlabelled
    one with none (only measures that do not read agent turns are compared on a dialogue that has one)."""

    def __init__(self, dialogues: Sequence[LabelledDialogue]) -> None:
        self._by_text: dict[str, AgentTurn] = {}
        for d in dialogues:
            for t, lab in zip(d.turns, d.labels, strict=True):
                if t.role == Role.AGENT and lab is not None:
                    self._by_text[t.text] = AgentTurn(
                        steps=list(lab["steps"]), mistakes=list(lab["mistakes"]), scores={}
                    )

    def detect(
        self,
        texts: Sequence[str],
        contexts: Sequence[str | None] | None = None,
        anger: Sequence[CustomerAnger] | None = None,
    ) -> list[AgentTurn]:
        return [self._by_text.get(t) or AgentTurn(steps=[], mistakes=[], scores={}) for t in texts]


#: what is compared per dialogue, and whether it needs every agent turn labelled
MEASURES: dict[str, tuple[Callable[[ConversationResult], Any], bool]] = {
    "anger_trend": (lambda r: r.state.anger_trend, False),
    "final_anger": (lambda r: r.state.final_anger, False),
    "peak_anger": (lambda r: r.state.peak_anger, False),
    "flag": (lambda r: r.state.flag, False),
    "escalate": (lambda r: r.state.escalate, False),
    "situation": (lambda r: r.state.situation, True),
    "next_step": (lambda r: r.state.next_step.code, True),
    "next_step_rule": (lambda r: r.state.next_step_rule, True),
    "steps_taken": (lambda r: sorted(r.state.steps_taken), True),
    "mistakes": (lambda r: sorted(r.state.mistakes), True),
}


def agreement(hits: Sequence[bool], *, n: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Share of dialogues that agree, with a percentile bootstrap 95% interval over dialogues."""
    x = np.asarray(hits, dtype=float)
    if not len(x):
        return {"n": 0, "agreement": None, "ci95": None}
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), (n, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return {"n": len(x), "agreement": round(float(x.mean()), 3), "ci95": [round(float(lo), 3), round(float(hi), 3)]}


def compare(
    dialogues: Sequence[LabelledDialogue], models: Sequence[ConversationResult], people: Sequence[ConversationResult]
) -> dict[str, Any]:
    """Per measure, the agreement of the models' conversation outputs with people's, over the dialogues that can
    carry it: all of them (and those with two or more customer turns, where a trend can move), or, for the
    measures that read agent turns, those whose agent turns are all labelled."""
    out: dict[str, Any] = {}
    for name, (value, needs_agents) in MEASURES.items():
        keep = [i for i, d in enumerate(dialogues) if d.all_labelled or not needs_agents]
        out[name] = agreement([value(models[i]) == value(people[i]) for i in keep])
        if name == "anger_trend":
            several = [i for i in keep if dialogues[i].customer_turns >= 2]
            out["anger_trend_2plus_turns"] = agreement([value(models[i]) == value(people[i]) for i in several])
    turns = [
        (m.anger.level, p.anger.level)
        for mi, pi in zip(models, people, strict=True)
        for m, p in zip(mi.customer_results(), pi.customer_results(), strict=True)
    ]
    out["customer_turn_level"] = agreement([a == b for a, b in turns])
    return out


#: the measures whose disagreements are split between the two readers (customer turns, agent turns)
ATTRIBUTED = ("situation", "next_step", "next_step_rule")


def run(conv_models: Any, config: Any, dialogues: Sequence[LabelledDialogue]) -> dict[str, Any]:
    """Both runs of the same conversation code, and their agreement; then, for the measures that read both kinds
    of turn, the agreement when only one reader is the models' (the other answers with people's labels), which
    tells whose reads the disagreements come from."""
    from service.analyzer import Analyzer, ConversationAnalyzer

    chosen = [d for d in dialogues if d.customers_labelled]
    pairs = [(d.id, d.turns) for d in chosen]
    gold_customer = Analyzer(
        GoldModel(config, chosen), policy=conv_models.analyzer.policy, playbook=conv_models.analyzer.playbook
    )
    gold_agent = GoldDetector(chosen)
    models = conv_models.analyze_many(pairs)
    people = ConversationAnalyzer(gold_customer, gold_agent).analyze_many(pairs)
    report = compare(chosen, models, people)
    full = [i for i, d in enumerate(chosen) if d.all_labelled]
    one_reader = {
        "models_customer_reads_only": ConversationAnalyzer(conv_models.analyzer, gold_agent),
        "models_agent_reads_only": ConversationAnalyzer(gold_customer, conv_models.detector),
    }
    report["attribution"] = {}
    for name, conv in one_reader.items():
        part = conv.analyze_many([pairs[i] for i in full])
        report["attribution"][name] = {
            m: agreement([MEASURES[m][0](r) == MEASURES[m][0](people[i]) for r, i in zip(part, full, strict=True)])
            for m in ATTRIBUTED
        }
    report["dialogues"] = {
        "customer_turns_labelled": len(chosen),
        "every_turn_labelled": len(full),
        "two_or_more_customer_turns": sum(1 for d in chosen if d.customer_turns >= 2),
    }
    return report


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - exercised by hand
    from data.loader import AGENT_TURNS_FILE, ANNOTATIONS_DIR, read_label_file
    from data.sources import shared_data_dir
    from service.qa.validate import DEFAULT_CACHE, _build_analyzer, _Store
    from service.routing.agent_model import DEFAULT_CACHE as AGENT_CACHE
    from service.routing.agent_model import DEFAULT_MODEL_DIR as AGENT_DIR
    from service.settings import DEFAULT_MODEL_DIR

    ap = argparse.ArgumentParser(prog="python -m service.qa.chat_agreement", description=__doc__.split("\n")[0])
    ap.add_argument("--split", default="test", choices=("dev", "test"))
    ap.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    ap.add_argument("--backend", default="onnx", choices=("onnx", "torch", "auto"))
    ap.add_argument("--agent-model", default=str(AGENT_DIR))
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--embedding-cache", type=Path, default=AGENT_CACHE)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    customer = {r["id"]: r for r in read_label_file(ANNOTATIONS_DIR / "stc3.jsonl")}
    with open(AGENT_TURNS_FILE, encoding="utf-8") as f:
        agent = {r["id"]: r for r in map(json.loads, f) if r.get("source") == "stc3"}
    with open(shared_data_dir() / "stc3_helpdesk" / "train_data_cn.json", encoding="utf-8") as f:
        dialogues = [d for d in labelled_dialogues(json.load(f), customer, agent) if d.split == args.split]
    conv, info, agent_label = _build_analyzer(args, _Store(args.cache))
    report = run(conv, conv.analyzer.model.config, dialogues)
    root = Path(__file__).resolve().parents[2]
    if Path(info["path"]).resolve().is_relative_to(root):  # the figures file names the model, not this machine
        info["path"] = str(Path(info["path"]).resolve().relative_to(root))
    report = {"split": args.split, "customer_model": info, "agent_model": agent_label, **report}
    print(json.dumps(report, indent=1, ensure_ascii=False))  # noqa: T201
    if not args.no_write:
        args.output.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
