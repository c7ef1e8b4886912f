"""Hostile input of the new types against a mixed-type model (penguins: categories, nullable
numbers, text classes) and a regression: strings in number columns, numbers, booleans and
objects in category columns, nulls where none is allowed, BYTES tensors of the wrong shape or
type, unknown per-feature inputs. Always a 4xx naming the row and the column, never a 500."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import Store
from mlplatform_serving.app import create_app
from mlplatform_serving.codecs.json_rows import RowsCodec
from tests.conftest import SIGNING_KEY, publish_trained
from tests.services.serving.conftest import WRITER, assert_error, serving_settings
from tests.services.serving.test_tasks import rows_of, v2_inputs


@pytest.fixture(scope="module")
def penguins(tmp_path_factory, penguins_trained, penguins_dataset) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    from mlplatform_common.storage import LocalStore

    store = LocalStore(tmp_path_factory.mktemp("penguins") / "store")
    store.ensure()
    publish_trained(ModelRegistry(store, SIGNING_KEY), penguins_trained, penguins_dataset)
    with TestClient(create_app(serving_settings(max_batch_rows=10), store)) as c:
        yield c


@pytest.fixture(scope="module")
def row(penguins_dataset) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return rows_of(penguins_dataset, 1)[0]  # Adelie, Torgersen, male, 2007


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        ({"bill_length_mm": "long"}, ["instances[1].bill_length_mm: must be a number", '"long"']),
        ({"bill_length_mm": "39.1"}, ["instances[1].bill_length_mm: must be a number"]),
        ({"bill_length_mm": True}, ["instances[1].bill_length_mm: must be a number"]),
        ({"bill_length_mm": [1.0]}, ["instances[1].bill_length_mm: must be a number"]),
        ({"bill_length_mm": 1e200}, ["instances[1].bill_length_mm: 1e+200 is beyond"]),
        ({"year": None}, ["instances[1].year: missing", "'year' may not be missing"]),
        ({"year": "2007"}, ["instances[1].year: must be a number"]),
        ({"island": None}, ["instances[1].island: missing", "'island' may not be missing"]),
        ({"island": True}, ["instances[1].island: must be text", "Torgersen", "a boolean true"]),
        ({"island": {"name": "Dream"}}, ["instances[1].island: must be text", "an object"]),
        ({"island": ["Dream"]}, ["instances[1].island: must be text", "an array"]),
        ({"sex": False}, ["instances[1].sex: must be text", "female, male"]),
        ({"colour": "red"}, ["instances[1]: unknown feature 'colour'"]),
    ],
)
def test_bad_typed_values_in_json_name_the_row_and_column(
    penguins: TestClient, row: dict[str, Any], change: dict[str, Any], fragments: list[str]
) -> None:
    bad = {**row, **change}
    assert_error(penguins.post("/predict", json={"instances": [row, bad]}), 422, *fragments)
    one = penguins.post("/predict", json={"features": bad})
    assert_error(one, 422, *(f.replace("instances[1]", "features") for f in fragments))


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        # not JSON, but Python's reader takes them: still no number where a category goes
        (b'"island": NaN', "features.island: must be text"),
        (b'"island": Infinity', "features.island: must be text"),
        (b'"island": 1e999', "features.island: must be text"),
        # NaN is no missing value (null is), even where one may be missing
        (b'"bill_length_mm": NaN', "features.bill_length_mm: must be a finite number"),
        (b'"bill_length_mm": -Infinity', "features.bill_length_mm: must be a finite number"),
        (b'"bill_length_mm": ' + b"9" * 400, "features.bill_length_mm: "),
    ],
)
def test_hostile_json_values_of_typed_columns(
    penguins: TestClient, row: dict[str, Any], raw: bytes, fragment: str
) -> None:
    name = raw.split(b'"')[1].decode()
    body = json.dumps({"features": {k: v for k, v in row.items() if k != name}})
    text = body[:-2] + ", " + raw.decode() + "}}"
    r = penguins.post("/predict", content=text, headers={"content-type": "application/json"})
    assert_error(r, 422, fragment)


def test_numbers_in_a_category_column_are_taken_as_their_text(
    penguins: TestClient, row: dict[str, Any]
) -> None:
    # a number is no error: it is the text of it, a category the model never saw here
    for value in (3, 2.5, 10**30):
        r = penguins.post("/predict", json={"features": {**row, "island": value}})
        assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (
            "Torgersen,long,18.7,181.0,3750.0,male,2007",
            "csv line 3, column 'bill_length_mm': 'long'",
        ),
        ("Torgersen,39.1,18.7,181.0,3750.0,male,", "csv line 3, column 'year': missing"),
        (",39.1,18.7,181.0,3750.0,male,2007", "csv line 3, column 'island': missing"),
        ("Torgersen,nan,18.7,181.0,3750.0,male,2007", "column 'bill_length_mm': must be a finite"),
        ("Torgersen,inf,18.7,181.0,3750.0,male,2007", "column 'bill_length_mm': must be a finite"),
        (
            "Torgersen,1e200,18.7,181.0,3750.0,male,2007",
            "column 'bill_length_mm': 1e+200 is beyond",
        ),
        ("Torgersen,39.1,18.7,181.0,3750.0,male", "csv line 3: expected 7 values, got 6"),
        ('Torgersen,"39.1,18.7,181.0,3750.0,male,2007', "csv"),
    ],
)
def test_bad_typed_csv_cells_name_the_line_and_column(
    penguins: TestClient, line: str, fragment: str
) -> None:
    header = "island,bill_length_mm,bill_depth_mm,flipper_length_mm,body_mass_g,sex,year"
    good = "Torgersen,39.1,18.7,181.0,3750.0,male,2007"
    body = "\n".join([header, good, line]) + "\n"
    r = penguins.post("/predict", content=body, headers={"content-type": "text/csv"})
    assert_error(r, 422, fragment)


def test_a_csv_of_a_mixed_model_takes_any_column_order_and_spaces(penguins: TestClient) -> None:
    body = "year,sex,island,bill_length_mm,bill_depth_mm,flipper_length_mm,body_mass_g\n"
    body += "2007,,Dream,39.1,, 181.0 ,3750\n"
    r = penguins.post("/predict", content=body, headers={"content-type": "text/csv"})
    assert r.status_code == 200, r.text


def _v2(penguins: TestClient, inputs: list[dict[str, Any]], **kw: Any) -> Any:
    return penguins.post("/v2/models/mlplatform/infer", json={"inputs": inputs}, **kw)


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        ({"island": {"shape": [2, 2]}}, ["inputs[island].shape: must be [n] or [n, 1]"]),
        ({"island": {"shape": [0]}}, ["inputs[island].shape: must be [n] or [n, 1] with n >= 1"]),
        ({"island": {"shape": []}}, ["inputs[island].shape"]),
        ({"year": {"shape": [3]}}, ["inputs[year].shape: 3 rows, but 'island' has 2"]),
        ({"island": {"datatype": "BOOL"}}, ["inputs[island].datatype: 'BOOL' is not supported"]),
        ({"year": {"datatype": "BYTES"}}, ["inputs[year].datatype: 'BYTES'", "a number feature"]),
        ({"island": {"data": ["Dream"]}}, ["inputs[island].data: 1 values do not fill shape [2"]),
        ({"island": {"data": [True, "Dream"]}}, ["inputs[island].data[0]: must be text"]),
        ({"island": {"data": [{"a": 1}, "Dream"]}}, ["inputs[island].data[0]: must be text"]),
        ({"island": {"data": [[["Dream"]], ["Dream"]]}}, ["inputs[island].data[0]: must be text"]),
        ({"island": {"data": [["Dream", "x"], ["Dream"]]}}, ["inputs[island].data: must be flat"]),
        ({"island": {"data": "Dream"}}, ["inputs[island].data: must be an array"]),
        ({"island": {"data": None}}, ["inputs[island].data: missing"]),
        ({"island": {"data": ["Dream", None]}}, ["inputs[island].data[1]: missing"]),
        ({"year": {"data": [2007, "2008"]}}, ["inputs[year].data[1]: must be a number"]),
        ({"year": {"data": [None, 2008]}}, ["inputs[year].data[0]: missing"]),
        ({"year": {"data": [2007, 1e200]}}, ["inputs[year].data[1]: 1e+200 is beyond"]),
        ({"body_mass_g": {"data": [True, 1.0]}}, ["inputs[body_mass_g].data[0]: must be a number"]),
        ({"year": {"name": "colour"}}, ["inputs[colour]: unknown input 'colour'"]),
        ({"year": {"name": "island"}}, ["inputs[island]: the feature is sent twice"]),
    ],
)
def test_bad_per_feature_v2_inputs_name_the_input_and_row(
    penguins: TestClient, penguins_dataset, change: dict[str, Any], fragments: list[str]
) -> None:
    inputs = v2_inputs(penguins_dataset, rows_of(penguins_dataset, 2))
    for tensor in inputs:
        tensor.update(change.get(tensor["name"], {}))
    assert_error(_v2(penguins, inputs), 422, *fragments)


def test_a_missing_per_feature_input_is_named(penguins: TestClient, penguins_dataset) -> None:
    inputs = v2_inputs(penguins_dataset, rows_of(penguins_dataset, 2))
    r = _v2(penguins, [t for t in inputs if t["name"] not in ("year", "sex")])
    assert_error(r, 422, "inputs: no input for feature 'sex' (and 1 more)")
    assert_error(_v2(penguins, []), 422, "inputs")


def test_per_feature_inputs_in_binary(
    penguins: TestClient, penguins_dataset, penguins_trained
) -> None:
    rows = rows_of(penguins_dataset, 4)  # row 3: missing numbers (NaN) and sex (null)
    inputs = v2_inputs(penguins_dataset, rows)
    blobs = []
    for tensor in inputs:
        data = tensor.pop("data")
        if tensor["datatype"] == "BYTES":
            texts = [b"" if v is None else v.encode() for v in data]
            blob = b"".join(struct.pack("<I", len(t)) + t for t in texts)
            if None in data:  # BYTES in binary have no null: such an input goes as JSON
                tensor["data"], blob = data, b""
            else:
                tensor["parameters"] = {"binary_data_size": len(blob)}
        else:
            blob = np.array([np.nan if v is None else v for v in data], dtype="<f8").tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
        blobs.append(blob)
    header = json.dumps({"inputs": inputs}).encode()
    body = header + b"".join(blobs)
    headers = {"inference-header-content-length": str(len(header))}
    r = penguins.post("/v2/models/mlplatform/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    from tests.services.serving.test_tasks import expected_proba

    want = expected_proba(penguins_trained, penguins_dataset, rows)
    np.testing.assert_allclose(
        np.reshape(outputs["probabilities"]["data"], (4, 3)), want, rtol=1e-6
    )
    # an element whose length runs past the data, and bytes nobody accounts for
    island = next(t for t in inputs if t["name"] == "island")
    cut = header.replace(
        f'"binary_data_size": {island["parameters"]["binary_data_size"]}'.encode(),
        f'"binary_data_size": {island["parameters"]["binary_data_size"] - 2}'.encode(),
        1,
    )
    headers = {"inference-header-content-length": str(len(cut))}
    r = penguins.post("/v2/models/mlplatform/infer", content=cut + b"".join(blobs), headers=headers)
    assert_error(r, 422, "inputs[island]: binary BYTES element")
    r = penguins.post(
        "/v2/models/mlplatform/infer",
        content=body + b"xx",
        headers={"inference-header-content-length": str(len(header))},
    )
    assert_error(r, 422, "2 bytes follow the JSON header")


def test_the_typed_json_decoder_reads_what_the_checked_path_reads(
    penguins: TestClient, penguins_dataset
) -> None:
    codec = RowsCodec.of(penguins.app.state.service.runtime.served)  # type: ignore[attr-defined]
    rows = rows_of(penguins_dataset, 8)
    rows[1]["island"] = "Atlantis"
    rows[2]["island"] = 7
    rows[5] = dict(reversed(list(rows[5].items())))
    body = json.dumps({"instances": rows}).encode()
    fast = codec.fast(body)
    assert fast is not None and fast[1] == "instances"
    np.testing.assert_array_equal(fast[0], codec.validate(json.loads(body)["instances"]))
    assert fast[0][1, 0] == 3 and fast[0][2, 0] == 3  # unseen: len(categories)
    assert math.isnan(fast[0][3, 1]) and math.isnan(fast[0][3, 5])
    for bad in ({**rows[0], "island": True}, {**rows[0], "year": None}, {**rows[0], "x": 1}):
        assert codec.fast(json.dumps({"features": bad}).encode()) is None


# Any JSON value in any cell: a 200 or a 422 naming that row and column, never a 500.
CELLS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(column=st.sampled_from(["island", "bill_length_mm", "sex", "year"]), value=CELLS)
def test_any_value_in_any_typed_cell_is_answered_or_named(
    penguins: TestClient, row: dict[str, Any], column: str, value: Any
) -> None:
    body = json.dumps({"instances": [row, {**row, column: value}]})
    r = penguins.post("/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code in (200, 422), r.text
    if r.status_code == 422:
        assert_error(r, 422, f"instances[1].{column}")
    body = json.dumps({"inputs": v2_inputs_one(row, column, value)})
    r = penguins.post(
        "/v2/models/mlplatform/infer", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code in (200, 422), r.text
    if r.status_code == 422:
        assert_error(r, 422, f"inputs[{column}]")


def v2_inputs_one(row: dict[str, Any], column: str, value: Any) -> list[dict[str, Any]]:
    out = []
    for name, v in row.items():
        category = name in ("island", "sex")
        out.append(
            {
                "name": name,
                "datatype": "BYTES" if category else "FP64",
                "shape": [1],
                "data": [value if name == column else v],
            }
        )
    return out


def test_regression_feedback_with_features_refuses_a_bad_row_and_target(
    local_store: Store, diabetes_trained, diabetes_dataset
) -> None:
    publish_trained(ModelRegistry(local_store, SIGNING_KEY), diabetes_trained, diabetes_dataset)
    row = rows_of(diabetes_dataset, 1)[0]
    with TestClient(create_app(serving_settings(), local_store)) as c:
        r = c.post(
            "/feedback", headers=WRITER, json={"features": {**row, "bmi": "fat"}, "target": 1}
        )
        assert_error(r, 422, "features.bmi: must be a number")
        r = c.post("/feedback", headers=WRITER, json={"features": row, "target": "1.5"})
        assert_error(r, 422, "target: must be a number", "regression")
        r = c.post(
            "/feedback", headers=WRITER, json={"features": row, "target": 1, "prediction": "x"}
        )
        assert_error(r, 422, "prediction: must be a number")
        r = c.post("/predict", json={"features": {**row, "bmi": None}})
        assert_error(r, 422, "features.bmi: must be a number, got null")
