"""GET /metrics (Prometheus) and the JSON summaries under /metrics/*."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from mlplatform_serving import observability as obs
from mlplatform_serving.deps import RuntimeDep, ServiceDep
from mlplatform_serving.schemas import ERRORS, Page

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response, summary="Prometheus exposition")
def metrics() -> Response:
    """Every metric serving owns (docs/architecture.md, "Metric names"), across worker
    processes."""
    body, content_type = obs.exposition()
    return Response(body, media_type=content_type)


@router.get("/metrics/model", responses={503: ERRORS[503]}, summary="Model quality")
def model_metrics(runtime: RuntimeDep, service: ServiceDep) -> dict[str, Any]:
    """Training metrics of the served version and the latest report's numbers."""
    manifest = runtime.model.manifest
    latest = service.reports(limit=1)
    return {
        "model_version": manifest["version"],
        "training": manifest.get("metrics", {}),
        "latest_report": latest[0] if latest else None,
    }


@router.get("/metrics/system", summary="Latency, error rate, throughput")
def system_metrics(
    service: ServiceDep, window_seconds: Annotated[float, Query(gt=0, le=86_400)] = 300
) -> dict[str, Any]:
    """This process's recent requests: p50/p95/p99 latency, 5xx rate, requests per second."""
    return {
        **service.stats.system(window_seconds),
        "prediction_log": {
            "pending_rows": service.log.pending_rows,
            "written_rows": service.log.written_rows,
            "dropped_rows": service.log.dropped_rows,
        },
    }


@router.get("/metrics/kpis", responses={503: ERRORS[503]}, summary="Business KPIs")
def kpis(runtime: RuntimeDep, service: ServiceDep) -> dict[str, Any]:
    """Prediction volume (in all and per model version, since this process started), class
    mix, confidence, backup use, labelled rows since training."""
    return {
        "model_version": runtime.model.version,
        **service.stats.kpis(),
        "low_confidence_threshold": service.settings.low_confidence_threshold,
        "labelled_since_training": service.feedback.labelled_since_training(),
    }


@router.get(
    "/metrics/feature-distribution",
    response_model=Page,
    responses={503: ERRORS[503]},
    summary="Per-feature reference vs recent",
)
def feature_distribution(
    service: ServiceDep,
    page: Annotated[int, Query(ge=1)] = 1,
    page_size: Annotated[int, Query(ge=1, le=100)] = 10,
) -> dict[str, Any]:
    """Reference statistics (training data) beside recent inputs, one page of features."""
    return service.feature_distribution(page, page_size)
