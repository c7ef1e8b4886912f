"""Open Inference Protocol v2 (KServe, Triton and MLServer clients work unchanged): the
server's and the model's metadata and health, and inference (its tensors: ``codecs/v2``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.datastructures import Headers

from mlplatform_common.errors import ModelNotFound
from mlplatform_common.schema import is_category
from mlplatform_serving.codecs import v2 as codec
from mlplatform_serving.codecs.v2 import label_datatype
from mlplatform_serving.dataplane import DataPlane
from mlplatform_serving.deps import RuntimeDep, SettingsDep
from mlplatform_serving.runtime import ModelRuntime
from mlplatform_serving.schemas import ERRORS, Reply
from mlplatform_serving.settings import ServingSettings

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])


def _check_name(name: str, settings: SettingsDep) -> None:
    if name != settings.model_name:
        raise ModelNotFound(
            f"model {name!r:.80} does not exist; this server has {settings.model_name!r}"
        )


def _check_version(
    name: str, version: str, settings: ServingSettings, runtime: ModelRuntime
) -> None:
    """The versioned paths answer for the model being served, in its version only."""
    _check_name(name, settings)
    served = runtime.model.version
    if version != served:
        raise ModelNotFound(
            f"model {name!r:.80} version {version!r:.40} is not served here; this server serves "
            f"{served}"
        )


@router.get("/health/live", summary="Server live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", responses={503: ERRORS[503]}, summary="Server ready")
async def ready(runtime: RuntimeDep) -> dict[str, bool]:
    runtime.served  # noqa: B018 - raises ModelNotReady (503) with the reason
    return {"ready": True}


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": "mlplatform", "version": "0.1.0", "extensions": ["binary_tensor_data"]}


@router.get(
    "/models/{name}", responses={404: ERRORS[404], 503: ERRORS[503]}, summary="Model metadata"
)
async def model_metadata(name: str, runtime: RuntimeDep, settings: SettingsDep) -> dict[str, Any]:
    _check_name(name, settings)
    served = runtime.served
    model = served.model
    n = len(model.features)
    if served.category_columns:  # one input per feature (a single tensor holds numbers only)
        inputs = [
            {
                "name": spec["name"],
                "datatype": "BYTES" if is_category(spec) else "FP64",
                "shape": [-1],
            }
            for spec in model.manifest["feature_schema"]
        ]
    else:
        inputs = [{"name": "input-0", "datatype": "FP64", "shape": [-1, n]}]
    if served.regression:
        outputs = [{"name": "predict", "datatype": "FP64", "shape": [-1]}]
    else:
        outputs = [
            {"name": "label", "datatype": label_datatype(model.classes), "shape": [-1]},
            {"name": "probabilities", "datatype": "FP64", "shape": [-1, len(model.classes)]},
        ]
    return {
        "name": name,
        "versions": [model.version],
        "platform": "sklearn",
        "inputs": inputs,
        "outputs": [*outputs, {"name": "prediction_id", "datatype": "BYTES", "shape": [-1]}],
        "parameters": {
            "task": served.task,
            "features": model.features,
            "classes": model.classes,
        },
    }


@router.get(
    "/models/{name}/ready", responses={404: ERRORS[404], 503: ERRORS[503]}, summary="Model ready"
)
async def model_ready(name: str, runtime: RuntimeDep, settings: SettingsDep) -> dict[str, Any]:
    _check_name(name, settings)
    return {"name": name, "ready": True, "version": runtime.model.version}


# The versioned paths of the protocol answer for the version being served only.
@router.get("/models/{name}/versions/{version}", include_in_schema=False)
async def version_metadata(
    name: str, version: str, runtime: RuntimeDep, settings: SettingsDep
) -> dict[str, Any]:
    _check_version(name, version, settings, runtime)
    return await model_metadata(name, runtime, settings)


@router.get("/models/{name}/versions/{version}/ready", include_in_schema=False)
async def version_ready(
    name: str, version: str, runtime: RuntimeDep, settings: SettingsDep
) -> dict[str, Any]:
    _check_version(name, version, settings, runtime)
    return await model_ready(name, runtime, settings)


async def infer_answer(plane: DataPlane, name: str, headers: Headers, body: bytes) -> Reply:
    """The whole of ``POST /v2/models/{name}/infer``: headers and body in, the answer out (JSON,
    or with the binary tensor extension a JSON header and the outputs' bytes; errors raise
    ``MLPlatformError``). Served by ``hotpath.HotRoutes`` ahead of FastAPI's
    router; the routes below are the same function, for OpenAPI and the versioned path."""
    _check_name(name, plane.settings)
    request = codec.decode(headers, body, lambda: plane.served, plane.max_rows)
    result, ids = await plane.infer(request.X, request.field)
    return codec.encode(request, name, result, ids)


@router.post(
    "/models/{name}/infer",
    responses={k: v for k, v in ERRORS.items() if k in (404, 413, 415, 422, 503)},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/V2Request"}}},
        }
    },
    summary="Inference",
)
async def infer(name: str, request: Request) -> Response:
    """Predict an ``[n, n_features]`` FP32/FP64 tensor, or one input per feature (BYTES for
    a category)."""
    plane: DataPlane = request.app.state.service.plane
    answer = await infer_answer(plane, name, request.headers, await request.body())
    return Response(answer.body, headers=dict(answer.headers()))


@router.post("/models/{name}/versions/{version}/infer", include_in_schema=False)
async def version_infer(name: str, version: str, request: Request) -> Response:
    plane: DataPlane = request.app.state.service.plane
    _check_version(name, version, plane.settings, plane.runtime)
    return await infer(name, request)
