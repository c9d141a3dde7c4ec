"""One message, or a batch of them."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import AnalyzerDep, Auth, SettingsDep, check_count, check_text
from service.api.schemas import ERROR_RESPONSES, AnalyzeRequest, BatchRequest
from service.results import BatchResult, MessageResult

router = APIRouter(tags=["analyze"])


@router.post("/v1/analyze", response_model=MessageResult, responses=ERROR_RESPONSES)
def analyze(req: AnalyzeRequest, a: AnalyzerDep, settings: SettingsDep, _: Auth) -> MessageResult:
    check_text(req.text, "text", settings)
    return a.analyze([req.text], ids=[0], lang=req.lang, explain=req.explain, redact=req.redact)[0]


@router.post("/v1/analyze/batch", response_model=BatchResult, responses=ERROR_RESPONSES)
def analyze_batch(req: BatchRequest, a: AnalyzerDep, settings: SettingsDep, _: Auth) -> BatchResult:
    check_count(len(req.items), "items", "items in one batch", settings)
    for i, item in enumerate(req.items):
        check_text(item.text, f"items.{i}.text", settings)
    ids = [item.id if item.id is not None else i for i, item in enumerate(req.items)]
    return BatchResult(results=a.analyze([it.text for it in req.items], ids=ids, lang=req.lang, redact=req.redact))
