"""Open Inference Protocol v2 tensors, in JSON and in the binary tensor extension.

A request carries one FP32/FP64 tensor shaped ``[n, n_features]`` (features in the order of
``GET /model``), its data in JSON or, with ``Inference-Header-Content-Length``, as raw bytes
after the JSON header. The answer has ``label``, ``probabilities`` and ``prediction_id``
tensors, each in JSON or in binary when asked (``parameters.binary_data_output`` for all of
them, an output's ``parameters.binary_data`` for one).
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import simdjson
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from mlplatform_common import datalog
from mlplatform_common.errors import InvalidInput
from mlplatform_common.schema import in_range
from mlplatform_serving.codecs.common import FP32_MAX, NUMBER_TYPES, loads, number, parse_model
from mlplatform_serving.dataplane import check_batch
from mlplatform_serving.schemas import Reply

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from mlplatform_serving.runtime import BatchResult

OUTPUTS = ("label", "probabilities", "prediction_id")
# Below about five rows the general reader is as fast as the typed one (bench/BENCHMARKS.md).
TYPED_FROM_BYTES = 1024


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


@dataclass
class Decoded:
    """A request's rows and what its answer is to hold."""

    X: np.ndarray
    field: str  # where the rows came from, for the data plane's errors
    id: str | None
    outputs: list[str]  # in the order asked
    binary: set[str]  # the outputs to answer as bytes


def label_datatype(classes: list[Any]) -> str:
    """The datatype of the ``label`` output, from the model's classes (JSON values): BYTES if
    a class is a string, BOOL if all are booleans, FP64 if one is a float, else INT64."""
    if any(isinstance(c, str) for c in classes):
        return "BYTES"
    if classes and all(isinstance(c, bool) for c in classes):
        return "BOOL"
    return "FP64" if any(isinstance(c, float) for c in classes) else "INT64"


# -- decode -----------------------------------------------------------------------------------


def typed_json(body: bytes) -> tuple[Any, np.ndarray | None]:
    """A JSON request whose one input holds flat numeric ``data``: the request without that
    data, and the data as float64 read straight from the text (simdjson), with no Python
    object per value. Anything else (nested rows, a boolean, a string, invalid JSON) gives
    ``(None, None)``: the caller parses it as before, which words every error."""
    try:
        doc = simdjson.Parser().parse(body)  # a parser per call: no view outlives its parse
        if not isinstance(doc, simdjson.Object):
            return None, None
        inputs = doc.get("inputs")
        if not isinstance(inputs, simdjson.Array) or len(inputs) != 1:
            return None, None
        tensor = inputs[0]
        data = tensor.get("data") if isinstance(tensor, simdjson.Object) else None
        if not isinstance(data, simdjson.Array) or (len(data) and not _is_number(data[0])):
            return None, None
        values = np.frombuffer(data.as_buffer(of_type="d"), dtype=np.float64)
        # by key: items() would turn the data into Python objects too
        rest = {k: _plain(doc[k]) for k in doc.keys() if k != "inputs"}  # noqa: SIM118
        rest["inputs"] = [{k: _plain(tensor[k]) for k in tensor.keys() if k != "data"}]  # noqa: SIM118
    # invalid JSON, a value that is not a number; RuntimeError: too deep, an integer past 64 bits
    except (ValueError, TypeError, RuntimeError):
        return None, None
    # as_buffer flattens arrays nested in the data: the data is flat only if its "[" is the
    # one bracket the body has beyond the rest's (an escape could hide one: not taken)
    if b"\\" in body or body.count(b"[") != orjson.dumps(rest).count(b"[") + 1:
        return None, None
    return rest, values


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _plain(value: Any) -> Any:
    """A simdjson value as Python objects."""
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    return value.as_list() if isinstance(value, simdjson.Array) else value


def split_binary(headers: Mapping[str, str], body: bytes) -> tuple[Any, bytes]:
    """The JSON header and, with the binary tensor extension, the raw bytes after it."""
    header_len = headers.get("inference-header-content-length")
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


def binary_data(tensor: V2Tensor, binary: bytes) -> np.ndarray:
    """An input's data given as bytes after the JSON header (``binary_data_size``)."""
    size = (tensor.parameters or {}).get("binary_data_size")
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
    return np.frombuffer(binary, dtype=dtype)


def decode(
    headers: Mapping[str, str],
    body: bytes,
    features_of: Callable[[], list[str]],
    max_rows: int,
) -> Decoded:
    """An inference request: its rows as a float64 matrix, and the outputs it asks for.

    ``features_of``: the served version's features, asked for once the request is read (a
    malformed request is named as such even while no model is loaded)."""
    typed: np.ndarray | None = None
    if "inference-header-content-length" not in headers and len(body) >= TYPED_FROM_BYTES:
        payload, typed = typed_json(body)
    if typed is None:
        payload, binary = split_binary(headers, body)
    else:
        binary = b""
    req: V2Request = parse_model(V2Request, payload)
    if len(req.inputs) != 1:
        raise InvalidInput(f"inputs: expected one tensor [n, n_features], got {len(req.inputs)}")
    tensor = req.inputs[0]
    data = tensor.data if typed is None else typed
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
        data = binary_data(tensor, binary)
    elif data is None:
        raise InvalidInput(f"inputs[{tensor.name}].data: missing")
    X = tensor_rows(data, tensor.shape, tensor.datatype, tensor.name, features_of())
    field = f"inputs[{tensor.name}]"
    check_batch(len(X), field, max_rows)  # before the outputs, as a too-big tensor is named first
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
    return Decoded(X, field, req.id, wanted, {o for o in wanted if asked.get(o, every)})


