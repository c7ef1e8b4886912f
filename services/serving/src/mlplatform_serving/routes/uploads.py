"""POST /admin/models: register a model trained elsewhere (a multipart form, bearer token);
GET /admin/models/uploads/{id}: how that went.

Serving checks what it can without loading the model (the form, the file types, the reference
data and its target, the production model's columns), keeps the upload in the store
(``mlplatform_common.uploads``) and starts the retrainer with ``actions.register(id)``: the
retrainer loads the model in a separate process, registers it as ``mlplatform register`` does,
and writes the outcome. Serving never loads the model: its image has no scikit-learn, and a
pickle is code.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from mlplatform_common import actions, datasets, uploads
from mlplatform_common.errors import (
    ConfigurationError,
    InvalidInput,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from mlplatform_common.schema import TASKS
from mlplatform_serving.deps import ServiceDep, require_admin
from mlplatform_serving.schemas import ERRORS
from mlplatform_serving.service import Service

router = APIRouter(
    prefix="/admin/models",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses={401: ERRORS[401]},
)

MAX_WAIT_SECONDS = 300.0
"""The longest ``wait`` a POST may ask for (a registration of a large model takes minutes)."""
POLL_SECONDS = 0.5
MAX_TRUST = 20
# A type a skops file may hold, as skops names it: a dotted module path and class name.
TRUSTED_TYPE = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$"
TRUE, FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off", ""}

MODEL_FORM = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["model", "data", "target"],
                "properties": {
                    "model": {
                        "type": "string",
                        "format": "binary",
                        "description": "the fitted model: .skops (loaded safely) or "
                        ".joblib/.pkl (a pickle: loading it runs its code)",
                    },
                    "data": {
                        "type": "string",
                        "format": "binary",
                        "description": "reference rows the model predicts, with the target: "
                        ".csv or .parquet",
                    },
                    "target": {"type": "string", "description": "the target column of data"},
                    "task": {
                        "type": "string",
                        "enum": list(TASKS),
                        "description": "default: the model's (a classifier or not)",
                    },
                    "promote": {
                        "type": "boolean",
                        "default": False,
                        "description": "put the new version in production (default: a candidate)",
                    },
                    "trust": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "a type a .skops file may hold beyond scikit-learn's, "
                        "e.g. xgboost.sklearn.XGBClassifier (repeat the field for more)",
                    },
                },
            }
        }
    },
}


def status_path(upload_id: str) -> str:
    """The status URL of an upload, relative to the API's root."""
    return f"{router.prefix}/uploads/{upload_id}"


def _text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{name}: a text field, not a file")
    return value.strip() or None


async def _file(form: FormData, name: str, what: str) -> tuple[str, bytes]:
    value = form.get(name)
    if value is None:
        raise InvalidInput(f"{name}: required: {what} (a file field of the form)")
    if not isinstance(value, UploadFile):
        raise InvalidInput(f"{name}: must be a file ({what}), not a text field")
    body = await value.read()
    filename = value.filename or ""
    if not body:
        raise InvalidInput(f"{name}: the file {filename!r:.80} is empty")
    return filename, body


def _flag(form: FormData, name: str) -> bool:
    value = (_text(form, name) or "").lower()
    if value not in TRUE | FALSE:
        raise InvalidInput(f"{name}: {value!r:.40} is not a boolean (true or false)")
    return value in TRUE


def _trusted(form: FormData) -> list[str]:
    trust = [str(t).strip() for t in form.getlist("trust") if str(t).strip()]
    if len(trust) > MAX_TRUST:
        raise InvalidInput(f"trust: at most {MAX_TRUST} types")
    for name in trust:
        if not re.match(TRUSTED_TYPE, name):
            raise InvalidInput(
                f"trust: {name!r:.80} is not a type name (module.Class, e.g. "
                "xgboost.sklearn.XGBClassifier)"
            )
    return trust


async def _production_features(service: Service) -> list[str] | None:
    """The production version's features, which a new version of this model must take: the
    clients of this serving send those rows. None without a production version."""
    alias = await run_in_threadpool(service.registry.production)
    if alias is None:
        return None
    manifest = await run_in_threadpool(service.registry.manifest, alias["version"])
    return [f["name"] for f in manifest["feature_schema"]]


