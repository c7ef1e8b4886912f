"""POST /admin/reload, /admin/retrain and /admin/unpin (bearer token)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from mlplatform_common.errors import ConfigurationError
from mlplatform_serving.codecs.common import parse_model
from mlplatform_serving.deps import ServiceDep, read_json, require_admin
from mlplatform_serving.schemas import ERRORS, ReloadRequest, ReloadResponse

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses={401: ERRORS[401]},
)


@router.post(
    "/reload",
    response_model=ReloadResponse,
    responses={k: v for k, v in ERRORS.items() if k in (404, 409, 413, 415, 422, 503)},
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ReloadRequest"}}
            },
        }
    },
)
async def reload(request: Request, service: ServiceDep) -> dict[str, Any]:
    """Load a version (default: MODEL_VERSION or the production alias) and swap it in
    between requests. A version that fails to verify leaves the current one serving."""
    body = await request.body()
    req = parse_model(ReloadRequest, await read_json(request)) if body.strip() else ReloadRequest()
    version, previous = await run_in_threadpool(service.reload, req.version, req.signature)
    return {"model_version": version, "previous_version": previous}


@router.post("/retrain", status_code=202, responses={503: ERRORS[503]})
def retrain(service: ServiceDep) -> dict[str, Any]:
    """Start one retrain now (the retrainer decides, with --force, and holds the lock)."""
    if service.retrain_launcher is None:
        raise ConfigurationError("no retrain launcher is configured in this deployment")
    started = service.retrain_launcher("requested through /admin/retrain", True)
    return {"retrain_started": started}


@router.post("/unpin", responses={k: v for k, v in ERRORS.items() if k in (409, 503)})
def unpin(service: ServiceDep) -> dict[str, Any]:
    """Lift the hold a rollback or a pin put on production: the next retrain whose candidate
    passes the gate promotes it again. The production version itself does not change."""
    return {"production": service.unpin()}
