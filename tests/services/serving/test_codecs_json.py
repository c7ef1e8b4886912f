"""The JSON rows codec (``codecs/json_rows``): bodies of ``/predict`` in, their answers out."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from mlplatform_common import datalog
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import Store
from mlplatform_serving.app import create_app
from mlplatform_serving.codecs import json_rows
from mlplatform_serving.codecs.json_rows import RowsCodec
from mlplatform_serving.runtime import BatchResult
from tests.conftest import SIGNING_KEY, publish_trained
from tests.services.serving.conftest import assert_error, serving_settings


@pytest.mark.parametrize(
    ("make_body", "fragments"),
    [
        (lambda r: {"features": {**r, "colour": 1}}, ["features: unknown feature 'colour'"]),
        (
            lambda r: {"features": {k: v for k, v in r.items() if k != "mean_radius"}},
            ["missing feature 'mean_radius'"],
        ),
        (
            lambda r: {"features": {**r, "mean_radius": "big"}},
            ["features.mean_radius: must be a number"],
        ),
        (
            lambda r: {"features": {**r, "mean_radius": True}},
            ["features.mean_radius: must be a number"],
        ),
        (
            lambda r: {"features": {**r, "mean_radius": None}},
            ["features.mean_radius: must be a number, got null (an empty value)"],
        ),
        (
            lambda r: {"features": {**r, "mean_radius": "big"}},
            ['features.mean_radius: must be a number, got a string "big"'],
        ),
        (lambda r: {"instances": [r, {**r, "mean_area": [1]}]}, ["instances[1].mean_area"]),
        (lambda r: {"instances": []}, ["instances: empty batch"]),
        (lambda r: {"instances": [r] * 11}, ["11 rows is over the limit of 10"]),
        (lambda r: {"instances": [1, 2]}, ["instances[0]: must be an object"]),
        (
            lambda r: {"instances": [r, {**r, "mean_area": 1e200}]},
            ["instances[1].mean_area: 1e+200 is beyond ±1e+150, too large to predict or train on"],
        ),
        (lambda r: {"features": {**r, "mean_radius": -1e151}}, ["features.mean_radius: -1e+151"]),
        (lambda r: {"features": r, "instances": [r]}, ["exactly one of"]),
        (lambda r: {}, ["exactly one of"]),
        (lambda r: {"rows": [r]}, ["rows: Extra inputs are not permitted"]),
        (lambda r: [r], ["body"]),
    ],
)
def test_bad_json_input_is_a_422_naming_the_field(
    model_store: Store, rows, make_body, fragments
) -> None:
    with TestClient(create_app(serving_settings(max_batch_rows=10), model_store)) as c:
        assert_error(c.post("/predict", json=make_body(rows[0])), 422, *fragments)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'{"features": {"mean_radius": NaN}}', "features.mean_radius: must be a finite number"),
        (b'{"features": {"mean_radius": Infinity}}', "must be a finite number"),
        (b'{"features": {"mean_radius": 1e999}}', "must be a finite number"),
        (b'{"features": {"mean_radius": ' + b"9" * 400 + b"}}", "too large"),
        (b'{"features": ', "not valid JSON"),
        (b"", "body: empty"),
        (b"[" * 100_000 + b"]" * 100_000, "body"),
        (
            '{"features": {"r\u00e9sum\u00e9 \U0001f600": 1}}'.encode(),
            "unknown feature 'r\u00e9sum\u00e9 \U0001f600'",
        ),
        (b"\xff\xfe", "not valid JSON"),
        # invalid UTF-8 in a key: msgspec raised UnicodeDecodeError, which was a 500
        (b'{"features": {"\xff": 1}}', "not valid JSON"),
        (b'{"instances": [{"\xc3": 1}]}', "not valid JSON"),
        (b'{"feat\xffures": {}}', "not valid JSON"),
    ],
)
def test_hostile_json_bodies(client: TestClient, raw: bytes, fragment: str) -> None:
    response = client.post("/predict", content=raw, headers={"content-type": "application/json"})
    assert_error(response, 422, fragment)


def test_unsupported_content_type(client: TestClient, rows) -> None:
    r = client.post("/predict", content=b"x", headers={"content-type": "application/xml"})
    assert_error(r, 415, "content-type: 'application/xml' is not supported")
    # Media types are case-insensitive (RFC 9110).
    body = json.dumps({"features": rows[0]}).encode()
    r = client.post("/predict", content=body, headers={"content-type": "Application/JSON"})
    assert r.status_code == 200, r.text
    csv_body = ",".join(map(str, rows[0].values())).encode()
    r = client.post("/predict", content=csv_body, headers={"content-type": "TEXT/CSV"})
    assert r.status_code == 200, r.text


def test_the_typed_json_decoder_reads_what_the_checked_path_reads(model_store: Store, rows) -> None:
    with TestClient(create_app(serving_settings(), model_store)) as c:
        codec = RowsCodec.of(c.app.state.service.runtime.served)
        first = next(iter(rows[0]))
        good = [
            rows[0],
            {k: int(v) for k, v in rows[1].items()},  # integers are numbers too
            {**rows[2], first: 10**30},
            dict(reversed(list(rows[3].items()))),  # any key order
        ]
        body = json.dumps({"instances": good}).encode()
        X, field = codec.fast(body)
        assert field == "instances"
        assert np.array_equal(X, codec.validate(json.loads(body)["instances"]))
        X, field = codec.fast(json.dumps({"features": rows[4]}).encode())
        assert field == "features" and np.array_equal(X, codec.validate([rows[4]]))
        # Anything else is left to the checked path, which names the problem (tests above).
        no_first = {k: v for k, v in rows[0].items() if k != first}
        refused = [
            {"instances": []},
            {},
            {"features": rows[0], "instances": [rows[1]]},
            {"instances": [rows[0], {**rows[1], "extra": 1}]},
            {"instances": [rows[0], {**rows[1], first: True}]},
            {"instances": [{**rows[0], first: "1.5"}]},
            {"features": no_first},
            {"features": None},
            {"instances": rows[0]},
            [rows[0]],
        ]
        bodies = [json.dumps(b).encode() for b in refused] + [
            json.dumps({"features": {**rows[0], first: 1.0}}).replace("1.0", "1e400").encode(),
            json.dumps({"features": {**rows[0], first: 1.0}}).replace("1.0", "NaN").encode(),
            b"",
            b"not json",
        ]
        for b in bodies:
            assert codec.fast(b) is None, b[:80]


def test_feature_names_with_quotes_backslashes_and_spaces_are_served(
    local_store: Store, shipped_dataset
) -> None:
    # msgspec refuses '"' and '\' in a struct's field names: the serving exited at start-up
    # with such a version (and /admin/reload to it was a 500). Its JSON now takes the checked
    # path. A CSV header kept the spaces around a name and was not recognised.
    from mlplatform_retrainer.train import TrainConfig, train

    names = {"mean_radius": 'mean "radius"', "mean_texture": "texture\\cm", "mean_area": " area "}
    X = shipped_dataset.X.rename(columns=names)
    trained = train(X, shipped_dataset.y, TrainConfig())
    dataset = dataclasses.replace(shipped_dataset, X=X)
    publish_trained(ModelRegistry(local_store, SIGNING_KEY), trained, dataset)
    with TestClient(create_app(serving_settings(), local_store)) as c:
        assert c.get("/ready").status_code == 200
        rows = X.head(3)
        expected = trained.pipeline.predict(rows).tolist()
        r = c.post("/predict", json={"instances": rows.to_dict(orient="records")})
        assert [p["label"] for p in r.json()["predictions"]] == expected, r.text
        with_header = rows[list(reversed(rows.columns))].to_csv(index=False)
        assert '"mean ""radius"""' in with_header and ", area ," in with_header
        r = c.post("/predict", content=with_header, headers={"content-type": "text/csv"})
        assert [p["label"] for p in r.json()["predictions"]] == expected, r.text


