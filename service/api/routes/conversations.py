"""A whole chat: every customer turn scored, agent turns read, the conversation state and next step."""

from __future__ import annotations

from fastapi import APIRouter

from data.vocab import Role
from service.api.deps import Auth, BulkBudgetDep, ConversationsDep, SettingsDep, check_count, check_text
from service.api.schemas import ERROR_RESPONSES, ConversationRequest
from service.results import ConversationResult
from service.routing.conversation import Turn

router = APIRouter(tags=["conversations"])


@router.post("/v1/conversations/analyze", response_model=ConversationResult, responses=ERROR_RESPONSES)
def analyze_conversation(
    req: ConversationRequest, conv: ConversationsDep, settings: SettingsDep, budget: BulkBudgetDep, _: Auth
) -> ConversationResult:
    """A chat is live traffic, not counted in the bulk budget; its explanation (the last customer turn's, up to
    160 forwards) is bulk work and takes its texts from the budget, as on ``POST /v1/analyze``."""
    check_count(len(req.turns), "turns", "turns in one conversation", settings)
    for i, t in enumerate(req.turns):
        check_text(t.text, f"turns.{i}.text", settings)
    turns = [Turn(role=t.role, text=t.text, ts=t.ts) for t in req.turns]
    last = [t.text for t in turns if t.role == Role.CUSTOMER][-1:] if req.explain else []
    with budget.hold(sum(conv.analyzer.explain_forwards(text) for text in last)):
        return conv.analyze(turns, id=req.id, lang=req.lang, explain=req.explain, redact=req.redact)