def _flag(parameters: dict[str, Any] | None, key: str, where: str, default: bool) -> bool:
    """A boolean request parameter (``binary_data_output``, ``binary_data``)."""
    value = (parameters or {}).get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"{where}.{key}: must be true or false, got {value!r:.40}")
    return value


def tensor_rows(data: Any, shape: Any, datatype: str, name: str, features: list[str]) -> np.ndarray:
    """An input tensor ``[n, n_features]`` as a float64 matrix.

    ``data``: the JSON ``data`` (flat or nested lists), or the binary data as an array."""
    where = f"inputs[{name}]"
    if datatype not in ("FP32", "FP64"):
        raise InvalidInput(f"{where}.datatype: {datatype!r} is not supported; use FP32 or FP64")
    if (
        not isinstance(shape, list)
        or len(shape) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape)
        or shape[1] != len(features)
        or shape[0] < 1
    ):
        raise InvalidInput(
            f"{where}.shape: must be [n, {len(features)}] with n >= 1, got {shape!r:.60}"
        )
    dtype = np.float32 if datatype == "FP32" else np.float64
    try:
        # Flat data (or one level of rows) gets the same C-level type pass as JSON rows:
        # numbers only, bool is not one. Deeper nesting goes to the slow, exact check.
        if isinstance(data, np.ndarray):  # binary or typed JSON data: already numbers
            with np.errstate(over="ignore"):  # beyond FP32: inf, named below
                arr = data.reshape(-1).astype(dtype, copy=False)
        else:
            nested = isinstance(data, list) and data and isinstance(data[0], list)
            if nested and (len(data) != shape[0] or set(map(len, data)) != {shape[1]}):
                raise ValueError  # rows of the wrong count or length ("ragged")
            flat = list(itertools.chain.from_iterable(data)) if nested else data
            if not isinstance(flat, list) or not set(map(type, flat)) <= NUMBER_TYPES:
                raise ValueError
            arr = np.asarray(flat, dtype=dtype).reshape(-1)
        ok = arr.size == shape[0] * shape[1] and in_range(arr)
    except (ValueError, TypeError, OverflowError):
        ok = False
    if not ok:
        values = data.tolist() if isinstance(data, np.ndarray) else data
        raise _explain_tensor(values, shape, datatype, where) from None
    return arr.reshape(shape).astype(np.float64, copy=False)


def _explain_tensor(data: Any, shape: list[int], datatype: str, where: str) -> InvalidInput:
    flat: list[Any] = []
    stack = [data]
    while stack:  # flatten nested lists without recursion
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    if len(flat) != shape[0] * shape[1]:
        return InvalidInput(
            f"{where}.data: {len(flat)} values do not fill shape {shape} "
            f"({shape[0] * shape[1]} values)"
        )
    for i, v in enumerate(flat):
        try:
            value = number(v, f"{where}.data[{i}]")
        except InvalidInput as exc:
            return exc
        if datatype == "FP32" and abs(value) > FP32_MAX:
            return InvalidInput(f"{where}.data[{i}]: {v!r:.40} is too large for FP32")
    return InvalidInput(
        f"{where}.data: must be {shape[0] * shape[1]} numbers, flat or as rows of {shape[1]}"
    )


# -- encode -----------------------------------------------------------------------------------


def encode(request: Decoded, name: str, result: BatchResult, ids: datalog.PredictionIds) -> Reply:
    """The inference answer: JSON, or a JSON header and the binary outputs' bytes after it."""
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
    for o in request.outputs if request.binary else ():
        if o in request.binary:
            data = tensors[o].pop("data")
            blob = _binary(tensors[o]["datatype"], ids if o == "prediction_id" else data)
            tensors[o]["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
    header = orjson.dumps(
        {
            "model_name": name,
            "model_version": result.served.version,
            "id": request.id,
            "parameters": {"backup": result.backup, "engine": result.served.engine.name},
            "outputs": [tensors[o] for o in request.outputs],
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    if not request.binary:
        return Reply(header)
    return Reply(b"".join([header, *blobs]), json_length=len(header))


def _binary(datatype: str, data: Any) -> bytes:
    """A tensor's data in the binary tensor extension's layout: little-endian numbers, one
    byte per BOOL, and each BYTES element as its 4-byte length and then its bytes."""
    if datatype == "BYTES":
        encoded = [str(t).encode() for t in data]
        return b"".join(struct.pack("<I", len(e)) + e for e in encoded)
    dtype: Any = {"BOOL": np.bool_, "INT64": "<i8", "FP64": "<f8"}[datatype]
    return np.ascontiguousarray(data, dtype=dtype).tobytes()
