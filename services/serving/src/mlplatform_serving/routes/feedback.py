"""POST /feedback: the true label of a prediction."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from mlplatform_serving.codecs.common import parse_model
from mlplatform_serving.deps import ServiceDep, read_json, require_writer
from mlplatform_serving.schemas import ERRORS, FeedbackRequest, FeedbackResponse

router = APIRouter(tags=["feedback"])


@router.post(
    "/feedback",
    status_code=201,
    response_model=FeedbackResponse,
    dependencies=[Depends(require_writer)],
    responses={k: v for k, v in ERRORS.items() if k in (401, 404, 409, 413, 415, 422, 429, 503)},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/FeedbackRequest"}}
            },
        }
    },
    summary="Give the true label of a prediction",
)
async def feedback(request: Request, service: ServiceDep) -> dict[str, Any]:
    """Send `{"prediction_id", "target"}` for an earlier prediction, or
    `{"features", "prediction", "target"}` for a row given in full. Answers 201 once the
    labelled row is durably in the store. Needs `Authorization: Bearer <writer token>` (or the
    admin token); each key may write `MLPLATFORM_FEEDBACK_RATE` rows a second after a burst
    of `MLPLATFORM_FEEDBACK_BURST`, and gets 429 with `Retry-After` over them."""
    req: FeedbackRequest = parse_model(FeedbackRequest, await read_json(request))
    # Store I/O: in the threadpool, so a slow store never stalls the event loop.
    return await run_in_threadpool(
        service.feedback.record, req.target, req.prediction_id, req.features, req.prediction
    )
