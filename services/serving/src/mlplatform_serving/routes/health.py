"""GET /health (liveness) and /ready (readiness)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from mlplatform_serving.deps import RuntimeDep
from mlplatform_serving.schemas import ERRORS, HealthResponse, ReadyResponse

router = APIRouter(tags=["health"])


# HEAD too: uptime checkers probe with it.
@router.api_route(
    "/health", methods=["GET", "HEAD"], response_model=HealthResponse, summary="Liveness"
)
async def health(runtime: RuntimeDep) -> dict[str, Any]:
    """Always 200 while the process runs; says whether a model is loaded."""
    return {"status": "ok", "model_loaded": runtime.ready, "model_version": runtime.version}


@router.api_route(
    "/ready",
    methods=["GET", "HEAD"],
    response_model=ReadyResponse,
    responses={503: ERRORS[503]},
    summary="Readiness",
)
async def ready(runtime: RuntimeDep) -> dict[str, Any]:
    """200 once a verified model is loaded; 503 with the reason before that."""
    return {"ready": True, "model_version": runtime.model.version}