@pytest.mark.parametrize(
    ("classes", "names", "n", "backup"),
    [
        ([0, 1], ["benign", "malignant"], 1000, False),
        (['a"b', "é"], ['quote "name"', "accent é"], 3, True),
        ([3, 7, 9], ["x", "y", "z"], 1, False),
    ],
)
def test_spliced_answers_equal_orjson_of_the_row_dicts(
    classes: list[Any], names: list[str], n: int, backup: bool
) -> None:
    rng = np.random.default_rng(2)
    proba = rng.dirichlet(np.ones(len(classes)), size=n)
    proba[0] = [1.0] + [0.0] * (len(classes) - 1)  # ends of the range, and a tiny value
    if n > 2:
        proba[1] = [1e-20, 1 - 1e-20] + [0.0] * (len(classes) - 2)
    served = SimpleNamespace(
        classes=classes,
        class_names=names,
        class_keys=[str(c) for c in classes],
        version="v12",
    )
    result = BatchResult(served, np.zeros((n, 2)), proba, proba.argmax(axis=1), backup)  # type: ignore[arg-type]
    ids = datalog.new_prediction_ids(n, 1_800_000_000.0)
    dicts = json_rows.answer_dicts(result, ids)
    assert dicts[0] == {
        "prediction_id": ids[0],
        "label": classes[0],
        "label_name": names[0],
        "probability": 1.0,
        "probabilities": {str(c): float(c == classes[0]) for c in classes},
        "model_version": "v12",
        "backup": backup,
    }
    assert orjson.dumps(json_rows.answers_spliced(result, ids)) == orjson.dumps(dicts)
    assert orjson.dumps(json_rows.answers(result, ids)) == orjson.dumps(dicts)
    assert (
        orjson.dumps(json_rows.answers_spliced(result, datalog.new_prediction_ids(0, 1.0))) == b"[]"
    )


@pytest.mark.parametrize("n", [1, 17, 1000])
@pytest.mark.parametrize("backup", [False, True])
def test_spliced_regression_answers_equal_orjson_of_the_row_dicts(n: int, backup: bool) -> None:
    rng = np.random.default_rng(3)
    value = rng.normal(150, 80, n)
    value[0] = -0.0 if n > 1 else 1e-300  # the ends orjson writes its own way
    if n > 2:
        value[1], value[2] = 1e300, 151.0
    served = SimpleNamespace(classes=[], class_names=[], class_keys=[], version="v3")
    result = BatchResult(
        served,  # type: ignore[arg-type]
        np.zeros((n, 2)),
        np.empty((n, 0)),
        np.zeros(n, dtype=np.intp),
        backup,
        None,
        value,
    )
    ids = datalog.new_prediction_ids(n, 1_800_000_000.0)
    dicts = json_rows.answer_dicts(result, ids)
    assert dicts[-1] == {
        "prediction_id": ids[n - 1],
        "value": float(value[-1]),
        "model_version": "v3",
        "backup": backup,
    }
    assert orjson.dumps(json_rows.values_spliced(result, ids)) == orjson.dumps(dicts)
    assert orjson.dumps(json_rows.answers(result, ids)) == orjson.dumps(dicts)
