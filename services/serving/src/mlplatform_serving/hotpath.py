"""The prediction routes, dispatched ahead of FastAPI's router.

``POST /predict`` and ``POST /v2/models/{name}/infer`` are answered here from the request's
headers and body by the same functions their FastAPI routes call (``predict.answer``,
``v2.infer_answer``), errors by the same function as the app's exception handlers
(``errors.response_for``). Going through the router, its dependency resolution and the
request and response objects cost more than validating and predicting one row did
(bench/BENCHMARKS.md). Every other path, and the OpenAPI document, stay with FastAPI.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from mlplatform_common.errors import MLPlatformError
from mlplatform_serving.dataplane import DataPlane
from mlplatform_serving.errors import response_for
from mlplatform_serving.routes import predict, v2
from mlplatform_serving.schemas import Reply

logger = logging.getLogger("mlplatform.serving")

Handler = Callable[[DataPlane, str, Headers, bytes], Awaitable[Reply]]


async def _predict(plane: DataPlane, _: str, headers: Headers, body: bytes) -> Reply:
    return Reply(await predict.answer(plane, headers, body))


def route_path(scope: Scope) -> str:
    """The path the router matches: without the app's ``root_path`` prefix."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root + "/"):
        return path[len(root) :]
    return path


class HotRoutes:
    """An ASGI middleware answering the prediction routes itself (see the module docstring).

    It sets ``scope["route"]`` to the FastAPI route it stands for, so request metrics carry
    the same route template either way.
    """

    def __init__(self, app: ASGIApp, plane: DataPlane, routes: dict[str, Any]) -> None:
        self.app = app
        self.plane = plane
        self.predict_route = routes["/predict"]
        self.infer_route = routes["/v2/models/{name}/infer"]

    def match(self, scope: Scope) -> tuple[Handler, Any, str] | None:
        """The handler, its FastAPI route and the path's model name, or None."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        path = route_path(scope)
        if path == "/predict":
            return _predict, self.predict_route, ""
        if path.startswith("/v2/models/") and path.endswith("/infer"):
            name = path[len("/v2/models/") : -len("/infer")]
            if name and "/" not in name:
                return v2.infer_answer, self.infer_route, name
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hit = self.match(scope)
        if hit is None:
            await self.app(scope, receive, send)
            return
        handler, scope["route"], name = hit
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            answer = await handler(self.plane, name, Headers(scope=scope), body)
        except Exception as exc:
            if not isinstance(exc, MLPlatformError):
                logger.exception("unhandled error on POST %s", scope["path"])
            await response_for(exc)(scope, receive, send)
            return
        content = answer.body
        headers = [(k.encode(), v.encode()) for k, v in answer.headers()]
        headers.append((b"content-length", str(len(content)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": content})
