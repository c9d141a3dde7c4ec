"""The pipeline from text to contract results: ``Analyzer`` (messages) and ``ConversationAnalyzer`` (chats).

Shared by the HTTP API, ``calmfirst score`` and ``calmfirst qa`` so all three answer identically:
the model scores, the routing policy decides once per message, the playbook words the next step,
and the result is built once as a typed ``MessageResult`` / ``ConversationResult``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from data.script import detect_script, telling_script
from data.vocab import SCRIPT_LANG, AngerLabel, ComplaintType, Role, Script
from model.context import customer_turns_around, previous_turns, with_context
from model.loading import load_model
from model.onnx.runtime import OnnxCalmFirstModel
from model.scores import Prediction, ScoringModel
from service.explain import occlusion_explanation, occlusion_forwards, on_masked_text
from service.live_cache import LruCache
from service.microbatch import MicroBatcher
from service.model_check import check_model_dir
from service.redact import redact as mask
from service.results import (
    Anger,
    Complaint,
    ConversationResult,
    CustomerTurnResult,
    Explanation,
    MessageResult,
    ModelInfo,
    Route,
    Threat,
)
from service.routing.agent_steps import AgentDetector, AgentTurn, CustomerAnger
from service.routing.conversation import Turn, build_conversation
from service.routing.playbook import DEFAULT_PLAYBOOK, ConversationRules, Playbook
from service.routing.policy import Policy
from service.text import normalize_text

if TYPE_CHECKING:
    from service.settings import Settings

logger = logging.getLogger(__name__)


class AnalysisObserver(Protocol):
    """Told about every model call and every batch of results (``service.api.metrics`` counts them)."""

    def inference_done(self, size: int, seconds: float) -> None: ...

    def results_ready(self, results: Sequence[MessageResult]) -> None: ...


class ConversationObserver(Protocol):
    """Told, per conversation call, how many turns of each kind were scored and how many came from the kept
    turns (``service.live_cache``; ``service.api.metrics`` counts them, so an operator can size the cache)."""

    def turns_looked_up(self, kind: Role, kept: int, scored: int) -> None: ...


class Analyzer:
    def __init__(
        self,
        model: ScoringModel,
        *,
        policy: Policy | None = None,
        playbook: Playbook | None = None,
        batch_size: int = 32,
        default_script: str = "hans",
        microbatch_wait_ms: float = 0.0,
        microbatch_max_size: int = 1,
        microbatch_concurrency: int = 1,
        lane_models: Sequence[ScoringModel] = (),
    ) -> None:
        self.model = model
        self.policy = policy or Policy()
        self.playbook = playbook or Playbook.load(DEFAULT_PLAYBOOK)
        self.batch_size = batch_size
        self.lane_models = list(lane_models)  # one-thread sessions the micro-batcher runs side by side
        self.default_script = default_script
        # single-text calls from concurrent threads (the HTTP API) can share one forward pass;
        # off for an analyzer built by hand (batch scoring sends whole batches); the server turns it on
        # through Settings.microbatch_max_size (bench/RESULTS.md: never slower than no batching at 8 clients)
        self.microbatcher: MicroBatcher[str, Prediction] | None = None
        self.observers: list[AnalysisObserver] = []
        if microbatch_max_size > 1:
            self.microbatcher = MicroBatcher(
                self._predict_many,
                max_wait_ms=microbatch_wait_ms,
                max_size=microbatch_max_size,
                max_concurrent=microbatch_concurrency,
                lanes=[functools.partial(self._predict_many, model=m) for m in self.lane_models],
            )

    @classmethod
    def from_settings(cls, settings: Settings, *, model_path: str | Path | None = None) -> Analyzer:
        """The analyzer the settings describe (the server and batch scoring load it the same way).

        Every knob is read from ``settings`` (``service.settings.Settings``), where its default is
        written once; the keyword defaults of ``__init__`` are for code that builds an analyzer by hand.
        """
        threads, lanes = settings.threads(), settings.lanes()
        path = Path(model_path or settings.model_path)
        check_model_dir(path)  # a missing or corrupt file is an error naming it, before anything loads
        started = time.perf_counter()
        model = load_model(
            path, backend=settings.backend, quantize=settings.quantize, threads=threads, spin=settings.ort_spin
        )
        lane_models = model.lanes(lanes) if isinstance(model, OnnxCalmFirstModel) and lanes else []
        logger.info(
            "loaded model %s %s from %s in %.2f s (backend %s, %d threads, spin %s, %d lanes)",
            model.config.name,
            model.config.version,
            path,
            time.perf_counter() - started,
            model.backend,
            threads,
            settings.ort_spin,
            len(lane_models),
        )
        playbook = Playbook.load(settings.playbook_path)
        return cls(
            model,
            policy=settings.policy(default_level=playbook.thresholds.calm_first_level),
            playbook=playbook,
            batch_size=settings.batch_size,
            default_script=settings.default_script,
            microbatch_wait_ms=settings.microbatch_wait_ms,
            microbatch_max_size=settings.microbatch_max_size,
            microbatch_concurrency=settings.microbatch_concurrency,
            lane_models=lane_models,
        )

    def close(self) -> None:
        """Stop the micro-batcher's worker thread (the app does this at shutdown)."""
        if self.microbatcher is not None:
            self.microbatcher.close()

    def _predict_many(self, texts: list[str], model: ScoringModel | None = None) -> list[Prediction]:
        started = time.perf_counter()
        preds = list((model or self.model).predict(texts, batch_size=self.batch_size))
        for observer in self.observers:
            observer.inference_done(len(texts), time.perf_counter() - started)
        return preds

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """Model scores; a lone text goes through the micro-batcher so concurrent requests share a forward.

        Every text is normalised first (``service.text.normalize_text``: lone surrogates, control
        characters): this and :meth:`explain` are the only ways text reaches the tokenizer.
        """
        texts = [normalize_text(t) for t in texts]
        if len(texts) == 1 and self.microbatcher is not None:
            return [self.microbatcher.submit(texts[0])]
        return self._predict_many(list(texts))

    @cached_property
    def model_info(self) -> ModelInfo:
        """Built once: every result carries it, and a pydantic model per request was measurable."""
        return ModelInfo(name=self.model.config.name, version=self.model.config.version)

    def result(
        self, pred: Prediction, text: str, *, id: Any, lang: str | None = None, default_script: str | None = None
    ) -> MessageResult:
        """The contract result of one message, built once from its prediction and routing decision.
        ``default_script``: the script of a text with no telling character (a chat's script so far), else the
        service's ``default_script``."""
        script = Script(detect_script(text, default=default_script or self.default_script))
        decision = self.policy.decide(pred)
        step = self.playbook.route(
            decision.situation, complaint_type=pred.complaint_type, lang=lang or SCRIPT_LANG[script]
        )
        return MessageResult(
            id=id,
            anger=Anger(
                level=pred.anger_level,
                label=AngerLabel(pred.anger_label),
                score=round(pred.anger_score, 6),
                probs=pred.anger_probs,
            ),
            complaint=Complaint(
                type=ComplaintType(pred.complaint_type),
                types=[ComplaintType(t) for t in pred.types],
                scores={ComplaintType(k): v for k, v in pred.type_scores.items()},
            ),
            threat=Threat(detected=decision.threat, score=round(pred.threat_score, 6)),
            route=Route(flag=decision.flag, escalate=decision.escalate, next_step=step),
            script=script,
            model=self.model_info,
        )

    def analyze(
        self,
        texts: Sequence[str],
        *,
        ids: Sequence[Any] | None = None,
        lang: str | None = None,
        explain: bool = False,
        redact: bool = False,
    ) -> list[MessageResult]:
        ids = list(ids) if ids is not None else list(range(len(texts)))
        texts = [normalize_text(t) for t in texts]  # length-preserving: offsets still match the caller's text
        preds = self.predict(texts)
        out = [self.result(p, t, id=i, lang=lang) for p, t, i in zip(preds, texts, ids, strict=True)]
        return self._finish(out, texts, explain=explain, redact=redact)

    def _finish(
        self, out: list[MessageResult], texts: list[str], *, explain: bool, redact: bool
    ) -> list[MessageResult]:
        """What every analysed message gets after its result: the observers see it, then the extras asked for."""
        for observer in self.observers:
            observer.results_ready(out)
        for r, t in zip(out, texts, strict=True):
            if explain:
                r.explanation = self.explain(t)
            if redact:
                r.text = mask(t)
                if r.explanation is not None:
                    r.explanation = on_masked_text(r.explanation, t, r.text)
        return out

    async def analyze_one(self, text: str, *, lang: str | None = None, redact: bool = False) -> MessageResult:
        """One message from a caller on an event loop (``POST /v1/analyze``), through the micro-batcher.

        The forward runs on the micro-batcher's workers while the loop awaits it
        (:meth:`service.microbatch.MicroBatcher.submit_async`); the result is the one :meth:`analyze`
        builds. Without a micro-batcher, call :meth:`analyze` in a thread instead.
        """
        if self.microbatcher is None:
            raise RuntimeError("analyze_one needs the micro-batcher (microbatch_max_size > 1)")
        text = normalize_text(text)
        pred = await self.microbatcher.submit_async(text)
        return self._finish([self.result(pred, text, id=0, lang=lang)], [text], explain=False, redact=redact)[0]

    @staticmethod
    def explain_forwards(text: str) -> int:
        """Texts an explanation of ``text`` scores (``service.explain.occlusion_forwards``), before running it."""
        return occlusion_forwards(normalize_text(text))

    def explain(self, text: str, *, batch_size: int | None = None) -> Explanation:
        return occlusion_explanation(self.model, normalize_text(text), batch_size=batch_size or self.batch_size)


