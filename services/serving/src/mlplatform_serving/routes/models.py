"""GET /model, /models, /models/names, /reports: what is served and what the reporter archived."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, Response

from mlplatform_common.storage import model_names
from mlplatform_serving.deps import RuntimeDep, ServiceDep
from mlplatform_serving.schemas import ERRORS, ModelNames, ReportEntry

router = APIRouter(tags=["models"])


def card(manifest: dict[str, Any]) -> dict[str, Any]:
    """A manifest without its checksums and signature."""
    return {k: v for k, v in manifest.items() if k not in ("files", "signature")}


@router.get("/model", responses={503: ERRORS[503]}, summary="The model being served")
def model(runtime: RuntimeDep, service: ServiceDep) -> dict[str, Any]:
    """The served version's card: task, typed feature schema, classes, metrics, lineage."""
    alias = service.registry.production()
    return {
        "name": service.settings.model_name,
        **card(runtime.model.manifest),
        "task": runtime.served.task,  # versions from before tasks were classifiers
        "production_version": alias["version"] if alias else None,
        "pinned": runtime.pinned_version is not None,
        "engine": runtime.engine,
    }


@router.get("/models", summary="Every published version")
def models(service: ServiceDep, runtime: RuntimeDep) -> dict[str, Any]:
    """Version history with metrics, oldest first, and which one is in production."""
    alias = service.registry.production()
    return {
        "name": service.settings.model_name,
        "production": alias,
        "serving": runtime.version,
        "versions": [card(m) for m in service.registry.list_versions()],
    }


@router.get("/models/names", response_model=ModelNames, summary="The named models in the store")
def names(service: ServiceDep) -> dict[str, Any]:
    """Every named model with objects in the store this server reads (releases sharing a
    store each serve one), and the one this server serves. A listing of the store per call:
    for pages, not for the hot path."""
    return {"serving": service.settings.model_name, "names": model_names(service.store)}


@router.get("/reports", response_model=list[ReportEntry], tags=["reports"], summary="Reports")
def reports(
    service: ServiceDep, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[dict[str, Any]]:
    """The reporter's archive, newest first (empty before the first report)."""
    return service.reports(limit)


@router.get(
    "/reports/{report_id}",
    response_class=HTMLResponse,
    # The error is JSON, as everywhere (not the route's HTML).
    responses={
        404: {
            "description": ERRORS[404]["description"],
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
            },
        }
    },
    tags=["reports"],
    summary="One report (HTML)",
)
def report(report_id: str, service: ServiceDep) -> Response:
    """The Evidently report as HTML."""
    return HTMLResponse(service.report_file(report_id, "report.html"))


@router.get(
    "/reports/{report_id}/summary",
    responses={404: ERRORS[404]},
    tags=["reports"],
    summary="One report's numbers",
)
def report_summary(report_id: str, service: ServiceDep) -> Response:
    """The numbers of one report (summary.json)."""
    return Response(service.report_file(report_id, "summary.json"), media_type="application/json")
