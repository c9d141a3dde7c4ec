"""Liveness and readiness: the process is up; the model is loaded."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.analyzer import Analyzer
from service.api.schemas import Health, Loading, Ready

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health()


@router.get("/readyz", response_model=Ready, responses={503: {"model": Loading, "description": "model loading"}})
def readyz(request: Request) -> Ready | JSONResponse:
    a: Analyzer | None = request.app.state.analyzer
    if a is None:
        return JSONResponse(status_code=503, content=Loading().model_dump())
    return Ready(model=a.model_info)