def _shift(ordinal: int | None, first: int) -> int | None:
    """A chat's customer-turn ordinal as a position in the flat lists of a batch whose chat starts at ``first``."""
    return None if ordinal is None else first + ordinal


@dataclass
class ChatReads:
    """What the models read of one or more chats, in flat lists (``ConversationAnalyzer._reads``)."""

    cust_texts: list[str] = field(default_factory=list)
    #: per customer turn, the script its chat has shown so far (None: no telling character yet): the script of a
    #: turn that tells none ("A12345678", "好"), so a Traditional chat's next step stays Traditional
    cust_scripts: list[str | None] = field(default_factory=list)
    #: the customer model's inputs (a later turn with its context, for a model trained on that format)
    cust_inputs: list[str] = field(default_factory=list)
    agent_texts: list[str] = field(default_factory=list)
    #: per agent turn, the positions in ``cust_inputs`` of the customer turns just before and just after it
    agent_around: list[tuple[int | None, int | None]] = field(default_factory=list)

    @property
    def agent_contexts(self) -> list[str | None]:
        """The customer turn before each agent turn (None: the agent wrote first)."""
        return [None if b is None else self.cust_texts[b] for b, _ in self.agent_around]

    def agent_keys(self) -> list[tuple[str, str, str, str]]:
        """An agent turn's cache key: its text and context and the inputs of the customer turns around it."""

        def at(k: int | None) -> str:
            return "" if k is None else self.cust_inputs[k]

        return [
            (t, c or "", at(b), at(a))
            for t, c, (b, a) in zip(self.agent_texts, self.agent_contexts, self.agent_around, strict=True)
        ]


