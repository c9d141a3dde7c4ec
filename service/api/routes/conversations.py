"""A whole chat: every customer turn scored, agent turns read, the conversation state and next step."""

from __future__ import annotations

from fastapi import APIRouter

from data.vocab import Role
from service.api.deps import Auth, BulkBudgetDep, ConversationsDep, SettingsDep, check_count, check_lang, check_text
from service.api.schemas import ERROR_RESPONSES, ConversationRequest
from service.results import ConversationResult
from service.routing.conversation import Turn

router = APIRouter(tags=["conversations"])


@router.post("/v1/conversations/analyze", response_model=ConversationResult, responses=ERROR_RESPONSES)
def analyze_conversation(
    req: ConversationRequest, conv: ConversationsDep, settings: SettingsDep, budget: BulkBudgetDep, _: Auth
) -> ConversationResult:
    """A live chat (a new turn or two; the earlier ones are kept) is not counted in the bulk budget; a chat with more
    than ``bulk_chat_turns`` turns still to score is a transcript, bulk work that takes the whole budget, and an
    explanation (the last customer turn's, up to 160 forwards) takes its texts (``service.api.admission``)."""
    check_count(len(req.turns), "turns", "turns in one conversation", settings)
    check_lang(req.lang, conv.analyzer)
    for i, t in enumerate(req.turns):
        check_text(t.text, f"turns.{i}.text", settings)
    turns = [Turn(role=t.role, text=t.text, ts=t.ts) for t in req.turns]
    last = [t.text for t in turns if t.role == Role.CUSTOMER][-1:] if req.explain else []
    # a chat no longer than the threshold cannot have more turns to score: no look-up on the live path
    unseen = conv.unseen_turns(turns) if len(turns) > settings.bulk_chat_turns else 0
    bulk = budget.whole(unseen) if unseen > settings.bulk_chat_turns else 0
    with budget.hold(bulk + sum(conv.analyzer.explain_forwards(text) for text in last)):
        return conv.analyze(turns, id=req.id, lang=req.lang, explain=req.explain, redact=req.redact)
