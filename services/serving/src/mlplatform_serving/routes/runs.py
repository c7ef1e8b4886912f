"""GET /retrain-runs: the retrainer's run records, newest first, a page at a time."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from mlplatform_common import keys
from mlplatform_common.runs import newest_runs
from mlplatform_serving.deps import ServiceDep
from mlplatform_serving.schemas import ERRORS, RetrainRunsPage

router = APIRouter(tags=["retrain"])


@router.get(
    "/retrain-runs",
    response_model=RetrainRunsPage,
    responses={k: v for k, v in ERRORS.items() if k in (422, 503)},
    summary="Retrain runs",
)
async def retrain_runs(
    service: ServiceDep,
    limit: Annotated[int, Query(ge=1, le=100, description="Runs per page")] = 20,
    before: Annotated[
        str | None,
        Query(
            pattern=keys.RETRAIN_RUN_STAMP,
            description="The `next` of the previous page: runs older than this one",
        ),
    ] = None,
) -> dict[str, Any]:
    """Each retrainer run as it recorded it (outcome, reasons, the version it made, the
    gate's numbers), with its `id`, newest first; `next` is the `before` of the next page,
    null on the last one. Empty before the first run."""
    runs, cursor = await run_in_threadpool(newest_runs, service.store, limit, before)
    return {"runs": runs, "next": cursor}