class ConversationAnalyzer:
    """A chat: every customer turn through the ``Analyzer``, agent turns through the step detector, then the
    conversation rules (``service.routing.conversation``) for the state and the next step."""

    def __init__(self, analyzer: Analyzer, detector: AgentDetector, *, cache_size: int = 0) -> None:
        """``cache_size``: turns kept per kind for live chats sent again and again (``service.live_cache``);
        0 (the default outside the server): every call scores every turn, batched."""
        self.analyzer = analyzer
        self.detector = detector
        self.customer_cache: LruCache[str, Prediction] | None = LruCache(cache_size) if cache_size else None
        #: keyed by the agent turn, its context and the model inputs of the customer turns around it (their
        #: scores are a function of those inputs, so a key is known before anything is scored)
        self.agent_cache: LruCache[tuple[str, str, str, str], AgentTurn] | None = (
            LruCache(cache_size) if cache_size else None
        )
        keep_parts = getattr(detector, "keep_parts", None)  # the e5 model: a re-read costs only its stack
        if cache_size and callable(keep_parts):
            keep_parts(cache_size)
        self.observers: list[ConversationObserver] = []
        rules = analyzer.playbook.conversation
        if rules is None:  # pragma: no cover - Playbook always fills the defaults
            raise ValueError("playbook has no conversation rules")
        self.rules: ConversationRules = rules
        #: whether customer turns are scored with their context: only for a model trained on that format
        #: (``context_input`` in its config); the v1 release was not, and reads a turn alone
        self.reads_context = bool(getattr(analyzer.model.config, "context_input", False))

    def analyze(
        self,
        turns: Sequence[Turn],
        *,
        id: Any = None,
        lang: str | None = None,
        explain: bool = False,
        redact: bool = False,
    ) -> ConversationResult:
        """One conversation; ``explain`` explains the last customer turn, ``redact`` returns masked texts."""
        out = self.analyze_many([(id, turns)], lang=lang)[0]
        if explain:
            last = max(i for i, t in enumerate(turns) if t.role == Role.CUSTOMER)
            turn = out.turns[last]
            assert isinstance(turn, CustomerTurnResult)
            turn.result.explanation = self.analyzer.explain(turns[last].text, batch_size=64)
        if redact:
            for ot, t in zip(out.turns, turns, strict=True):
                original = normalize_text(t.text)
                ot.text = mask(original)
                if isinstance(ot, CustomerTurnResult) and ot.result.explanation is not None:
                    ot.result.explanation = on_masked_text(ot.result.explanation, original, ot.text)
        return out

    def analyze_many(
        self, conversations: Sequence[tuple[Any, Sequence[Turn]]], *, lang: str | None = None
    ) -> list[ConversationResult]:
        """Several conversations with one batched model pass over all customer turns.

        Each customer turn after the first is scored with its context (``model.context.with_context``: the
        last customer and agent turns before it), the format the shipped model is trained on; a single
        message is scored as it is. Each agent turn is read with the customer's turn before it and the customer model's
        anger scores of the customer turns just before and just after it.
        """
        reads = self._reads(turns for _, turns in conversations)
        preds, fresh = self._customer_predictions(reads.cust_inputs)
        # the result (script, next-step language) is the message's own; only the scores read the context
        results = [
            self.analyzer.result(p, t, id=i, lang=lang, default_script=d)
            for i, (p, t, d) in enumerate(zip(preds, reads.cust_texts, reads.cust_scripts, strict=True))
        ]
        # counted once per message: a live chat sent again brings its earlier turns back, already counted
        new = [r for r, f in zip(results, fresh, strict=True) if f]
        for observer in getattr(self.analyzer, "observers", []):
            observer.results_ready(new)
        agent = self._agent_turns(reads, preds)
        ri = ai = 0
        out = []
        for conv_id, turns in conversations:
            n_c = sum(t.role == Role.CUSTOMER for t in turns)
            n_a = len(turns) - n_c
            out.append(self.build(conv_id, turns, results[ri : ri + n_c], agent[ai : ai + n_a], lang=lang))
            ri += n_c
            ai += n_a
        return out

    def _reads(self, conversations: Iterable[Sequence[Turn]]) -> ChatReads:
        """What the models read: customer texts and model inputs (with context), agent texts with the customer
        turn before each, and which customer turns are just before and just after each agent turn."""
        out = ChatReads()
        for turns in conversations:
            pairs = [(str(t.role), t.text) for t in turns]
            first = len(out.cust_inputs)  # this chat's first customer turn in the flat lists
            for before, after in customer_turns_around([t.role == Role.CUSTOMER for t in turns]):
                out.agent_around.append((_shift(before, first), _shift(after, first)))
            shown: str | None = None  # the chat's script so far, from any turn that tells it
            for i, t in enumerate(turns):
                if t.role == Role.CUSTOMER:
                    out.cust_scripts.append(shown)  # before this turn: its own telling characters come first
                    out.cust_texts.append(t.text)
                    # only a model trained on the context format reads it; others (v1) see the turn alone
                    ctx = previous_turns(pairs, i) if self.reads_context else None
                    out.cust_inputs.append(with_context(t.text, ctx))
                else:
                    out.agent_texts.append(t.text)
                shown = telling_script(t.text) or shown
        return out

    def unseen_turns(self, turns: Sequence[Turn]) -> int:
        """Turns of this chat that analysing it would score now (not kept from an earlier call), before doing it:
        what it costs (``service.api.admission``). Every turn when nothing is kept."""
        reads = self._reads([turns])
        if self.customer_cache is None or self.agent_cache is None:
            return len(reads.cust_inputs) + len(reads.agent_texts)
        customer = sum(1 for x in set(reads.cust_inputs) if x not in self.customer_cache)
        return customer + sum(1 for k in set(reads.agent_keys()) if k not in self.agent_cache)

    def _customer_predictions(self, inputs: list[str]) -> tuple[list[Prediction], list[bool]]:
        """The predictions, and which of them were made now (all of them without the cache)."""
        if not inputs:
            return [], []
        if self.customer_cache is None:
            preds, fresh = self.analyzer.predict(inputs), [True] * len(inputs)
        else:
            # a new turn alone, as a single message is scored (service.live_cache says why)
            preds, fresh = self.customer_cache.each(inputs, lambda x: self.analyzer.predict([x])[0])
        self._looked_up(Role.CUSTOMER, fresh)
        return preds, fresh

    def _agent_turns(self, reads: ChatReads, preds: Sequence[Prediction]) -> list[AgentTurn]:
        """The agent turns read with the customer turn before each and the customer model's anger around each."""
        texts, contexts = reads.agent_texts, reads.agent_contexts
        if not texts:
            return []

        def score(k: int | None) -> float | None:
            return None if k is None else preds[k].anger_score

        anger = [CustomerAnger(before=score(b), after=score(a)) for b, a in reads.agent_around]
        if self.agent_cache is None:
            self._looked_up(Role.AGENT, [True] * len(texts))
            return self.detector.detect(texts, contexts, anger)
        keys = reads.agent_keys()
        by_key = dict(zip(keys, zip(texts, contexts, anger, strict=True), strict=True))

        def detect_one(key: tuple[str, str, str, str]) -> AgentTurn:
            text, context, around = by_key[key]
            return self.detector.detect([text], [context], [around])[0]

        found, fresh = self.agent_cache.each(keys, detect_one)
        self._looked_up(Role.AGENT, fresh)
        return found

    def _looked_up(self, kind: Role, fresh: Sequence[bool]) -> None:
        scored = sum(fresh)
        for observer in self.observers:
            observer.turns_looked_up(kind, len(fresh) - scored, scored)

    def build(
        self,
        conv_id: Any,
        turns: Sequence[Turn],
        results: Sequence[MessageResult],
        agent: Sequence[AgentTurn],
        *,
        lang: str | None,
    ) -> ConversationResult:
        return build_conversation(
            conv_id,
            turns,
            results,
            agent,
            policy=self.analyzer.policy,
            playbook=self.analyzer.playbook,
            rules=self.rules,
            lang=lang,
        )
