"""Open Inference Protocol v2 tensors, in JSON and in the binary tensor extension.

A request carries one FP32/FP64 tensor shaped ``[n, n_features]`` (features in the order of
``GET /model``), or one input per feature as MLServer's pandas codec sends a table (``name``
the feature, shape ``[n]`` or ``[n, 1]``, BYTES for a category, ``null`` for a missing value
where the schema allows it); the data in JSON or, with ``Inference-Header-Content-Length``, as
raw bytes after the JSON header. A version with category features takes the per-feature
inputs only. The answer has ``label``, ``probabilities`` and ``prediction_id`` tensors (a
regression: ``predict`` and ``prediction_id``), each in JSON or in binary when asked
(``parameters.binary_data_output`` for all of them, an output's ``parameters.binary_data`` for
one).
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
from mlplatform_common.schema import NUMBER, in_range
from mlplatform_serving.codecs.common import FP32_MAX, NUMBER_TYPES, loads, number, parse_model
from mlplatform_serving.codecs.table import Table
from mlplatform_serving.dataplane import check_batch
from mlplatform_serving.schemas import Reply

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from mlplatform_serving.runtime import BatchResult, Served

OUTPUTS = ("label", "probabilities", "prediction_id")
REGRESSION_OUTPUTS = ("predict", "prediction_id")
# The datatypes a per-feature input may have (a number is a category's text too).
NUMBER_DATATYPES = {"FP32": "<f4", "FP64": "<f8", "INT32": "<i4", "INT64": "<i8"}
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
    model_of: Callable[[], list[str] | Served],
    max_rows: int,
) -> Decoded:
    """An inference request: its rows as a float64 matrix, and the outputs it asks for.

    ``model_of``: the served version (or just its features, for a classifier of numbers),
    asked for once the request is read (a malformed request is named as such even while no
    model is loaded)."""
    typed: np.ndarray | None = None
    if "inference-header-content-length" not in headers and len(body) >= TYPED_FROM_BYTES:
        payload, typed = typed_json(body)
    if typed is None:
        payload, binary = split_binary(headers, body)
    else:
        binary = b""
    req: V2Request = parse_model(V2Request, payload)
    model = model_of()
    if isinstance(model, list):
        features, regression = model, False
        table = Table([{"name": f, "dtype": NUMBER} for f in features])
    else:
        features, regression, table = model.features, model.regression, Table.of(model)
    if not req.inputs:
        raise InvalidInput("inputs: no input; send one tensor [n, n_features] or one per feature")
    if len(req.inputs) > 1 or (req.inputs[0].name in table.features and len(features) > 1):
        if typed is not None:  # read typed as the data of one tensor: put back as values
            req.inputs[0].data = typed.tolist()
        X = per_feature_rows(req.inputs, binary, table)
        field = "inputs"
    else:
        X, field = _one_tensor(req.inputs[0], typed, binary, features, table)
    check_batch(len(X), field, max_rows)  # before the outputs, as a too-big tensor is named first
    return _outputs(req, X, field, REGRESSION_OUTPUTS if regression else OUTPUTS)


def _one_tensor(
    tensor: V2Tensor,
    typed: np.ndarray | None,
    binary: bytes,
    features: list[str],
    table: Table,
) -> tuple[np.ndarray, str]:
    """The rows of a request of one ``[n, n_features]`` tensor."""
    if any(c is not None for c in table.categories):
        names = [f for f, c in zip(table.features, table.categories, strict=True) if c is not None]
        raise InvalidInput(
            f"inputs[{tensor.name}]: this model has category features ({', '.join(names)}): "
            "send one input per feature, named by it, shape [n] (BYTES for a category)"
        )
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
    nan_ok = table.nan_ok if table.nan_ok.any() else None
    X = tensor_rows(data, tensor.shape, tensor.datatype, tensor.name, features, nan_ok)
    return X, f"inputs[{tensor.name}]"


def _outputs(req: V2Request, X: np.ndarray, field: str, known: tuple[str, ...]) -> Decoded:
    """The outputs a request asks for (of ``known``), and which of them as bytes."""
    wanted = [o.name for o in req.outputs] if req.outputs else list(known)
    unknown = [o for o in wanted if o not in known]
    if unknown:
        raise InvalidInput(f"outputs: unknown output {unknown[0]!r:.60}; choose from {list(known)}")
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


def per_feature_rows(inputs: list[V2Tensor], binary: bytes, table: Table) -> np.ndarray:
    """One input per feature (MLServer's pandas codec): each named by its feature, shape
    ``[n]`` or ``[n, 1]``; a category's BYTES (or numbers, taken as their text), a number's
    FP32/FP64/INT32/INT64, each value fitting it (``beyond_datatype``); ``null`` where a value
    may be missing. Binary data follows the JSON header in the order of the inputs."""
    by_name: dict[str, list[Any]] = {}
    checked: list[tuple[str, str, int]] = []  # (name, datatype, column) of FP32/INT inputs
    n: int | None = None
    at = 0
    for tensor in inputs:
        where = f"inputs[{tensor.name}]"
        if tensor.name not in table.features:
            raise InvalidInput(
                f"{where}: unknown input {tensor.name!r:.60}; send one input per feature of "
                "GET /model (or one tensor [n, n_features] for a model of numbers only)"
            )
        if tensor.name in by_name:
            raise InvalidInput(f"{where}: the feature is sent twice")
        j = table.features.index(tensor.name)
        category = table.categories[j] is not None
        shape = tensor.shape
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 1:
            raise InvalidInput(f"{where}.shape: must be [n] or [n, 1] with n >= 1, got {shape}")
        if n is not None and shape[0] != n:
            raise InvalidInput(
                f"{where}.shape: {shape[0]} rows, but {inputs[0].name!r:.60} has {n}"
            )
        n = shape[0]
        if tensor.datatype not in NUMBER_DATATYPES and not (
            category and tensor.datatype == "BYTES"
        ):
            kinds = "BYTES (text) or a number type" if category else "FP32, FP64, INT32 or INT64"
            kind = "a category" if category else "a number feature"
            raise InvalidInput(
                f"{where}.datatype: {tensor.datatype!r:.20} is not supported for "
                f"{tensor.name!r:.60}, {kind}; use {kinds}"
            )
        if tensor.datatype in CHECKED and not category:  # a category's codes are in range
            checked.append((tensor.name, tensor.datatype, j))
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is not None:
            if tensor.data is not None:
                raise InvalidInput(f"{where}: give data or parameters.binary_data_size, not both")
            whole = isinstance(size, int) and not isinstance(size, bool)
            if not whole or not 0 <= size <= len(binary) - at:
                raise InvalidInput(
                    f"{where}.parameters.binary_data_size: {size!r:.40} does not fit the "
                    f"{len(binary) - at} bytes left after the JSON header"
                )
            values = _binary_values(binary[at : at + size], tensor.datatype, where)
            at += size
        elif tensor.data is None:
            raise InvalidInput(f"{where}.data: missing")
        else:
            values = _json_values(tensor.data, where)
        if len(values) != n:
            raise InvalidInput(f"{where}.data: {len(values)} values do not fill shape {shape}")
        if tensor.datatype == "BYTES" and not all(type(v) is not bytes for v in values):
            values = [_text(v, f"{where}.data[{i}]") for i, v in enumerate(values)]
        by_name[tensor.name] = values
    if at != len(binary):
        raise InvalidInput(
            f"inputs: {len(binary) - at} bytes follow the JSON header that no input's "
            "parameters.binary_data_size accounts for"
        )
    missing = [f for f in table.features if f not in by_name]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InvalidInput(f"inputs: no input for feature {missing[0]!r}{more}")
    columns = [by_name[f] for f in table.features]
    X = table.matrix(columns, lambda i, name: f"inputs[{name}].data[{i}]")
    for name, datatype, j in checked:  # a JSON number need not fit the type it is declared as
        if error := beyond_datatype(X[:, j], datatype, f"inputs[{name}]"):
            raise error
    return X


# The datatypes whose values a JSON number may not fit. An INT's range as float64, the type
# the values are read as: INT64's max rounds to 2**63, so a value within a rounding of it
# passes (binary INT64 data holds its max, and must).
CHECKED = {"FP32", "INT32", "INT64"}
INT_RANGES = {
    t: (float(np.iinfo(t.lower()).min), float(np.iinfo(t.lower()).max)) for t in ("INT32", "INT64")
}


def beyond_datatype(values: np.ndarray, datatype: str, where: str) -> InvalidInput | None:
    """The error naming the first of input ``where``'s ``values`` (float64, flat) that its
    declared ``datatype`` cannot hold, or None: beyond ±``FP32_MAX`` for FP32; not a whole
    number, or outside the type's range, for INT32/INT64 (NaN, a missing value, is neither).
    The one check of both forms of input, vectorised (it runs on every per-feature input)."""
    if datatype == "FP32":
        over = np.abs(values) > FP32_MAX
        if not over.any():
            return None
        i = int(over.argmax())
        return InvalidInput(f"{where}.data[{i}]: {float(values[i])!r:.40} is too large for FP32")
    if datatype not in INT_RANGES:
        return None
    low, high = INT_RANGES[datatype]
    # NaN compares false both ways: a missing value is neither fractional nor out of range
    bad = (values < low) | (values > high) | (np.abs(values - np.trunc(values)) > 0)
    if not bad.any():
        return None
    i = int(bad.argmax())
    v = float(values[i])
    if not v.is_integer():
        return InvalidInput(f"{where}.data[{i}]: {v!r:.40} is not an {datatype}")
    shown = str(int(v)) if abs(v) < 1e16 else repr(v)  # 1e+100, not its 101 digits
    return InvalidInput(f"{where}.data[{i}]: {shown} is out of range for {datatype}")


def _json_values(data: Any, where: str) -> list[Any]:
    """A per-feature input's JSON data: flat, or rows of one value (``[n, 1]``)."""
    if not isinstance(data, list):
        raise InvalidInput(f"{where}.data: must be an array of values")
    if data and type(data[0]) is list:
        if not all(type(row) is list and len(row) == 1 for row in data):
            raise InvalidInput(f"{where}.data: must be flat, or rows of one value each")
        return [row[0] for row in data]
    return data


def _binary_values(blob: bytes, datatype: str, where: str) -> list[Any]:
    """A per-feature input's binary data: little-endian numbers, or BYTES elements (each a
    4-byte length, then its bytes)."""
    if datatype != "BYTES":
        dtype = np.dtype(NUMBER_DATATYPES[datatype])
        if len(blob) % dtype.itemsize:
            raise InvalidInput(f"{where}: binary data is not a whole number of {datatype}")
        values: list[Any] = np.frombuffer(blob, dtype=dtype).astype(np.float64).tolist()
        return [None if v != v else v for v in values]  # NaN: a missing value
    out: list[Any] = []
    at = 0
    while at < len(blob):
        if at + 4 > len(blob):
            raise InvalidInput(f"{where}: binary BYTES data ends inside an element's length")
        (size,) = struct.unpack_from("<I", blob, at)
        if at + 4 + size > len(blob):
            raise InvalidInput(f"{where}: binary BYTES element {len(out)} runs past its data")
        out.append(blob[at + 4 : at + 4 + size])
        at += 4 + size
    return out


def _text(value: Any, where: str) -> Any:
    """A BYTES element given as bytes (binary data) as text; other values as they are."""
    if type(value) is not bytes:
        return value
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise InvalidInput(f"{where}: not UTF-8 text") from None


def tensor_rows(
    data: Any,
    shape: Any,
    datatype: str,
    name: str,
    features: list[str],
    nan_ok: np.ndarray | None = None,
) -> np.ndarray:
    """An input tensor ``[n, n_features]`` as a float64 matrix.

    ``data``: the JSON ``data`` (flat or nested lists), or the binary data as an array.
    ``nan_ok``: the columns that may hold NaN (missing values of nullable numbers; binary
    data only, JSON has no NaN)."""
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
            # null: a missing value, allowed in the columns nan_ok marks (checked below)
            allowed = NUMBER_TYPES if nan_ok is None else NUMBER_TYPES | {type(None)}
            if not isinstance(flat, list) or not set(map(type, flat)) <= allowed:
                raise ValueError
            arr = np.asarray(flat, dtype=dtype).reshape(-1)
        if nan_ok is not None and arr.size == shape[0] * shape[1]:
            table_ok = Table.nan_in_range(arr.reshape(shape), nan_ok)
            ok = table_ok and (datatype != "FP32" or not np.isinf(arr).any())
        else:
            ok = arr.size == shape[0] * shape[1] and in_range(arr)
    except (ValueError, TypeError, OverflowError):
        ok = False
    if not ok:
        values = data.tolist() if isinstance(data, np.ndarray) else data
        raise _explain_tensor(values, shape, datatype, where, nan_ok) from None
    return arr.reshape(shape).astype(np.float64, copy=False)


def _explain_tensor(
    data: Any, shape: list[int], datatype: str, where: str, nan_ok: np.ndarray | None = None
) -> InvalidInput:
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
    values = np.full(len(flat), np.nan)
    for i, v in enumerate(flat):
        if nan_ok is not None and nan_ok[i % shape[1]] and (v is None or v != v):
            continue  # a missing value where the column may have one
        try:
            if v is None and nan_ok is not None:
                raise InvalidInput(
                    f"{where}.data[{i}]: missing (null or NaN), and feature {i % shape[1]} "
                    "may not be missing"
                )
            values[i] = number(v, f"{where}.data[{i}]")
        except InvalidInput as exc:
            return exc
    if error := beyond_datatype(values, datatype, where):
        return error
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
        "prediction_id": {
            "name": "prediction_id",
            "datatype": "BYTES",
            "shape": [len(ids)],
            "data": orjson.Fragment(ids.json()),
        },
    }
    if result.value is not None:
        tensors["predict"] = {
            "name": "predict",
            "datatype": "FP64",
            "shape": [len(ids)],
            "data": np.asarray(result.value, dtype=np.float64),
        }
    else:
        tensors |= _class_tensors(result, ids, classes, datatype)
    return _reply(request, name, result, ids, tensors)


def _class_tensors(
    result: BatchResult, ids: datalog.PredictionIds, classes: list[Any], datatype: str
) -> dict[str, dict[str, Any]]:
    return {
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
    }


def _reply(
    request: Decoded,
    name: str,
    result: BatchResult,
    ids: datalog.PredictionIds,
    tensors: dict[str, dict[str, Any]],
) -> Reply:
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
