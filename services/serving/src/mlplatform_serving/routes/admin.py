"""POST /admin/reload, /admin/retrain, /admin/promote, /admin/rollback, /admin/unpin,
/admin/train and /admin/datasets, GET /admin/datasets (bearer token)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from mlplatform_common import datasets
from mlplatform_common.errors import ConfigurationError, InvalidInput
from mlplatform_serving.codecs.common import parse_model
from mlplatform_serving.deps import ServiceDep, read_json, require_admin
from mlplatform_serving.schemas import (
    ERRORS,
    ActionResponse,
    PromoteRequest,
    ReloadRequest,
    ReloadResponse,
    TrainRequest,
)


def json_body(schema: str, required: bool = True) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads its JSON itself (``read_json``)."""
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {"requestBody": {"required": required, "content": {"application/json": {"schema": ref}}}}


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
    openapi_extra=json_body("ReloadRequest", required=False),
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


@router.post(
    "/promote",
    status_code=202,
    response_model=ActionResponse,
    responses={k: v for k, v in ERRORS.items() if k in (404, 422, 503)},
    openapi_extra=json_body("PromoteRequest"),
)
async def promote(request: Request, service: ServiceDep) -> dict[str, Any]:
    """Put a version in production (`pin`: and hold it there), as `mlplatform promote|pin`
    does: a retrainer run moves the alias under the retrain lock and rolls it out. Answered
    once the version is checked (404: none such, or it fails verification) and the run is
    started."""
    req = parse_model(PromoteRequest, await read_json(request))
    return await run_in_threadpool(service.promote, req.version, req.pin)


@router.post(
    "/rollback",
    status_code=202,
    response_model=ActionResponse,
    responses={k: v for k, v in ERRORS.items() if k in (409, 503)},
)
def rollback(service: ServiceDep) -> dict[str, Any]:
    """Move production back to the previous version, as `mlplatform rollback` does (it holds
    until /admin/unpin): a retrainer run moves the alias and rolls it out. 409 when there is
    no previous version to go back to."""
    return service.rollback()


@router.post(
    "/train",
    status_code=202,
    response_model=ActionResponse,
    responses={k: v for k, v in ERRORS.items() if k in (404, 422, 503)},
    openapi_extra=json_body("TrainRequest"),
)
async def train(request: Request, service: ServiceDep) -> dict[str, Any]:
    """Train a model on a stored data set, as `mlplatform train --dataset NAME` does: a
    retrainer run trains, publishes a new version, promotes it and rolls it out. Answered
    once the data set is found (404: none such) and the run is started; GET /models shows
    the new version."""
    req = parse_model(TrainRequest, await read_json(request))
    return await run_in_threadpool(service.train, req.dataset)


@router.post("/unpin", responses={k: v for k, v in ERRORS.items() if k in (409, 503)})
def unpin(service: ServiceDep) -> dict[str, Any]:
    """Lift the hold a rollback or a pin put on production: the next retrain whose candidate
    passes the gate promotes it again. The production version itself does not change."""
    return {"production": service.unpin()}


DATASET_BODY = {
    "required": True,
    "content": {
        "text/csv": {"schema": {"type": "string"}},
        "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
    },
}


@router.post(
    "/datasets",
    status_code=201,
    responses={k: v for k, v in ERRORS.items() if k in (409, 413, 422, 503)},
    openapi_extra={"requestBody": DATASET_BODY},
)
async def upload_dataset(
    request: Request,
    service: ServiceDep,
    name: Annotated[str, Query(description="the data set's name (like a model's; '_' too)")],
    target: Annotated[str, Query(description="the target column")],
    task: Annotated[
        Literal["classification", "regression"] | None,
        Query(description="default: read from the target's values"),
    ] = None,
    match_model: Annotated[
        bool, Query(description="the columns must be the production model's features")
    ] = False,
) -> dict[str, Any]:
    """Store a CSV or Parquet file (the raw body; Parquet is read by its magic bytes) as a
    named data set of this model, to train on (`train --dataset NAME`). The size bound
    (MLPLATFORM_DATASET_MAX_MB) is enforced while the body is read; the file is validated
    (header, target, unique columns, rows) and stored whole or not at all."""
    body = await request.body()
    features = None
    if match_model:
        alias = await run_in_threadpool(service.registry.production)
        if alias is None:
            raise InvalidInput("match_model: this model has no production version yet")
        manifest = await run_in_threadpool(service.registry.manifest, alias["version"])
        features = [f["name"] for f in manifest["feature_schema"]]
    dataset = await run_in_threadpool(
        datasets.prepare, body, name, target, task=task, features=features
    )
    return await run_in_threadpool(datasets.write, service.store, dataset)


@router.get("/datasets", responses={503: ERRORS[503]})
def list_datasets(service: ServiceDep) -> dict[str, Any]:
    """The model's stored data sets: name, target, task, rows, columns."""
    return {"datasets": datasets.listing(service.store)}
