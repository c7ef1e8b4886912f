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
) -> None:
    """Bearer-token check and rate of the endpoints that write training data: the writer
    token or the admin token, then one token from that key's bucket (429 over it). Runs
    before the body is read, so a refused request stores nothing."""
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
    wait = service.write_limit.take(matched)
    if wait:
        limit = service.write_limit
        raise TooManyRequests(
            f"the {matched} key is over its write rate ({limit.rate:g}/s, burst "
            f"{limit.burst:g}); nothing was stored, retry in {max(1, math.ceil(wait))} s",
            retry_after=max(1, math.ceil(wait)),
        )
