"""A whole chat: every customer turn scored, agent turns read, the conversation state and next step."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import Auth, ConversationsDep, SettingsDep, check_count, check_text
from service.api.schemas import ERROR_RESPONSES, ConversationRequest
from service.results import ConversationResult
from service.routing.conversation import Turn

router = APIRouter(tags=["conversations"])


@router.post("/v1/conversations/analyze", response_model=ConversationResult, responses=ERROR_RESPONSES)
def analyze_conversation(
    req: ConversationRequest, conv: ConversationsDep, settings: SettingsDep, _: Auth
) -> ConversationResult:
    check_count(len(req.turns), "turns", "turns in one conversation", settings)
    for i, t in enumerate(req.turns):
        check_text(t.text, f"turns.{i}.text", settings)
    turns = [Turn(role=t.role, text=t.text, ts=t.ts) for t in req.turns]
    return conv.analyze(turns, id=req.id, lang=req.lang, explain=req.explain, redact=req.redact)
