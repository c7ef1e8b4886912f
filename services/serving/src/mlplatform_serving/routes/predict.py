"""POST /predict: JSON (one row or many) or text/csv."""

from __future__ import annotations

import json
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers

from mlplatform_common.errors import InvalidInput
from mlplatform_serving.schemas import ERRORS, PredictRequest, PredictResponse
from mlplatform_serving.service import Service

router = APIRouter(tags=["predict"])

CSV_ON_THE_LOOP_BYTES = 256 * 1024  # ~1,200 rows of 30 features: ~1.5 ms (more if malformed)

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


def loads(body: bytes) -> Any:
    """Parse JSON fast (orjson); on failure, re-parse with the standard library only to word
    the error (it also reads NaN and huge integers, which validation then names)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except RecursionError:
        raise InvalidInput("body: JSON nested too deeply") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"body: not valid JSON ({exc})") from None
    except ValueError:  # an integer literal past Python's 4300-digit conversion limit
        raise InvalidInput("body: a number has too many digits") from None


def parse_json(body: bytes) -> Any:
    """Parse a JSON body with errors a client can act on."""
    if not body.strip():
        raise InvalidInput("body: empty; send a JSON object")
    return loads(body)


async def read_json(request: Request) -> Any:
    return parse_json(await request.body())


def parse_model(model: type[Any], data: Any) -> Any:
    """Validate with pydantic, naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise InvalidInput(f"{where}: {err['msg']}") from None


async def answer(service: Service, headers: Headers, body: bytes) -> bytes:
    """The whole of ``POST /predict``: the request's headers and body in, the JSON answer out
    (errors raise ``MLPlatformError``). Served by ``hotpath.HotRoutes`` ahead of FastAPI's
    router; the route below is the same function, for the OpenAPI document."""
    runtime = service.runtime
    content_type = headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type == "text/csv":
        runtime.served  # noqa: B018 - raises ModelNotReady before parsing
        limit = service.settings.max_batch_rows
        if len(body) < CSV_ON_THE_LOOP_BYTES:
            X = runtime.parse_csv(body, limit)
        else:  # a big body (or a malformed one, read cell by cell) would hold /health too
            X = await run_in_threadpool(runtime.parse_csv, body, limit)
        service.check_batch(len(X), "csv")
    elif content_type in ("application/json", "") and (fast := runtime.decode_json(body)):
        X, field = fast
        service.check_batch(len(X), field)
    elif content_type in ("application/json", ""):
        data = parse_json(body)
        # The envelope's shape is checked by hand: pydantic would copy every row of a batch
        # before validate_rows reads them again. Any other shape gets pydantic's exact error.
        one = type(data) is dict and len(data) == 1
        features: dict[str, Any] | None
        instances: list[Any] | None
        if one and type(data.get("features")) is dict:
            features, instances = data["features"], None
        elif one and type(data.get("instances")) is list:
            features, instances = None, data["instances"]
        else:
            req = parse_model(PredictRequest, data)
            features, instances = req.features, req.instances
        if (features is None) == (instances is None):
            raise InvalidInput("body: give exactly one of 'features' (one row) or 'instances'")
        if features is not None:
            X = runtime.validate_rows([features], field="features")
        elif instances is not None:
            service.check_batch(len(instances))
            X = runtime.validate_rows(instances)
    else:
        raise InvalidInput(
            f"content-type: {content_type!r:.60} is not supported; use application/json or text/csv"
        )
    await service.log.make_room()
    result, ids = await service.predict_batched(X)
    return orjson.dumps(
        {
            "model_version": result.served.version,
            "engine": result.served.engine.name,
            "backup": result.backup,
            "predictions": service.answers(result, ids),
        }
    )


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
    service: Service = request.app.state.service
    content = await answer(service, request.headers, await request.body())
    return Response(content, media_type="application/json")
