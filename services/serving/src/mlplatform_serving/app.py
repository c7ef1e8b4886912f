"""The serving API: ``create_app`` builds the FastAPI app; the lifespan loads the model."""

from __future__ import annotations

import copy
import csv
import io
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlplatform_common import datasets
from mlplatform_common.errors import InvalidInput, MLPlatformError
from mlplatform_common.registry import LoadedModel
from mlplatform_common.schema import REGRESSION, is_category
from mlplatform_common.storage import Store, open_store
from mlplatform_serving import observability as obs
from mlplatform_serving import process
from mlplatform_serving.codecs.v2 import V2Request
from mlplatform_serving.errors import error_response, response_for
from mlplatform_serving.hotpath import HotRoutes
from mlplatform_serving.launcher import make_launcher
from mlplatform_serving.routes import (
    admin,
    feedback,
    health,
    metrics,
    models,
    predict,
    runs,
    v2,
)
from mlplatform_serving.routes import uploads as upload_routes
from mlplatform_serving.runtime import task_of
from mlplatform_serving.schemas import (
    FeedbackBatchRequest,
    FeedbackRequest,
    PredictRequest,
    PromoteRequest,
    ReloadRequest,
    TrainRequest,
)
from mlplatform_serving.service import Service
from mlplatform_serving.settings import ServingSettings, get_settings

logger = logging.getLogger("mlplatform.serving")


