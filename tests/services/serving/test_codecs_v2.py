"""The Open Inference Protocol v2 codec (``codecs/v2``): JSON and binary tensors."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from mlplatform_common import datalog
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import Store
from mlplatform_serving.app import create_app
from tests.conftest import SIGNING_KEY, publish_trained
from tests.services.serving.conftest import assert_error, serving_settings


@pytest.mark.parametrize(
    ("to_class", "datatype"),
    [(float, "FP64"), (bool, "BOOL"), (lambda y: f"class {y}", "BYTES")],
)
def test_the_v2_label_datatype_is_that_of_the_classes(
    local_store: Store, shipped_dataset, rows, to_class: Any, datatype: str
) -> None:
    """Classes 0.0/1.0 were typed INT64 (and True/False too): a typed client misread them."""
    from mlplatform_retrainer.train import TrainConfig, train

    data = dataclasses.replace(shipped_dataset, y=shipped_dataset.y.map(to_class))
    publish_trained(
        ModelRegistry(local_store, SIGNING_KEY), train(data.X, data.y, TrainConfig()), data
    )
    with TestClient(create_app(serving_settings(), local_store)) as c:
        outputs = c.get("/v2/models/mlplatform").json()["outputs"]
        assert outputs[0] == {"name": "label", "datatype": datatype, "shape": [-1]}
        X = [[r[f] for f in data.features] for r in rows[:20]]
        body = {"inputs": [{"name": "x", "shape": [20, 30], "datatype": "FP64", "data": X}]}
        label = c.post("/v2/models/mlplatform/infer", json=body).json()["outputs"][0]
        answers = c.post("/predict", json={"instances": rows[:20]}).json()["predictions"]
        # in binary, on the versioned path (FastAPI's route, not the hot path)
        binary = {**body, "outputs": [{"name": "label", "parameters": {"binary_data": True}}]}
        head, blob = _binary_answer(c.post("/v2/models/mlplatform/versions/v1/infer", json=binary))
    assert label["datatype"] == datatype
    assert label["data"] == [a["label"] for a in answers]
    assert {type(v) for v in label["data"]} == {type(to_class(0))}
    assert head["outputs"][0]["datatype"] == datatype
    if datatype == "BYTES":
        texts = []
        while blob:
            n = int.from_bytes(blob[:4], "little")
            texts.append(blob[4 : 4 + n].decode())
            blob = blob[4 + n :]
        assert texts == label["data"]
    else:
        assert np.frombuffer(blob, {"FP64": "<f8", "BOOL": "?"}[datatype]).tolist() == label["data"]


@pytest.mark.parametrize(
    ("tensor", "fragment"),
    [
        ({"shape": [1, 29], "datatype": "FP64", "data": [0.0] * 29}, "shape: must be [n, 30]"),
        (
            {"shape": [2, 30], "datatype": "FP64", "data": [0.0] * 30},
            "30 values do not fill shape [2, 30]",
        ),
        ({"shape": [1, 30], "datatype": "INT8", "data": [0] * 30}, "'INT8' is not supported"),
        ({"shape": [1, 30], "datatype": "FP64", "data": ["a"] * 30}, "data[0]: must be a number"),
        ({"shape": [1, 30], "datatype": "FP64"}, "data: missing"),
        ({"shape": "1,30", "datatype": "FP64", "data": []}, "shape"),
        (
            {"shape": [1, 30], "datatype": "FP32", "data": [1e39] * 30},
            "data[0]: 1e+39 is too large for FP32",
        ),
        (
            {"shape": [1, 30], "datatype": "FP64", "data": [1.0] * 29 + [1e200]},
            "data[29]: 1e+200 is beyond ±1e+150",
        ),
        (
            {"shape": [1, 30], "datatype": "FP64", "data": [[1.0] * 15, *[1.0] * 15]},
            "data: must be 30 numbers, flat or as rows of 30",
        ),
        (  # a number first, then a row: the typed reader flattens it, so it falls back
            {"shape": [1, 30], "datatype": "FP64", "data": [*[1.0] * 15, [1.0] * 15]},
            "data: must be 30 numbers, flat or as rows of 30",
        ),
        ({"shape": [1, 30], "datatype": "FP64", "data": [1.0] * 29 + [True]}, "data[29]: must"),
        ({"shape": [1, 30], "datatype": "FP64", "data": [1.0] * 29 + [None]}, "data[29]: must"),
        (  # ragged: 30 values in all, but not 1 row of 30 (was answered)
            {"shape": [1, 30], "datatype": "FP64", "data": [[1.0] * 10, [1.0] * 20]},
            "data: must be 30 numbers, flat or as rows of 30",
        ),
    ],
)
def test_v2_bad_tensors(client: TestClient, tensor, fragment: str) -> None:
    r = client.post("/v2/models/mlplatform/infer", json={"inputs": [{"name": "x", **tensor}]})
    assert_error(r, 422, fragment)


def test_v2_binary_framing_that_does_not_add_up_is_refused(client: TestClient) -> None:
    # Each of these was answered 200, from whichever part of the body the server picked.
    tensor = np.zeros((1, 30), dtype="<f8").tobytes()

    def post(head: dict[str, Any], binary: bytes) -> Any:
        raw = json.dumps(head).encode()
        return client.post(
            "/v2/models/mlplatform/infer",
            content=raw + binary,
            headers={"inference-header-content-length": str(len(raw))},
        )

    base = {"name": "x", "shape": [1, 30], "datatype": "FP64"}
    json_only = {"inputs": [{**base, "data": [0.0] * 30}]}
    assert_error(post(json_only, tensor), 422, "240 bytes follow the JSON header, but no input")
    both = {"inputs": [{**base, "data": [0.0] * 30, "parameters": {"binary_data_size": 240}}]}
    assert_error(post(both, tensor), 422, "inputs[x]: give data or parameters.binary_data_size")
    as_float = {"inputs": [{**base, "parameters": {"binary_data_size": 240.0}}]}
    assert_error(post(as_float, tensor), 422, "must be a whole number of bytes, got 240.0")
    short = {"inputs": [{**base, "parameters": {"binary_data_size": 240}}]}
    assert_error(post(short, tensor[:-8]), 422, "240 bytes, but 232 follow the JSON header")
    twice = {**json_only, "outputs": [{"name": "label"}, {"name": "label"}]}
    assert_error(post(twice, b""), 422, "outputs: an output is asked for twice")
    assert post(short, tensor).status_code == 200


def _binary_answer(r: Any) -> tuple[dict[str, Any], bytes]:
    n = int(r.headers["inference-header-content-length"])
    assert r.headers["content-type"] == "application/octet-stream"
    return json.loads(r.content[:n]), r.content[n:]


def test_v2_binary_outputs_are_the_json_ones_as_bytes(client: TestClient, rows) -> None:
    """binary_data_output (all outputs) and binary_data (one output) were ignored: the answer
    was JSON whatever the client asked for."""
    X = [list(r.values()) for r in rows[:4]]
    inputs = [{"name": "x", "shape": [4, 30], "datatype": "FP64", "data": X}]
    url = "/v2/models/mlplatform/infer"
    plain = client.post(url, json={"inputs": inputs}).json()["outputs"]
    label, proba, ids = (o["data"] for o in plain)
    head, blob = _binary_answer(
        client.post(url, json={"inputs": inputs, "parameters": {"binary_data_output": True}})
    )
    sizes = [o["parameters"]["binary_data_size"] for o in head["outputs"]]
    assert [o["name"] for o in head["outputs"]] == ["label", "probabilities", "prediction_id"]
    assert all("data" not in o for o in head["outputs"]) and sum(sizes) == len(blob)
    assert np.frombuffer(blob[: sizes[0]], "<i8").tolist() == label
    assert np.frombuffer(blob[sizes[0] : sizes[0] + sizes[1]], "<f8").tolist() == proba
    texts, rest = [], blob[sizes[0] + sizes[1] :]
    while rest:  # BYTES: a 4-byte little-endian length, then the bytes
        n = int.from_bytes(rest[:4], "little")
        texts.append(rest[4 : 4 + n].decode())
        rest = rest[4 + n :]
    key = texts[0][:26]
    assert [datalog.prediction_batch(t) for t in texts] == [(key, i) for i in range(4)]
    assert [len(i) for i in ids] == [len(t) for t in texts]
    # One output in binary, the others as JSON; the order is the one asked for.
    outputs = [
        {"name": "probabilities", "parameters": {"binary_data": True}},
        {"name": "label"},
        {"name": "prediction_id", "parameters": {"binary_data": False}},
    ]
    head, blob = _binary_answer(client.post(url, json={"inputs": inputs, "outputs": outputs}))
    assert [o["name"] for o in head["outputs"]] == ["probabilities", "label", "prediction_id"]
    assert np.frombuffer(blob, "<f8").tolist() == proba
    assert head["outputs"][1]["data"] == label and len(head["outputs"][2]["data"]) == 4
    # Asked for none: JSON as before.
    r = client.post(url, json={"inputs": inputs, "parameters": {"binary_data_output": False}})
    assert r.headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in r.headers
    bad = {"inputs": inputs, "outputs": [{"name": "label", "parameters": {"binary_data": "y"}}]}
    assert_error(
        client.post(url, json=bad), 422, "outputs[label].parameters.binary_data: must be true or"
    )


FLAT = [0, -1, 2.5, 1e-7, -3e2, 123456789, 0.1, 1e150, 7, 18.4027] * 24  # 8 rows of 30


@pytest.mark.parametrize(
    ("text", "typed"),
    [
        (json.dumps(FLAT), True),  # flat numbers: read typed, no Python object per value
        (json.dumps([FLAT[i : i + 30] for i in range(0, 240, 30)]), False),  # rows: general
        (json.dumps([*FLAT[:239], True]), False),
        (json.dumps([*FLAT[:239], "1"]), False),
        (json.dumps([*FLAT[:239], [1.0]]), False),
        ("[" + ", ".join(["1.5"] * 239) + ", 1e400]", False),
        ("[" + ", ".join(["1.5"] * 239) + ", " + "9" * 4301 + "]", False),  # past 64 bits
        (json.dumps(FLAT) + ', "deep": ' + "[" * 5000 + "]" * 5000, False),  # too deep
    ],
)
def test_flat_json_tensor_data_is_read_typed_and_equals_the_general_reader(
    text: str, typed: bool
) -> None:
    from mlplatform_serving.codecs import v2

    body = (
        '{"id": "r1", "parameters": {"binary_data_output": false}, "inputs": [{"name": "x", '
        '"shape": [8, 30], "datatype": "FP64", "parameters": {}, "data": ' + text + "}]}"
    ).encode()
    assert len(body) >= v2.TYPED_FROM_BYTES  # small bodies take the general reader
    rest, values = v2.typed_json(body)
    assert (values is not None) is typed
    if typed:
        general = json.loads(body)
        assert values is not None and values.tolist() == [float(v) for v in FLAT]
        tensor = {k: v for k, v in general["inputs"][0].items() if k != "data"}
        assert rest == {**general, "inputs": [tensor]}
        features = [f"f{i}" for i in range(30)]
        got = v2.decode({}, body, lambda: features, 10)
        assert got.X.dtype == np.float64 and got.id == "r1"
        assert got.X.tolist() == [[float(v) for v in FLAT[i : i + 30]] for i in range(0, 240, 30)]


def test_a_typed_fp32_tensor_is_rounded_to_fp32_as_before(client: TestClient) -> None:
    from mlplatform_serving.codecs import v2

    values = [0.1 * i for i in range(120)]
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [4, 30], "datatype": "FP32", "data": values}]}
    ).encode()
    assert v2.typed_json(body)[1] is not None
    got = v2.decode({}, body, lambda: [f"f{i}" for i in range(30)], 10)
    fp32 = np.asarray(values, dtype=np.float32).astype(np.float64).reshape(4, 30)
    assert got.X.tolist() == fp32.tolist()


def _published_inputs(
    request: pytest.FixtureRequest, local_store: Store, data_set: str, column: str
) -> tuple[Any, list[dict[str, Any]], dict[str, Any]]:
    """``data_set``'s model published in ``local_store``, three of its rows as per-feature
    V2 inputs, and the input of ``column`` among them."""
    from tests.services.serving.test_tasks import rows_of, v2_inputs

    fixtures = {
        "breast": ("shipped_dataset", "trained"),
        "penguins": ("penguins_dataset", "penguins_trained"),
    }
    dataset, trained = (request.getfixturevalue(f) for f in fixtures[data_set])
    publish_trained(ModelRegistry(local_store, SIGNING_KEY), trained, dataset)
    inputs = v2_inputs(dataset, rows_of(dataset, 3))
    return dataset, inputs, next(t for t in inputs if t["name"] == column)


@pytest.mark.parametrize(
    ("data_set", "column", "values", "fragment"),
    [
        ("breast", "mean_radius", [1.0, 1e39, 2.0], "inputs[mean_radius].data[1]: 1e+39 is"),
        (  # rows of one value ([n, 1]), the last column, below -FP32_MAX
            "breast",
            "worst_fractal_dimension",
            [[1.0], [2.0], [-1e39]],
            "inputs[worst_fractal_dimension].data[2]: -1e+39 is",
        ),
        # a column that may be missing: NaN (null) is no overflow, the value after it is
        (
            "penguins",
            "bill_length_mm",
            [None, 1e39, 40.0],
            "inputs[bill_length_mm].data[1]: 1e+39 is",
        ),
        ("penguins", "body_mass_g", [None, None, -4e38], "inputs[body_mass_g].data[2]: -4e+38 is"),
        ("penguins", "year", [2007, 2008, 10**39], "inputs[year].data[2]: 1e+39 is"),
    ],
)
def test_v2_per_feature_fp32_inputs_beyond_fp32_are_refused(
    request: pytest.FixtureRequest,
    local_store: Store,
    data_set: str,
    column: str,
    values: list[Any],
    fragment: str,
) -> None:
    """One FP32 [n, n_features] tensor refused 1e39; the same value in a per-feature FP32
    input was answered 200, scored as a value no FP32 holds."""
    _, inputs, tensor = _published_inputs(request, local_store, data_set, column)
    tensor |= {
        "datatype": "FP32",
        "data": values,
        "shape": [3, 1] if type(values[0]) is list else [3],
    }
    url = "/v2/models/mlplatform/infer"
    with TestClient(create_app(serving_settings(), local_store)) as c:
        assert_error(c.post(url, json={"inputs": inputs}), 422, fragment + " too large for FP32")
        tensor["datatype"] = "FP64"  # within ±1e150 and held by FP64: answered
        r = c.post(url, json={"inputs": inputs})
        assert r.status_code == 200, r.text
        # FP32's own extremes are taken
        tensor |= {"datatype": "FP32", "data": [1.0, 3.4e38, -3.4e38], "shape": [3]}
        r = c.post(url, json={"inputs": inputs})
        assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("data_set", "column", "datatype", "values", "error"),
    [
        ("penguins", "year", "INT64", [2007, 2007.5, 2008], "data[1]: 2007.5 is not an INT64"),
        (  # a column that may be missing: null is no fraction, the value after it is
            "penguins",
            "body_mass_g",
            "INT32",
            [None, 3750.25, 3800],
            "data[1]: 3750.25 is not an INT32",
        ),
        (
            "penguins",
            "body_mass_g",
            "INT32",
            [None, 3750, 2**40],
            "data[2]: 1099511627776 is out of range for INT32",
        ),
        (
            "penguins",
            "year",
            "INT32",
            [-(2**31) - 1, 1, 2],
            "data[0]: -2147483649 is out of range for INT32",
        ),
        (
            "penguins",
            "year",
            "INT32",
            [1, 2, 2**31],
            "data[2]: 2147483648 is out of range for INT32",
        ),
        ("penguins", "year", "INT64", [1, 2, 10**19], "data[2]: 1e+19 is out of range for INT64"),
        ("penguins", "year", "INT64", [1, -1e100, 2], "data[1]: -1e+100 is out of range for INT64"),
        (  # rows of one value ([n, 1])
            "breast",
            "mean_radius",
            "INT32",
            [[1], [2], [0.5]],
            "data[2]: 0.5 is not an INT32",
        ),
    ],
)
def test_v2_per_feature_int_inputs_take_only_integers_in_range(
    request: pytest.FixtureRequest,
    local_store: Store,
    data_set: str,
    column: str,
    datatype: str,
    values: list[Any],
    error: str,
) -> None:
    """A per-feature input declared INT32/INT64 took 2.5 and 2**40 (answered 200, scored as
    the float): the declared datatype now holds, as FP32's range does."""
    dataset, inputs, tensor = _published_inputs(request, local_store, data_set, column)
    shape = [3, 1] if type(values[0]) is list else [3]
    tensor |= {"datatype": datatype, "data": values, "shape": shape}
    url = "/v2/models/mlplatform/infer"
    with TestClient(create_app(serving_settings(), local_store)) as c:
        r = c.post(url, json={"inputs": inputs})
        assert r.status_code == 422, r.text
        assert r.json() == {"error": f"inputs[{column}].{error}", "type": "InvalidInput"}
        tensor["datatype"] = "FP64"  # the same values as FP64: answered
        r = c.post(url, json={"inputs": inputs})
        assert r.status_code == 200, r.text
        # the type's own extremes, and whole numbers written as floats, are taken
        info = np.iinfo(datatype.lower())
        tensor |= {"datatype": datatype, "data": [int(info.min), int(info.max), 3.0], "shape": [3]}
        r = c.post(url, json={"inputs": inputs})
        assert r.status_code == 200, r.text
        # in binary they are integers by construction: the extremes are taken there too
        blob = np.array([info.min, info.max, 3], dtype=info.dtype.newbyteorder("<")).tobytes()
        rest = [t for t in inputs if t is not tensor]
        binary = {k: v for k, v in tensor.items() if k != "data"}
        binary["parameters"] = {"binary_data_size": len(blob)}
        header = json.dumps({"inputs": [*rest, binary]}).encode()
        r = c.post(
            url,
            content=header + blob,
            headers={"inference-header-content-length": str(len(header))},
        )
        assert r.status_code == 200, r.text
        # the one [n, n_features] tensor takes FP32/FP64 only, as before
        one = {"name": "x", "datatype": datatype, "shape": [1, len(dataset.features)]}
        one["data"] = [[1] * len(dataset.features)]
        r = c.post(url, json={"inputs": [one]})
        assert r.status_code == 422, r.text
