"""Open Inference Protocol v2 (KServe, Triton and MLServer clients work unchanged).

The model takes one FP32/FP64 tensor shaped ``[n, n_features]`` (features in the order of
``GET /model``) and answers ``label``, ``probabilities`` and ``prediction_id`` tensors. Both the
JSON form and the binary tensor extension (``Inference-Header-Content-Length``) are accepted, and
outputs are answered in binary when asked (``parameters.binary_data_output`` for all of them,
an output's ``parameters.binary_data`` for one).
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.datastructures import Headers

from mlplatform_common.errors import InvalidInput, ModelNotFound
from mlplatform_serving.deps import RuntimeDep, SettingsDep
from mlplatform_serving.routes.predict import loads, parse_model
from mlplatform_serving.runtime import ModelRuntime
from mlplatform_serving.schemas import ERRORS, Reply
from mlplatform_serving.service import Service
from mlplatform_serving.settings import ServingSettings

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])

OUTPUTS = ("label", "probabilities", "prediction_id")


class V2Tensor(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(max_length=256)
    shape: list[StrictInt]
    datatype: str = Field(max_length=16)
    parameters: dict[str, Any] | None = None
    data: Any = None


class V2Output(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(max_length=256)
    parameters: dict[str, Any] | None = None


class V2Request(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str | None = Field(default=None, max_length=256)
    parameters: dict[str, Any] | None = None
    inputs: list[V2Tensor]
    outputs: list[V2Output] | None = None


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


def label_datatype(classes: list[Any]) -> str:
    """The datatype of the ``label`` output, from the model's classes (JSON values): BYTES if
    a class is a string, BOOL if all are booleans, FP64 if one is a float, else INT64."""
    if any(isinstance(c, str) for c in classes):
        return "BYTES"
    if classes and all(isinstance(c, bool) for c in classes):
        return "BOOL"
    return "FP64" if any(isinstance(c, float) for c in classes) else "INT64"


@router.get(
    "/models/{name}", responses={404: ERRORS[404], 503: ERRORS[503]}, summary="Model metadata"
)
async def model_metadata(name: str, runtime: RuntimeDep, settings: SettingsDep) -> dict[str, Any]:
    _check_name(name, settings)
    model = runtime.model
    n = len(model.features)
    return {
        "name": name,
        "versions": [model.version],
        "platform": "sklearn",
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, n]}],
        "outputs": [
            {"name": "label", "datatype": label_datatype(model.classes), "shape": [-1]},
            {"name": "probabilities", "datatype": "FP64", "shape": [-1, len(model.classes)]},
            {"name": "prediction_id", "datatype": "BYTES", "shape": [-1]},
        ],
        "parameters": {"features": model.features, "classes": model.classes},
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


def _split_binary(request_headers: Any, body: bytes) -> tuple[Any, bytes]:
    """The JSON header and, with the binary tensor extension, the raw bytes after it."""
    header_len = request_headers.get("inference-header-content-length")
    if header_len is None:
        return loads(body), b""
    try:
        n = int(header_len)
        if not 0 < n <= len(body):
            raise ValueError
    except ValueError:
        raise InvalidInput(
            "inference-header-content-length: does not frame a JSON header"
        ) from None
    try:
        return loads(body[:n]), body[n:]
    except InvalidInput as exc:
        raise InvalidInput(
            f"inference-header-content-length: the first {n} bytes do not frame a JSON header "
            f"({exc.message})"
        ) from None


async def infer_answer(service: Service, name: str, headers: Headers, body: bytes) -> Reply:
    """The whole of ``POST /v2/models/{name}/infer``: headers and body in, the answer out (JSON,
    or with the binary tensor extension a JSON header and the outputs' bytes; errors raise
    ``MLPlatformError``). Served by ``hotpath.HotRoutes`` ahead of FastAPI's
    router; the routes below are the same function, for OpenAPI and the versioned path."""
    runtime = service.runtime
    _check_name(name, service.settings)
    payload, binary = _split_binary(headers, body)
    req: V2Request = parse_model(V2Request, payload)
    if len(req.inputs) != 1:
        raise InvalidInput(f"inputs: expected one tensor [n, n_features], got {len(req.inputs)}")
    tensor = req.inputs[0]
    data = tensor.data
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is not None and data is not None:
        raise InvalidInput(
            f"inputs[{tensor.name}]: give data or parameters.binary_data_size, not both"
        )
    if size is None and binary:
        raise InvalidInput(
            f"inputs[{tensor.name}]: {len(binary)} bytes follow the JSON header, but no input "
            "has parameters.binary_data_size"
        )
    if size is not None:
        dtype = {"FP32": "<f4", "FP64": "<f8"}.get(tensor.datatype)
        if dtype is None:
            raise InvalidInput(
                f"inputs[{tensor.name}].datatype: {tensor.datatype!r} is not supported; "
                "use FP32 or FP64"
            )
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(
                f"inputs[{tensor.name}].parameters.binary_data_size: must be a whole number of "
                f"bytes, got {size!r:.40}"
            )
        if size != len(binary):
            raise InvalidInput(
                f"inputs[{tensor.name}].parameters.binary_data_size: {size} bytes, but "
                f"{len(binary)} follow the JSON header"
            )
        if size % np.dtype(dtype).itemsize:
            raise InvalidInput(
                f"inputs[{tensor.name}]: binary data is not a whole number of {tensor.datatype}"
            )
        data = np.frombuffer(binary, dtype=dtype)
    elif data is None:
        raise InvalidInput(f"inputs[{tensor.name}].data: missing")
    X = runtime.tensor_rows(data, tensor.shape, tensor.datatype, tensor.name)
    service.check_batch(len(X), f"inputs[{tensor.name}]")
    wanted = [o.name for o in req.outputs] if req.outputs else list(OUTPUTS)
    unknown = [o for o in wanted if o not in OUTPUTS]
    if unknown:
        raise InvalidInput(
            f"outputs: unknown output {unknown[0]!r:.60}; choose from {list(OUTPUTS)}"
        )
    if len(set(wanted)) < len(wanted):
        raise InvalidInput("outputs: an output is asked for twice")
    every = _flag(req.parameters, "binary_data_output", "parameters", default=False)
    asked = {
        o.name: _flag(o.parameters, "binary_data", f"outputs[{o.name}].parameters", default=every)
        for o in req.outputs or ()
    }
    binary_outputs = {o for o in wanted if asked.get(o, every)}
    await service.log.make_room()
    result, ids = await service.predict_batched(X)
    classes = result.served.classes
    datatype = label_datatype(classes)
    # Columns go to orjson as arrays and the ids as one JSON text: no Python object per row.
    tensors: dict[str, dict[str, Any]] = {
        "label": {
            "name": "label",
            "datatype": datatype,
            "shape": [len(ids)],
            "data": [str(x) for x in result.labels]
            if datatype == "BYTES"
            else np.asarray(classes)[result.label_index],
        },
        "probabilities": {
            "name": "probabilities",
            "datatype": "FP64",
            "shape": list(result.proba.shape),
            "data": np.asarray(result.proba, dtype=np.float64).ravel(),
        },
        "prediction_id": {
            "name": "prediction_id",
            "datatype": "BYTES",
            "shape": [len(ids)],
            "data": orjson.Fragment(ids.json()),
        },
    }
    blobs = []
    for o in wanted if binary_outputs else ():
        if o in binary_outputs:
            data = tensors[o].pop("data")
            blob = _binary(tensors[o]["datatype"], ids if o == "prediction_id" else data)
            tensors[o]["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
    header = orjson.dumps(
        {
            "model_name": name,
            "model_version": result.served.version,
            "id": req.id,
            "parameters": {"backup": result.backup, "engine": result.served.engine.name},
            "outputs": [tensors[o] for o in wanted],
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    if not binary_outputs:
        return Reply(header)
    return Reply(b"".join([header, *blobs]), json_length=len(header))


def _flag(parameters: dict[str, Any] | None, key: str, where: str, default: bool) -> bool:
    """A boolean request parameter (``binary_data_output``, ``binary_data``)."""
    value = (parameters or {}).get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"{where}.{key}: must be true or false, got {value!r:.40}")
    return value


def _binary(datatype: str, data: Any) -> bytes:
    """A tensor's data in the binary tensor extension's layout: little-endian numbers, one
    byte per BOOL, and each BYTES element as its 4-byte length and then its bytes."""
    if datatype == "BYTES":
        encoded = [str(t).encode() for t in data]
        return b"".join(struct.pack("<I", len(e)) + e for e in encoded)
    dtype: Any = {"BOOL": np.bool_, "INT64": "<i8", "FP64": "<f8"}[datatype]
    return np.ascontiguousarray(data, dtype=dtype).tobytes()


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
    """Predict an ``[n, n_features]`` FP32/FP64 tensor."""
    service: Service = request.app.state.service
    answer = await infer_answer(service, name, request.headers, await request.body())
    return Response(answer.body, headers=dict(answer.headers()))


@router.post("/models/{name}/versions/{version}/infer", include_in_schema=False)
async def version_infer(name: str, version: str, request: Request) -> Response:
    service: Service = request.app.state.service
    _check_version(name, version, service.settings, service.runtime)
    return await infer(name, request)
