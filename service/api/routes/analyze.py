"""One message, or a batch of them."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from service.api.deps import AnalyzerDep, Auth, BulkBudgetDep, SettingsDep, check_count, check_lang, check_text
from service.api.schemas import ERROR_RESPONSES, AnalyzeRequest, BatchRequest
from service.results import BatchResult, MessageResult

router = APIRouter(tags=["analyze"])


@router.post("/v1/analyze", response_model=MessageResult, responses=ERROR_RESPONSES)
async def analyze(
    req: AnalyzeRequest, a: AnalyzerDep, settings: SettingsDep, budget: BulkBudgetDep, _: Auth
) -> MessageResult:
    """``async``: the usual single message awaits the micro-batcher on the loop (no thread-pool hop per
    request: ``Analyzer.analyze_one``); an explanation or no micro-batcher runs in a thread. An explanation
    scores the text and up to 159 variants of it, bulk work: it takes its texts from the bulk budget
    (``service.api.admission``) like a batch."""
    check_text(req.text, "text", settings)
    check_lang(req.lang, a)
    if a.microbatcher is not None and not req.explain:
        return await a.analyze_one(req.text, lang=req.lang, redact=req.redact)
    run = partial(a.analyze, [req.text], ids=[0], lang=req.lang, explain=req.explain, redact=req.redact)
    if not req.explain:
        return (await run_in_threadpool(run))[0]

    def explained() -> list[MessageResult]:  # waits for the budget in the thread pool, not on the loop
        with budget.hold(a.explain_forwards(req.text)):
            return run()

    return (await run_in_threadpool(explained))[0]


@router.post("/v1/analyze/batch", response_model=BatchResult, responses=ERROR_RESPONSES)
def analyze_batch(
    req: BatchRequest, a: AnalyzerDep, settings: SettingsDep, budget: BulkBudgetDep, _: Auth
) -> BatchResult:
    """A request the service rejects (422) never takes from the bulk budget (``service.api.admission``)."""
    check_count(len(req.items), "items", "items in one batch", settings)
    check_lang(req.lang, a)
    for i, item in enumerate(req.items):
        check_text(item.text, f"items.{i}.text", settings)
    ids = [item.id if item.id is not None else i for i, item in enumerate(req.items)]
    with budget.hold(len(req.items)):
        return BatchResult(results=a.analyze([it.text for it in req.items], ids=ids, lang=req.lang, redact=req.redact))
