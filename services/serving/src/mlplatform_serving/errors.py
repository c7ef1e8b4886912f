"""Every error the serving answers, in one body: ``{"error": ..., "type": ...}``
(``schemas.ErrorResponse``)."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from starlette.responses import Response

from mlplatform_common.errors import MLPlatformError


def error_response(
    status: int, message: str, type_: str, headers: Mapping[str, str] | None = None
) -> Response:
    """The one place an error body is built (exception handlers, middleware, hot path)."""
    body = orjson.dumps({"error": message, "type": type_})
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def response_for(exc: BaseException) -> Response:
    """An ``MLPlatformError``'s status, message, type and headers (``Retry-After``,
    ``WWW-Authenticate``); any other exception is a 500 whose details stay in the server log."""
    if isinstance(exc, MLPlatformError):
        return error_response(exc.status_code, exc.message, exc.type, exc.headers or None)
    return error_response(500, "internal error; see the server log", "InternalError")
