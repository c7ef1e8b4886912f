"""Typed dependencies: the runtime and friends live on ``app.state``.

They are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its threadpool,
and a thread hop per dependency per request cost more than the whole prediction.
"""

from __future__ import annotations

import hmac
import math
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import HTTPBearer

from mlplatform_common.errors import TooManyRequests, Unauthorized
from mlplatform_serving.codecs.common import parse_json
from mlplatform_serving.runtime import ModelRuntime
from mlplatform_serving.service import Service
from mlplatform_serving.settings import ServingSettings


async def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


async def get_runtime(request: Request) -> ModelRuntime:
    runtime: ModelRuntime = request.app.state.service.runtime
    return runtime


async def get_settings_dep(request: Request) -> ServingSettings:
    settings: ServingSettings = request.app.state.service.settings
    return settings


async def read_json(request: Request) -> Any:
    """A request's JSON body, with errors a client can act on."""
    return parse_json(await request.body())


ServiceDep = Annotated[Service, Depends(get_service)]
RuntimeDep = Annotated[ModelRuntime, Depends(get_runtime)]
SettingsDep = Annotated[ServingSettings, Depends(get_settings_dep)]


# Declared for the OpenAPI document (/docs' "Authorize" button) only: their own parsing strips
# the token, and the checks below take the header exactly as sent.
ADMIN_SCHEME = HTTPBearer(
    scheme_name="adminToken", description="MLPLATFORM_ADMIN_TOKEN", auto_error=False
)
WRITER_SCHEME = HTTPBearer(
    scheme_name="writerToken",
    description="MLPLATFORM_WRITER_TOKEN (the admin token is accepted too)",
    auto_error=False,
)


def _bearer(request: Request) -> bytes | None:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return given.encode() if scheme.lower() == "bearer" and given else None


async def require_admin(
    request: Request, settings: SettingsDep, _: Annotated[Any, Security(ADMIN_SCHEME)]
) -> None:
    """Bearer-token check of ``/admin/*``."""
    token = settings.require_admin_token()
    given = _bearer(request)
    if given is None or not hmac.compare_digest(given, token.encode()):
        raise Unauthorized("missing or wrong bearer token (Authorization: Bearer <admin token>)")


async def require_writer(
    request: Request, service: ServiceDep, _: Annotated[Any, Security(WRITER_SCHEME)]
) -> str:
    """Bearer-token check of the endpoints that write training data: the writer token or the
    admin token. Returns the key's name, whose rate the route takes (``take_writes``) once it
    knows how many rows the body carries, before anything is stored."""
    keys = service.settings.writer_keys()
    given = _bearer(request)
    if given is None:
        raise Unauthorized("missing bearer token (Authorization: Bearer <writer token>)")
    matched = None
    for name, token in keys.items():  # every key compared, so the timing names none
        if hmac.compare_digest(given, token.encode()):
            matched = name
    if matched is None:
        raise Unauthorized("wrong bearer token (Authorization: Bearer <writer token>)")
    return matched


WriterKey = Annotated[str, Depends(require_writer)]


def take_writes(service: Service, key: str, rows: int) -> None:
    """Take ``rows`` tokens from ``key``'s bucket, or raise 429 (``TooManyRequests``) with
    the seconds until they are there."""
    wait = service.write_limit.take(key, rows)
    if wait:
        limit = service.write_limit
        batch = f"a batch of {rows} rows is more than it holds now; " if rows > 1 else ""
        raise TooManyRequests(
            f"the {key} key is over its write rate ({limit.rate:g}/s, burst "
            f"{limit.burst:g}); {batch}nothing was stored, retry in "
            f"{max(1, math.ceil(wait))} s",
            retry_after=max(1, math.ceil(wait)),
        )
