"""POST /predict: JSON (one row or many) or text/csv."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers

from mlplatform_common.errors import UnsupportedMediaType
from mlplatform_serving.codecs import csv_rows, json_rows
from mlplatform_serving.codecs.table import Table
from mlplatform_serving.dataplane import DataPlane
from mlplatform_serving.schemas import ERRORS, PredictResponse

router = APIRouter(tags=["predict"])

# A CSV body up to this size (~1,200 rows of 30 features) is read on the event loop; a bigger
# one, or a malformed one read cell by cell, would hold /health too (bench/BENCHMARKS.md).
CSV_ON_THE_LOOP_BYTES = 256 * 1024

OPENAPI_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
            "text/csv": {
                "schema": {"type": "string"},
                "example": "mean_radius,mean_texture,...\n14.1,19.3,...\n",
            },
        },
    }
}


async def answer(plane: DataPlane, headers: Headers, body: bytes) -> bytes:
    """The whole of ``POST /predict``: the request's headers and body in, the JSON answer out
    (errors raise ``MLPlatformError``). Served by ``hotpath.HotRoutes`` ahead of FastAPI's
    router; the route below is the same function, for the OpenAPI document."""
    content_type = headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type == "text/csv":
        served, field = plane.served, "csv"  # ModelNotReady before parsing
        args = (body, served.features, plane.max_rows, Table.of(served))
        if len(body) < CSV_ON_THE_LOOP_BYTES:
            X = csv_rows.decode(*args)
        else:
            X = await run_in_threadpool(csv_rows.decode, *args)
    elif content_type in ("application/json", ""):
        X, field = json_rows.decode(body, plane.served, plane.max_rows)
    else:
        raise UnsupportedMediaType(
            f"content-type: {content_type!r:.60} is not supported; send application/json "
            "or text/csv"
        )
    result, ids = await plane.infer(X, field)
    return json_rows.encode(result, ids)


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses={k: v for k, v in ERRORS.items() if k in (413, 415, 422, 503)},
    openapi_extra=OPENAPI_BODY,
    summary="Predict one row, many rows, or CSV rows",
)
async def predict(request: Request) -> Response:
    """Run the whole pipeline (embedding + classifier) on each row.

    Send `{"features": {...}}`, `{"instances": [{...}, ...]}`, or `text/csv` rows (with or
    without a header line). Every row gets a `prediction_id` to use with `/feedback`.
    """
    plane: DataPlane = request.app.state.service.plane
    content = await answer(plane, request.headers, await request.body())
    return Response(content, media_type="application/json")