class RootPath:
    """Serve under a path prefix that the proxy does not strip (the chart's ingress forwards
    ``/api/...`` as it is), and answer the bare paths too (probes, Prometheus). This is what
    FastAPI's deprecated ``root_path`` argument did; uvicorn's ``--root-path`` is for proxies
    that strip the prefix (it prepends it to every path)."""

    def __init__(self, app: ASGIApp, root_path: str) -> None:
        self.app = app
        self.root_path = root_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope["root_path"] = self.root_path
        await self.app(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


class ObservabilityMiddleware:
    """Counts and times every request by route template, enforces the body size limit, and
    refuses compressed bodies (415): no route reads them.

    A plain ASGI middleware (not ``BaseHTTPMiddleware``) to stay cheap on the hot path.
    """

    def __init__(
        self,
        app: ASGIApp,
        stats: obs.RollingStats,
        max_body_bytes: int,
        path_limits: dict[str, tuple[int, str]] | None = None,
    ) -> None:
        self.app = app
        self.stats = stats
        self.max_body = max_body_bytes
        # Routes with their own, larger bound (a data set upload), enforced by the route as
        # it reads; here only as a backstop.
        self.path_limits = path_limits or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
            await send(message)

        received = 0
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root + "/"):
            path = path[len(root) :]  # behind the ingress: /api/admin/datasets
        max_body, too_large = self.path_limits.get(
            path, (self.max_body, f"body: over the limit of {self.max_body} bytes")
        )

        async def receive_wrapper() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_body:
                    raise _BodyTooLarge
            return message

        try:
            headers = dict(scope["headers"])
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > max_body:
                raise _BodyTooLarge
            encoding = headers.get(b"content-encoding", b"").strip().lower()
            if encoding not in (b"", b"identity"):
                status = 415
                message = (
                    f"content-encoding: {encoding.decode('latin-1')!r:.40} is not supported; "
                    "send the body uncompressed"
                )
                await error_response(415, message, "UnsupportedMediaType")(scope, receive, send)
                return
            await self.app(scope, receive_wrapper, send_wrapper)
        except _BodyTooLarge:
            if not response_started:
                status = 413
                await error_response(413, too_large, "PayloadTooLarge")(scope, receive, send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            duration = time.perf_counter() - started
            method = scope.get("method", "GET")
            obs.child(obs.HTTP_REQUESTS, template, method, str(status)).inc()
            obs.child(obs.HTTP_DURATION, template, method).observe(duration)
            self.stats.request(duration, status)


def add_body_schemas(schema: dict[str, Any], models: tuple[type[BaseModel], ...]) -> None:
    """Define the request bodies that routes parse themselves (JSON or CSV, binary tensors),
    which their ``openapi_extra`` refers to, under ``components.schemas``."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in models:
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in body.pop("$defs", {}).items():
            components.setdefault(name, sub)
        components.setdefault(model.__name__, body)


def _example(spec: dict[str, Any], stat: str) -> Any:
    """A feature's example value: a number's statistic, a category's most common value."""
    if is_category(spec):
        shares = spec.get("shares") or [1.0] * len(spec["categories"])
        return spec["categories"][max(range(len(shares)), key=shares.__getitem__)]
    return round(spec[stat], 4)


def with_model_examples(
    schema: dict[str, Any], model: LoadedModel | None, model_name: str
) -> dict[str, Any]:
    """The OpenAPI document with request examples of ``model``'s features (two rows of its
    training data's medians and means), so that /docs' "Try it out" sends a body the model
    accepts as it is. Without a model, the document as it is (with placeholder rows)."""
    if model is None:
        return schema
    doc = copy.deepcopy(schema)
    stats = model.manifest["feature_schema"]
    rows = [{f["name"]: _example(f, stat) for f in stats} for stat in ("median", "mean")]
    classes = model.classes
    regression = task_of(model.manifest) == REGRESSION
    first: Any = 1.0 if regression else classes[0]
    names = [str(n) for n in model.manifest.get("class_names") or classes]
    components = doc["components"]["schemas"]
    properties = components["PredictRequest"]["properties"]
    properties["features"]["examples"] = [rows[0]]
    properties["instances"]["examples"] = [rows]
    components["FeedbackRequest"]["properties"]["features"]["examples"] = [rows[0]]
    components["FeedbackRequest"]["properties"]["target"]["examples"] = [first]
    answer = components["RowPrediction"]["properties"]
    if not regression:
        answer["label"]["examples"] = [first]
        answer["label_name"]["examples"] = [names[0]]
        answer["probabilities"]["examples"] = [
            {str(c): round(1 / len(classes), 2) for c in classes}
        ]
    answer["model_version"]["examples"] = [model.version]

    def body(path: str, media: str = "application/json") -> dict[str, Any]:
        content: dict[str, Any] = doc["paths"][path]["post"]["requestBody"]["content"][media]
        return content

    body("/predict")["examples"] = {
        "one row": {"value": {"features": rows[0]}},
        "many rows": {"value": {"instances": rows}},
    }
    csv_text = io.StringIO()
    csv.writer(csv_text, lineterminator="\n").writerows([rows[0], *(r.values() for r in rows)])
    body("/predict", "text/csv")["example"] = csv_text.getvalue()
    body("/feedback")["examples"] = {  # by prediction_id: an id only /predict can give
        "a row in full": {"value": {"features": rows[0], "prediction": first, "target": first}},
    }
    if any(is_category(f) for f in stats):  # one input per feature
        inputs = [
            {
                "name": f["name"],
                "shape": [len(rows)],
                "datatype": "BYTES" if is_category(f) else "FP64",
                "data": [r[f["name"]] for r in rows],
            }
            for f in stats
        ]
    else:
        tensor = {"name": "input-0", "shape": [len(rows), len(stats)], "datatype": "FP64"}
        inputs = [{**tensor, "data": [list(r.values()) for r in rows]}]
    body("/v2/models/{name}/infer")["example"] = {"inputs": inputs}
    for path, operations in doc["paths"].items():
        for operation in operations.values() if path.startswith("/v2/models/{name}") else ():
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "name":
                    parameter["example"] = model_name
    return doc


def create_app(settings: ServingSettings | None = None, store: Store | None = None) -> FastAPI:
    """Build the app; the model is loaded when the lifespan starts.

    Args:
        settings: defaults to the environment (``get_settings()``).
        store: defaults to the store named by ``settings.store_url``.
    """
    settings = settings or get_settings()
    service = Service(settings, store or open_store(settings))
    service.retrain_launcher = make_launcher(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        process.tune()  # here: the lifespan runs in every uvicorn worker process
        service.start()
        yield
        service.stop()

    app = FastAPI(
        title="mlplatform serving API",
        version="0.1.0",
        description=(
            "Predictions, feedback with the true label, model versions, reports and metrics. "
            'Errors are `{"error": ..., "type": ...}` and name the field.'
        ),
        lifespan=lifespan,
        telemetry=None  # FastAPI's default: on when a provider is configured
        if settings.opentelemetry
        else {"tracing": False, "metrics": False, "logs": False},
    )
    app.state.service = service

    @app.exception_handler(MLPlatformError)
    async def platform_error(_: Request, exc: MLPlatformError) -> Response:
        return response_for(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        err: dict[str, Any] = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "request"
        return response_for(InvalidInput(f"{where}: {err.get('msg')}"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return error_response(exc.status_code, str(exc.detail), "HTTPException", exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return response_for(exc)

    for module in (predict, feedback, models, runs, health, metrics, admin, upload_routes, v2):
        app.include_router(module.router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            add_body_schemas(
                FastAPI.openapi(app),
                (
                    PredictRequest,
                    FeedbackRequest,
                    FeedbackBatchRequest,
                    ReloadRequest,
                    PromoteRequest,
                    TrainRequest,
                    V2Request,
                ),
            )
            # Each item is validated on its own (a bad one fails alone), so the model takes
            # any object; the document shows what an item holds.
            batch = app.openapi_schema["components"]["schemas"]["FeedbackBatchRequest"]  # type: ignore[index]
            batch["properties"]["items"]["items"] = {"$ref": "#/components/schemas/FeedbackRequest"}
        schema: dict[str, Any] = app.openapi_schema  # type: ignore[assignment]
        model = service.runtime.model if service.runtime.ready else None
        try:
            return with_model_examples(schema, model, settings.model_name)
        except (KeyError, TypeError, ValueError) as exc:  # a manifest without feature stats
            logger.warning("OpenAPI examples left as placeholders: %r", exc)
            return schema

    app.openapi = openapi  # type: ignore[method-assign]
    # Added first, so it runs inside the observability middleware (counted and timed).
    routes = {route.path: route for m in (predict, v2) for route in m.router.routes}
    app.add_middleware(HotRoutes, plane=service.plane, routes=routes)
    app.add_middleware(
        ObservabilityMiddleware,
        stats=service.stats,
        max_body_bytes=settings.max_body_bytes,
        path_limits={
            f"{admin.router.prefix}/datasets": (
                datasets.max_bytes(settings.dataset_max_mb),
                datasets.too_large(settings.dataset_max_mb).message,
            ),
            upload_routes.router.prefix: (
                datasets.max_bytes(settings.model_upload_max_mb),
                f"body: over the limit of {settings.model_upload_max_mb:g} MB for a model and "
                "its reference data (MLPLATFORM_MODEL_UPLOAD_MAX_MB); nothing stored",
            ),
        },
    )
    if settings.root_path:
        app.add_middleware(RootPath, root_path=settings.root_path)
    return app
