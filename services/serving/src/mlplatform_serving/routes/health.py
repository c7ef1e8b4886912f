"""GET /health (liveness) and /ready (readiness)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from mlplatform_serving.deps import RuntimeDep, ServiceDep
from mlplatform_serving.schemas import ERRORS, HealthResponse, ReadyResponse

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthResponse, summary="Liveness")
async def health(runtime: RuntimeDep) -> dict[str, Any]:
    """Always 200 while the process runs; says whether a model is loaded."""
    return {"status": "ok", "model_loaded": runtime.ready, "model_version": runtime.version}


@router.get(
    "/ready", response_model=ReadyResponse, responses={503: ERRORS[503]}, summary="Readiness"
)
async def ready(service: ServiceDep) -> dict[str, Any]:
    """200 once a verified model is loaded; 503 with the reason before that. Also says
    whether the production alias names the served version (a Deployment rolled back by hand
    serves another until the retrainer moves the alias)."""
    state = service.alias_state
    return {
        "ready": True,
        "model_name": service.settings.model_name,
        "model_version": service.runtime.model.version,
        "production_alias": state.get("production_alias"),
        "alias_matches": state.get("alias_matches"),
        "alias_detail": state.get("alias_detail"),
    }


# HEAD too, as uptime checkers probe (one OpenAPI operation per path: the GET).
for _path, _endpoint in (("/health", health), ("/ready", ready)):
    router.add_api_route(_path, _endpoint, methods=["HEAD"], include_in_schema=False)