async def _checked(
    form: FormData, service: Service, upload_id: str
) -> tuple[bytes, bytes, dict[str, Any]]:
    """The model's bytes, the reference rows as CSV and the upload's request, or a 4xx that
    names the field."""
    settings = service.settings
    model_name, model = await _file(form, "model", "the fitted model, .skops or .joblib/.pkl")
    fmt = uploads.model_format(model_name)
    data_name, data = await _file(form, "data", "reference rows with the target, .csv or .parquet")
    if not data_name.lower().endswith(uploads.DATA_SUFFIXES):
        raise InvalidInput(f"data: {data_name!r:.80}: use a .csv or .parquet file")
    if len(data) > datasets.max_bytes(settings.dataset_max_mb):
        raise PayloadTooLarge(
            f"data: over the limit of {settings.dataset_max_mb:g} MB "
            "(MLPLATFORM_DATASET_MAX_MB); nothing stored"
        )
    target = _text(form, "target")
    if target is None:
        raise InvalidInput("target: required: the name of the target column of data")
    task = _text(form, "task")
    if task is not None and task not in TASKS:
        raise InvalidInput(f"task: {task!r:.40}: use one of {list(TASKS)}, or leave it out")
    promote, trust = _flag(form, "promote"), _trusted(form)
    features = await _production_features(service)
    # "data" names the field in every message (target not found, bad CSV, wrong columns).
    dataset = await run_in_threadpool(
        datasets.prepare, data, "data", target, task=task, features=features
    )
    suffix = "." + model_name.rsplit(".", 1)[-1].lower()
    model_file = uploads.safe_filename(model_name, f"model{suffix}")
    if not model_file.lower().endswith(suffix):
        model_file = f"model{suffix}"
    request = {
        "model_file": model_file,
        "format": fmt,
        "data_file": uploads.safe_filename(data_name, "data.csv"),
        "dataset": uploads.dataset_name(data_name, upload_id),
        "target": target,
        "task": task,
        "promote": promote,
        "trust": trust,
    }
    return model, dataset.raw, request


@router.post(
    "",
    status_code=202,
    responses={
        201: {"description": "Published (with `wait`): the version"},
        **{k: v for k, v in ERRORS.items() if k in (404, 413, 415, 422, 503)},
        502: {"description": "The retrainer's Job could not be created"},
    },
    openapi_extra={"requestBody": MODEL_FORM},
)
async def register_model(
    request: Request,
    service: ServiceDep,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=MAX_WAIT_SECONDS,
            description="seconds to wait for the outcome: 201 published, 422 refused, 202 "
            "still pending (default 0: answer 202 at once and poll the status URL)",
        ),
    ] = 0,
) -> JSONResponse:
    """Register a model trained elsewhere with its reference data, as `mlplatform register`
    does, as a version of this serving's model (a candidate unless `promote`). The form is
    checked here (fields, file types, the data and its target, the production version's
    columns; the body is bounded by MLPLATFORM_MODEL_UPLOAD_MAX_MB while it is read); the
    retrainer then loads the model in a separate process, checks it predicts the reference
    rows, signs and publishes it. **A .joblib/.pkl file is a pickle: loading it runs its
    code**, which is why this takes the admin token; .skops is the safe format. Answers 202
    with the upload's status URL (`GET /admin/models/uploads/{id}`)."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "multipart/form-data":
        raise UnsupportedMediaType(
            f"Content-Type {media or '(none)'!r:.60}: send a multipart/form-data form with the "
            "fields model, data and target"
        )
    upload_id = uploads.new_id()
    try:
        form = await request.form(max_files=2, max_fields=MAX_TRUST + 10, max_part_size=65536)
    except HTTPException as exc:  # Starlette's parser: a malformed form (not the size bound)
        raise InvalidInput(f"body: not a readable multipart form ({exc.detail})") from None
    try:
        model, data, fields = await _checked(form, service, upload_id)
    finally:
        await form.close()
    # Checked after the form, so a deployment without one still names a bad field first.
    launcher = service.retrain_launcher
    if launcher is None:
        raise ConfigurationError(
            "no retrain launcher is configured in this deployment: the retrainer registers "
            "uploaded models (MLPLATFORM_RETRAIN_LAUNCHER)"
        )
    await run_in_threadpool(uploads.store_upload, service.store, upload_id, model, data, fields)
    try:
        await run_in_threadpool(
            launcher,
            f"register upload {upload_id} ({fields['model_file']})",
            False,
            actions.register(upload_id),
        )
    except BaseException:
        await run_in_threadpool(uploads.remove, service.store, upload_id)
        raise
    answer: dict[str, Any] = {
        "upload": upload_id,
        "status": status_path(upload_id),
        "state": uploads.PENDING,
    }
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        await asyncio.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
        done = await run_in_threadpool(uploads.outcome, service.store, upload_id)
        if done is None:
            continue
        if done["state"] == uploads.REFUSED:
            raise uploads.UploadRefused(done["reason"])
        return JSONResponse({**answer, **done}, status_code=201)
    return JSONResponse(answer, status_code=202)


@router.get("/uploads/{upload_id}", responses={404: ERRORS[404], 503: ERRORS[503]})
def upload_status(upload_id: str, service: ServiceDep) -> dict[str, Any]:
    """An upload's state: `pending` (the retrainer is at it), `published` (with the `version`
    and whether it was `promoted`) or `refused` (with the `reason`, one line)."""
    return {**uploads.status(service.store, upload_id), "status": status_path(upload_id)}
