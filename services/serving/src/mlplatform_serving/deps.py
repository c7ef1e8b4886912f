"""Typed dependencies: the runtime and friends live on ``app.state``.

They are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its threadpool,
and a thread hop per dependency per request cost more than the whole prediction.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, Request

from mlplatform_common.errors import Unauthorized
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


async def require_admin(request: Request, settings: SettingsDep) -> None:
    """Bearer-token check of ``/admin/*``."""
    token = settings.require_admin_token()
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        raise Unauthorized("missing or wrong bearer token (Authorization: Bearer <admin token>)")
