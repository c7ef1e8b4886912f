"""POST /feedback: the true label of a prediction, or of many at once."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from mlplatform_common.errors import InvalidInput, PayloadTooLarge
from mlplatform_serving.codecs.common import parse_model
from mlplatform_serving.deps import ServiceDep, WriterKey, read_json, take_writes
from mlplatform_serving.schemas import (
    ERRORS,
    FeedbackBatchRequest,
    FeedbackBatchResponse,
    FeedbackRequest,
    FeedbackResponse,
)

router = APIRouter(tags=["feedback"])

_BODY = {"$ref": "#/components/schemas/FeedbackRequest"}
_BATCH = {"$ref": "#/components/schemas/FeedbackBatchRequest"}


@router.post(
    "/feedback",
    status_code=201,
    response_model=FeedbackResponse,
    responses={
        201: {
            "description": "Stored: one row (FeedbackResponse), or every row of a batch "
            "(FeedbackBatchResponse)",
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            {"$ref": "#/components/schemas/FeedbackResponse"},
                            {"$ref": "#/components/schemas/FeedbackBatchResponse"},
                        ]
                    }
                }
            },
        },
        207: {
            "model": FeedbackBatchResponse,
            "description": "A batch of which some rows were not stored (each says why)",
        },
        **{k: v for k, v in ERRORS.items() if k in (401, 404, 409, 413, 415, 422, 429, 503)},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"oneOf": [_BODY, _BATCH]}}},
        }
    },
    summary="Give the true label of a prediction, or of many",
)
async def feedback(request: Request, service: ServiceDep, key: WriterKey) -> Any:
    """Send `{"prediction_id", "target"}` for an earlier prediction, or
    `{"features", "prediction", "target"}` for a row given in full. Answers 201 once the
    labelled row is durably in the store.

    A batch, `{"items": [<either form>, ...]}` of at most `MLPLATFORM_FEEDBACK_BATCH_MAX`
    rows (413 over it), stores each row whole or not at all and answers each in `results`:
    201 when all were stored, 207 when some were not (the others are stored).

    Needs `Authorization: Bearer <writer token>` (or the admin token); each key may write
    `MLPLATFORM_FEEDBACK_RATE` rows a second after a burst of `MLPLATFORM_FEEDBACK_BURST`
    (a batch counts as its rows), and gets 429 with `Retry-After` over them."""
    data = await read_json(request)
    if type(data) is list:  # rows without the envelope: pydantic's "valid dictionary" says less
        raise InvalidInput('body: a JSON array; send {"items": [...]} for many rows')
    if type(data) is dict and "items" in data:
        items = data["items"]
        limit = service.settings.feedback_batch_max
        if type(items) is list and len(items) > limit:
            raise PayloadTooLarge(
                f"items: {len(items)} rows is over the limit of {limit} per batch "
                "(MLPLATFORM_FEEDBACK_BATCH_MAX); send them in several batches"
            )
        batch: FeedbackBatchRequest = parse_model(FeedbackBatchRequest, data)
        take_writes(service, key, len(batch.items))
        # Store I/O: in the threadpool, so a slow store never stalls the event loop.
        answer = await run_in_threadpool(service.feedback.record_batch, batch.items)
        return JSONResponse(answer, status_code=207 if answer["failed"] else 201)
    take_writes(service, key, 1)
    req: FeedbackRequest = parse_model(FeedbackRequest, data)
    return await run_in_threadpool(
        service.feedback.record, req.target, req.prediction_id, req.features, req.prediction
    )
