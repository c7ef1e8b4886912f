"""Every endpoint through the ASGI app (the lifespan runs, so the model really loads)."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import logging
import threading
import time
import warnings
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from mlplatform_common import datalog, keys
from mlplatform_common.errors import StorageUnavailable
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.schema import embed, embedding_columns
from mlplatform_common.storage import Store
from mlplatform_retrainer import onnx_export
from mlplatform_serving.app import create_app
from tests.conftest import SIGNING_KEY, publish_trained
from tests.services.serving.conftest import ADMIN, serving_settings


def assert_error(response, status: int, *fragments: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "type"}, body
    for fragment in fragments:
        assert fragment in body["error"], body
    assert "Traceback" not in response.text


# -- health ----------------------------------------------------------------------------


def test_health_and_ready_report_the_loaded_version(client: TestClient) -> None:
    assert client.get("/health").json() == {
        "status": "ok",
        "model_loaded": True,
        "model_version": "v1",
    }
    assert client.get("/ready").json().items() >= {"ready": True, "model_version": "v1"}.items()
    for path in ("/health", "/ready"):  # uptime checkers probe with HEAD
        head = client.head(path)
        assert head.status_code == 200 and head.content == b""


def test_not_ready_without_a_model_and_says_why(local_store: Store) -> None:
    with TestClient(create_app(serving_settings(), local_store)) as c:
        assert c.get("/health").json()["model_loaded"] is False
        assert_error(c.get("/ready"), 503, "no model is in production yet")
        assert_error(c.post("/predict", json={"features": {}}), 503)


def test_admin_unpin_lifts_the_hold_and_needs_the_token(model_store: Store) -> None:
    registry = ModelRegistry(model_store, SIGNING_KEY)
    registry.promote("v1", hold="pinned to v1 by hand")
    with TestClient(create_app(serving_settings(), model_store)) as c:
        assert c.get("/models").json()["production"]["hold"]["reason"] == "pinned to v1 by hand"
        assert_error(c.post("/admin/unpin"), 401)
        assert registry.hold() is not None
        r = c.post("/admin/unpin", headers={"Authorization": "Bearer test-admin-token"})
        assert r.status_code == 200, r.text
        assert r.json()["production"]["version"] == "v1" and "hold" not in r.json()["production"]
    assert registry.hold() is None and registry.production_version() == "v1"


def test_waiting_for_a_first_model_is_a_warning_that_names_the_bootstrap(
    local_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    # In a cluster serving starts while the bootstrap Job trains v1: no ERROR, no "make train".
    with (
        caplog.at_level(logging.WARNING, logger="mlplatform"),
        TestClient(create_app(serving_settings(), local_store)) as c,
    ):
        assert_error(c.get("/ready"), 503, "bootstrap Job publishes the first")
    loads = [r for r in caplog.records if "model load failed" in r.getMessage()]
    assert loads and {r.levelno for r in loads} == {logging.WARNING}


def test_a_tampered_model_stays_not_ready_naming_the_file(model_store: Store) -> None:
    key = keys.model_file("v1", "model.joblib")
    data = bytearray(model_store.get(key))
    data[200] ^= 1
    model_store.put(key, bytes(data))
    with TestClient(create_app(serving_settings(), model_store)) as c:
        assert_error(c.get("/ready"), 503, "IntegrityError", "models/v1/model.joblib")


def test_becomes_ready_when_the_first_model_is_published_later(
    local_store: Store, trained, shipped_dataset
) -> None:
    with TestClient(create_app(serving_settings(), local_store)) as c:
        assert c.get("/ready").status_code == 503
        publish_trained(ModelRegistry(local_store, SIGNING_KEY), trained, shipped_dataset)
        deadline = time.monotonic() + 10
        while c.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert c.get("/ready").json()["model_version"] == "v1"


def test_model_version_env_pins_a_version(model_store: Store, trained, shipped_dataset) -> None:
    publish_trained(ModelRegistry(model_store, SIGNING_KEY), trained, shipped_dataset)  # v2 in prod
    with TestClient(create_app(serving_settings(model_version="v1"), model_store)) as c:
        assert c.get("/ready").json()["model_version"] == "v1"
        assert c.get("/model").json()["pinned"] is True


# -- predict ---------------------------------------------------------------------------


def test_predict_one_row(client: TestClient, rows, trained) -> None:
    body = client.post("/predict", json={"features": rows[0]}).json()
    (pred,) = body["predictions"]
    expected = trained.pipeline.predict_proba(pd.DataFrame([rows[0]]))[0]
    assert pred["label"] == int(np.argmax(expected))
    assert pred["label_name"] == ["malignant", "benign"][pred["label"]]
    assert pred["probabilities"] == pytest.approx({"0": expected[0], "1": expected[1]}, abs=1e-6)
    assert pred["probability"] == pytest.approx(expected.max(), abs=1e-6)
    assert pred["model_version"] == "v1" and pred["backup"] is False
    assert len(pred["prediction_id"]) == 32


def test_predict_many_rows_matches_the_pipeline(client: TestClient, rows, trained) -> None:
    body = client.post("/predict", json={"instances": rows[:50]}).json()
    labels = [p["label"] for p in body["predictions"]]
    assert labels == trained.pipeline.predict(pd.DataFrame(rows[:50])).tolist()
    assert len({p["prediction_id"] for p in body["predictions"]}) == 50


def test_predict_csv_with_and_without_header(client: TestClient, rows, trained) -> None:
    frame = pd.DataFrame(rows[:5])
    expected = trained.pipeline.predict(frame).tolist()
    with_header = frame[list(reversed(frame.columns))].to_csv(index=False)  # any column order
    without = frame.to_csv(index=False, header=False)
    old_mac = without.replace("\n", "\r")  # lines ended by \r alone
    for body in (with_header, without, old_mac):
        r = client.post("/predict", content=body, headers={"content-type": "text/csv"})
        assert r.status_code == 200, r.text
        assert [p["label"] for p in r.json()["predictions"]] == expected


class Broken:
    """A primary engine that raises: the backup answers."""

    name = "onnxruntime"

    def run(self, X):  # type: ignore[no-untyped-def]
        raise RuntimeError("primary is broken")


def test_backup_answers_when_the_primary_raises(client: TestClient, rows, trained) -> None:
    runtime = client.app.state.service.runtime  # type: ignore[attr-defined]

    runtime.served.engine = Broken()
    body = client.post("/predict", json={"instances": rows[:3]}).json()
    assert body["backup"] is True
    assert all(p["backup"] for p in body["predictions"])
    assert [p["label"] for p in body["predictions"]] == trained.backup.predict(
        pd.DataFrame(rows[:3])
    ).tolist()
    assert "mlplatform_backup_predictions_total" in client.get("/metrics").text


# -- bad input: 4xx naming the field, never 500 -----------------------------------------


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
    ("csv", "fragment"),
    [
        ("1,2,3\n", "csv line 1: expected 30 values, got 3"),
        ("", "csv: no data rows"),
        ("\n\n", "csv: no data rows"),
        ('"unterminated,1\n', "csv"),
        ("abc," * 29 + "abc\n", "csv line 1, column 'mean_radius': 'abc' is not a number"),
        ("nan," * 29 + "nan\n", "must be a finite number"),
        ("mean_radius,mean_texture\n1,2\n", "csv header: missing feature"),
        ("mean_radius,colour\n1,2\n", "csv header: unknown column 'colour'"),
        (
            ",mean_radius,mean_texture\n0,1,2\n",
            "csv header: column 1 has no name (an index column?",
        ),
        ("1e200," + "1," * 28 + "1\n", "column 'mean_radius': '1e200' is beyond ±1e+150"),
        # float() reads both, numpy's reader neither: digit separators, non-ASCII digits
        ("1_000," + "1," * 28 + "1\n", "column 'mean_radius': '1_000' is not a number"),
        ("\u0663," + "1," * 28 + "1\n", "column 'mean_radius': '\u0663' is not a number"),
        ("1," * 29 + '"1"2\n', "csv: malformed"),
    ],
)
def test_malformed_csv_is_a_422(client: TestClient, csv: str, fragment: str) -> None:
    response = client.post("/predict", content=csv.encode(), headers={"content-type": "text/csv"})
    assert_error(response, 422, fragment)


def test_csv_over_the_row_limit_is_refused_before_the_rest_is_read(
    model_store: Store, rows
) -> None:
    line = ",".join(map(str, rows[0].values()))
    header = ",".join(rows[0])
    csv_ct = {"content-type": "text/csv"}
    with TestClient(create_app(serving_settings(max_batch_rows=10), model_store)) as c:
        ok = c.post("/predict", content="\n".join([header] + [line] * 10), headers=csv_ct)
        assert ok.status_code == 200 and len(ok.json()["predictions"]) == 10, ok.text
        r = c.post("/predict", content="\n".join([line] * 11), headers=csv_ct)
        assert_error(r, 422, "csv: 11 rows is over the limit of 10 per request")
        # Reading stopped at the limit: the malformed end of the body was never parsed.
        body = "\n".join([line] * 12 + ['"unterminated,1'])
        r = c.post("/predict", content=body, headers=csv_ct)
        assert_error(
            r, 422, "csv: over the limit of 10 rows per request (reading stopped at line 12)"
        )
        # Blank lines count too, twice the limit (they were read without end).
        r = c.post("/predict", content=line + "\n" * 30 + '"unterminated,1', headers=csv_ct)
        assert_error(
            r, 422, "csv: over the limit of 10 rows per request (reading stopped at line 23)"
        )


def test_a_big_csv_is_parsed_off_the_event_loop_with_the_same_answer(
    client: TestClient, rows, trained
) -> None:
    from mlplatform_serving.routes.predict import CSV_ON_THE_LOOP_BYTES

    runtime = client.app.state.service.runtime  # type: ignore[attr-defined]
    parse, threads = runtime.parse_csv, []

    def parse_csv(*args: Any) -> Any:
        threads.append(threading.get_ident())
        return parse(*args)

    runtime.parse_csv = parse_csv
    one = pd.DataFrame(rows[:1]).to_csv(index=False)
    assert client.post("/predict", content=one, headers={"content-type": "text/csv"}).is_success
    frame = pd.DataFrame([rows[i % len(rows)] for i in range(3000)])
    body = frame.to_csv(index=False)
    assert len(body) > CSV_ON_THE_LOOP_BYTES
    r = client.post("/predict", content=body, headers={"content-type": "text/csv"})
    assert r.status_code == 200, r.text
    on_the_loop, big = threads
    assert big != on_the_loop  # a worker thread: the loop kept answering meanwhile
    labels = [p["label"] for p in r.json()["predictions"]]
    assert labels == trained.pipeline.predict(frame).tolist()
    bad = body + "1,2\n"
    r = client.post("/predict", content=bad, headers={"content-type": "text/csv"})
    assert_error(r, 422, "csv line 3002: expected 30 values, got 2")


def test_csv_rows_with_embedded_quotes_and_wrong_counts(client: TestClient, rows) -> None:
    good = ",".join(str(v) for v in rows[0].values())
    body = f'{good}\n"1,5",{good}\n'
    assert_error(
        client.post("/predict", content=body.encode(), headers={"content-type": "text/csv"}),
        422,
        "csv line 2: expected 30 values, got 31",
    )


def test_unsupported_content_type(client: TestClient, rows) -> None:
    r = client.post("/predict", content=b"x", headers={"content-type": "application/xml"})
    assert_error(r, 422, "content-type: 'application/xml' is not supported")
    # Media types are case-insensitive (RFC 9110).
    body = json.dumps({"features": rows[0]}).encode()
    r = client.post("/predict", content=body, headers={"content-type": "Application/JSON"})
    assert r.status_code == 200, r.text
    csv_body = ",".join(map(str, rows[0].values())).encode()
    r = client.post("/predict", content=csv_body, headers={"content-type": "TEXT/CSV"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("path", ["/predict", "/feedback", "/v2/models/mlplatform/infer"])
def test_a_compressed_body_is_a_415_naming_the_encoding(client: TestClient, path: str) -> None:
    r = client.post(
        path,
        content=gzip.compress(b'{"features": {}}'),
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert_error(r, 415, "content-encoding: 'gzip' is not supported; send the body uncompressed")
    r = client.post(path, content=b"{}", headers={"content-encoding": "identity"})
    assert r.status_code == 422, r.text  # identity is no encoding: the body is read


def test_body_over_the_limit_is_413(model_store: Store, rows) -> None:
    with TestClient(create_app(serving_settings(max_body_bytes=2000), model_store)) as c:
        assert_error(
            c.post("/predict", json={"instances": rows[:20]}), 413, "over the limit of 2000 bytes"
        )
        # Without a content-length header (chunked), the streamed size is counted.
        chunks = (
            json.dumps({"instances": rows[:20]}).encode()[i : i + 500]
            for i in range(0, 20_000, 500)
        )
        assert_error(c.post("/predict", content=chunks), 413, "over the limit")
        assert c.post("/predict", json={"features": rows[0]}).status_code == 200


def test_unknown_routes_and_methods_use_the_error_body(client: TestClient) -> None:
    assert_error(client.get("/nothing-here"), 404, "Not Found")
    assert_error(client.get("/predict"), 405, "Method Not Allowed")
    assert_error(client.get("/reports?limit=0"), 422, "query.limit")


# -- feedback --------------------------------------------------------------------------


def test_feedback_by_prediction_id_is_stored_with_its_features(
    client: TestClient, model_store: Store, rows
) -> None:
    pid = client.post("/predict", json={"features": rows[3]}).json()["predictions"][0][
        "prediction_id"
    ]
    r = client.post("/feedback", json={"prediction_id": pid, "target": 1})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["stored"] is True and body["labelled_since_training"] == 1
    stored = datalog.read_feedback(model_store)
    assert list(stored["prediction_id"]) == [pid]
    assert list(stored["target"]) == ["1"]
    assert stored.iloc[0]["mean_radius"] == rows[3]["mean_radius"]
    assert list(stored["feedback_id"]) == [body["feedback_id"]]


def test_feedback_is_judged_by_the_version_that_made_the_prediction(
    client: TestClient, model_store: Store, rows, shipped_dataset
) -> None:
    # A reload to a version of other classes and features came between the prediction and
    # its label: the label was checked against the new classes, and the row stored with no
    # features at all.
    from mlplatform_retrainer.train import TrainConfig, train

    answer = client.post("/predict", json={"features": rows[3]}).json()["predictions"][0]
    X = shipped_dataset.X.rename(columns=lambda c: "x_" + c)
    y = shipped_dataset.y.map({0: "no", 1: "yes"})
    other = dataclasses.replace(shipped_dataset, X=X, y=y, class_names={})
    publish_trained(ModelRegistry(model_store, SIGNING_KEY), train(X, y, TrainConfig()), other)
    assert client.post("/admin/reload", headers=ADMIN).json()["model_version"] == "v2"
    pid = answer["prediction_id"]
    r = client.post("/feedback", json={"prediction_id": pid, "target": "yes"})
    assert_error(r, 422, "target: 'yes' is not one of the classes [0, 1]", "of model v1")
    r = client.post("/feedback", json={"prediction_id": pid, "target": "benign"})
    assert r.status_code == 201 and r.json()["model_version"] == "v1", r.text
    (stored,) = datalog.read_feedback(model_store).to_dict(orient="records")
    assert stored["target"] == "1" and stored["prediction"] == str(answer["label"])
    assert stored["mean_radius"] == rows[3]["mean_radius"]  # v1's features
    # A row given with its features is the served version's: v2's classes.
    x_row = {"x_" + k: v for k, v in rows[3].items()}
    r = client.post("/feedback", json={"features": x_row, "prediction": "no", "target": "yes"})
    assert r.status_code == 201 and r.json()["model_version"] == "v2", r.text


def test_feedback_for_an_id_only_in_the_stored_log(model_store: Store, rows) -> None:
    with TestClient(create_app(serving_settings(), model_store)) as c:
        pid = c.post("/predict", json={"features": rows[0]}).json()["predictions"][0][
            "prediction_id"
        ]
    # A new process: empty memory, the id is found in the Parquet log flushed at shutdown.
    with TestClient(create_app(serving_settings(), model_store)) as c:
        r = c.post("/feedback", json={"prediction_id": pid, "target": "malignant"})
        assert r.status_code == 201, r.text
    assert list(datalog.read_feedback(model_store)["target"]) == ["0"]


def test_feedback_with_full_features_and_counting(client: TestClient, rows) -> None:
    for i in range(3):
        r = client.post("/feedback", json={"features": rows[i], "prediction": 1, "target": 0})
        assert r.status_code == 201
        assert r.json()["labelled_since_training"] == i + 1
    r = client.post("/feedback", json={"features": rows[4], "target": 1})  # prediction computed
    assert r.json()["labelled_since_training"] == 4


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"prediction_id": "f" * 32, "target": 1}, 404, "prediction_id 'ffff"),
        ({"target": 1}, 422, "give prediction_id, or features"),
        ({"prediction_id": "x"}, 422, "target: Field required"),
        ({"prediction_id": "x", "features": {}, "target": 1}, 422, "not both"),
        ({"features": {"mean_radius": 1}, "target": 1}, 422, "features: missing feature"),
        (
            {"prediction_id": "x" * 65, "target": 1},
            422,
            "prediction_id: String should have at most 64",
        ),
        ({"prediction_id": "x", "target": 1, "extra": 1}, 422, "extra: Extra inputs"),
    ],
)
def test_bad_feedback(
    client: TestClient, model_store: Store, body, status: int, fragment: str
) -> None:
    assert_error(client.post("/feedback", json=body), status, fragment)
    assert datalog.read_feedback(model_store).empty  # nothing half-stored


def test_feedback_with_values_no_model_can_train_on_is_refused(
    client: TestClient, model_store: Store, rows
) -> None:
    # With its own prediction, feedback calls no model: the row was stored, and every later
    # retrain and report failed on it.
    body = {"features": {**rows[0], "mean_area": 1e308}, "prediction": 0, "target": 0}
    assert_error(client.post("/feedback", json=body), 422, "features.mean_area: 1e+308 is beyond")
    assert datalog.read_feedback(model_store).empty


def test_retrain_starts_once_per_multiple_of_k(model_store: Store, rows) -> None:
    started: list[str] = []
    app = create_app(serving_settings(retrain_every=3), model_store)
    app.state.service.retrain_launcher = lambda reason, force: started.append(reason) or True
    with TestClient(app) as c:
        flags = [
            c.post("/feedback", json={"features": rows[i], "target": 1}).json()["retrain_started"]
            for i in range(7)
        ]
    assert flags == [False, False, True, False, False, True, False]
    assert started[0] == "3 labelled rows since v1 (k=3)"


# -- models, reports, metrics ----------------------------------------------------------


def test_model_card_and_history(
    client: TestClient, model_store: Store, trained, shipped_dataset
) -> None:
    card = client.get("/model").json()
    assert card["version"] == "v1" and card["production_version"] == "v1"
    assert [f["name"] for f in card["feature_schema"]][:2] == ["mean_radius", "mean_texture"]
    assert "signature" not in card and "files" not in card
    publish_trained(ModelRegistry(model_store, SIGNING_KEY), trained, shipped_dataset)
    history = client.get("/models").json()
    assert [v["version"] for v in history["versions"]] == ["v1", "v2"]
    assert history["production"]["version"] == "v2" and history["serving"] == "v1"
    assert history["versions"][1]["metrics"]["test"]["f1"] > 0.9


def test_reports_list_and_html(client: TestClient, model_store: Store) -> None:
    assert client.get("/reports").json() == []
    for rid in ("2026-11-01T00-00-00Z", "2026-11-02T00-00-00Z"):
        model_store.put_json(keys.report_file(rid, "summary.json"), {"drift_share": 0.1, "id": rid})
        model_store.put(keys.report_file(rid, "report.html"), f"<html>{rid}</html>".encode())
    listed = client.get("/reports").json()
    assert [r["id"] for r in listed] == ["2026-11-02T00-00-00Z", "2026-11-01T00-00-00Z"]
    page = client.get("/reports/2026-11-01T00-00-00Z")
    assert page.headers["content-type"].startswith("text/html") and "2026-11-01" in page.text
    assert client.get("/reports/2026-11-01T00-00-00Z/summary").json()["drift_share"] == 0.1
    assert_error(client.get("/reports/nope"), 404, "report 'nope' does not exist")
    assert_error(client.get("/reports/.."), 404)
    for long_id in ("x" * 300, "x" * 4100):  # past a file name's and a path's length: was a 500
        assert_error(client.get(f"/reports/{long_id}"), 404, "does not exist")
        assert_error(client.get(f"/reports/{long_id}/summary"), 404, "does not exist")
    assert client.get("/metrics/model").json()["latest_report"]["id"] == "2026-11-02T00-00-00Z"


def sample(text: str, name: str, **labels: str) -> float:
    """One sample's value from a Prometheus exposition (0 if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def test_prometheus_metrics_have_the_design_names(client: TestClient, rows) -> None:
    before = client.get("/metrics").text
    client.post("/predict", json={"instances": rows[:4]})
    client.post("/feedback", json={"features": rows[0], "target": 0})
    text = client.get("/metrics").text
    route = {"route": "/predict", "method": "POST", "status": "200"}
    assert (
        sample(text, "mlplatform_http_requests_total", **route)
        - sample(before, "mlplatform_http_requests_total", **route)
        == 1
    )
    predicted = sum(
        sample(text, "mlplatform_predictions_total", model_version="v1", label=lbl)
        - sample(before, "mlplatform_predictions_total", model_version="v1", label=lbl)
        for lbl in ("0", "1")
    )
    assert predicted == 4  # the label /feedback computes for itself is not a served prediction
    assert (
        sample(text, "mlplatform_feedback_total") - sample(before, "mlplatform_feedback_total") == 1
    )
    assert sample(text, "mlplatform_model_info", version="v1") == 1
    assert sample(text, "mlplatform_model_load_seconds") > 0
    for name in (
        "mlplatform_http_request_duration_seconds_bucket",
        "mlplatform_prediction_probability_bucket",
    ):
        assert name in text, name
    assert "prediction_id" not in text  # no unbounded labels


def test_json_summaries(client: TestClient, rows) -> None:
    client.post("/predict", json={"instances": rows[:20]})
    client.post("/predict", json={"features": {"bad": 1}})
    system = client.get("/metrics/system").json()
    assert (
        system["requests"] >= 2
        and 0 < system["latency_seconds"]["p50"] <= system["latency_seconds"]["p99"]
    )
    assert system["client_error_rate"] > 0 and system["error_rate"] == 0
    kpis = client.get("/metrics/kpis").json()
    assert kpis["predictions"] == 20
    assert sum(kpis["class_distribution"].values()) == pytest.approx(1.0)
    assert 0.5 <= kpis["mean_confidence"] <= 1
    page1 = client.get("/metrics/feature-distribution?page=1&page_size=7").json()
    page5 = client.get("/metrics/feature-distribution?page=5&page_size=7").json()
    assert page1["total"] == 30 and len(page1["items"]) == 7 and len(page5["items"]) == 2
    item = page1["items"][0]
    assert item["feature"] == "mean_radius" and item["recent"]["rows"] == 20
    assert item["recent"]["mean"] == pytest.approx(pd.DataFrame(rows[:20])["mean_radius"].mean())
    assert_error(client.get("/metrics/feature-distribution?page=0"), 422, "query.page")


# -- admin -----------------------------------------------------------------------------


def test_admin_needs_the_token(client: TestClient) -> None:
    assert_error(client.post("/admin/reload"), 401, "bearer token")
    assert_error(client.post("/admin/reload", headers={"Authorization": "Bearer wrong"}), 401)
    assert client.post("/admin/reload", headers=ADMIN).status_code == 200


def test_admin_disabled_without_a_token_outside_dev_mode(model_store: Store) -> None:
    with TestClient(create_app(serving_settings(admin_token=None), model_store)) as c:
        assert_error(
            c.post("/admin/reload", headers=ADMIN), 401, "MLPLATFORM_ADMIN_TOKEN is not set"
        )


def test_reload_swaps_versions_and_refuses_a_bad_one(
    client: TestClient, model_store: Store, trained, shipped_dataset
) -> None:
    registry = ModelRegistry(model_store, SIGNING_KEY)
    publish_trained(registry, trained, shipped_dataset)
    r = client.post("/admin/reload", headers=ADMIN)
    assert r.json() == {"model_version": "v2", "previous_version": "v1"}
    assert client.get("/health").json()["model_version"] == "v2"
    assert_error(
        client.post("/admin/reload", headers=ADMIN, json={"version": "v9"}),
        404,
        "v9 does not exist",
    )
    assert_error(client.post("/admin/reload", headers=ADMIN, json={"version": 3}), 422, "version")
    for bad in ("v1\n", "", "../v1", "latest"):  # named as the field, not as a store key
        r = client.post("/admin/reload", headers=ADMIN, json={"version": bad})
        assert_error(r, 422, "version: String should match pattern")
    assert client.get("/health").json()["model_version"] == "v2"  # a failed reload keeps serving
    assert 'mlplatform_model_info{version="v2"} 1.0' in client.get("/metrics").text


def test_reload_with_another_stores_signature_is_refused(
    client: TestClient, model_store: Store, trained, shipped_dataset
) -> None:
    # A retrainer on another store once reloaded whatever served on its URL: that store's v2
    # is another model than this store's v2. It sends the manifest's HMAC; this one differs.
    registry = ModelRegistry(model_store, SIGNING_KEY)
    publish_trained(registry, trained, shipped_dataset)
    ours = registry.signature("v2")
    other = ("0" if ours[0] != "0" else "1") + ours[1:]
    r = client.post("/admin/reload", headers=ADMIN, json={"version": "v2", "signature": other})
    assert_error(r, 409, "version v2 in this serving's store", "its manifest signature differs")
    assert client.get("/health").json()["model_version"] == "v1"
    r = client.post("/admin/reload", headers=ADMIN, json={"version": "v2", "signature": ours})
    assert r.status_code == 200 and r.json()["model_version"] == "v2", r.text
    bad = client.post("/admin/reload", headers=ADMIN, json={"version": "v2", "signature": "x"})
    assert_error(bad, 422, "signature: String should match pattern")


def test_admin_retrain_without_a_launcher_is_503(client: TestClient) -> None:
    assert_error(client.post("/admin/retrain", headers=ADMIN), 503, "no retrain launcher")


# -- Open Inference Protocol v2 ---------------------------------------------------------


def test_v2_endpoints(client: TestClient, rows) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2/models/mlplatform").json()
    assert meta["inputs"][0]["shape"] == [-1, 30] and meta["versions"] == ["v1"]
    assert client.get("/v2/models/mlplatform/ready").json()["ready"] is True
    assert_error(client.get("/v2/models/other"), 404, "model 'other' does not exist")
    data = [list(r.values()) for r in rows[:3]]
    body = {"inputs": [{"name": "input-0", "shape": [3, 30], "datatype": "FP32", "data": data}]}
    out = client.post("/v2/models/mlplatform/infer", json=body).json()
    expected = [
        p["label"]
        for p in client.post("/predict", json={"instances": rows[:3]}).json()["predictions"]
    ]
    assert out["outputs"][0]["data"] == expected
    # FP64: the same rows as /predict reads them, so the same numbers exactly
    body["inputs"][0]["datatype"] = "FP64"
    label, proba, ids = client.post("/v2/models/mlplatform/infer", json=body).json()["outputs"]
    answers = client.post("/predict", json={"instances": rows[:3]}).json()["predictions"]
    assert label == {
        "name": "label",
        "datatype": "INT64",
        "shape": [3],
        "data": [a["label"] for a in answers],
    }
    assert proba["shape"] == [3, 2] and proba["datatype"] == "FP64"
    assert proba["data"] == [v for a in answers for v in a["probabilities"].values()]
    assert ids["shape"] == [3] and ids["datatype"] == "BYTES"
    key = ids["data"][0][:26]
    assert [datalog.prediction_batch(i) for i in ids["data"]] == [(key, 0), (key, 1), (key, 2)]
    # The versioned paths answer for the served version only (v99 was answered by v1).
    base = "/v2/models/mlplatform/versions"
    assert client.get(f"{base}/v1").json()["versions"] == ["v1"]
    assert client.get(f"{base}/v1/ready").json()["ready"] is True
    assert client.post(f"{base}/v1/infer", json=body).json()["outputs"][0]["data"] == expected
    gone = "model 'mlplatform' version 'v99' is not served here; this server serves v1"
    assert_error(client.get(f"{base}/v99"), 404, gone)
    assert_error(client.get(f"{base}/v99/ready"), 404, gone)
    assert_error(client.post(f"{base}/v99/infer", json=body), 404, gone)
    assert_error(client.get("/v2/models/other/versions/v1"), 404, "model 'other' does not exist")


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


# -- the fast path: ONNX Runtime when the version has a checked ONNX file -----------------


def test_a_version_with_a_checked_onnx_file_is_served_by_onnxruntime(
    client: TestClient, model_store: Store, rows, trained
) -> None:
    manifest = ModelRegistry(model_store, SIGNING_KEY).manifest("v1")
    assert manifest["onnx"]["max_abs_diff"] <= 1e-12  # a linear pipeline: exact to rounding
    assert "model.onnx" in manifest["files"]  # its sha256 is in the signed manifest
    body = client.post("/predict", json={"instances": rows[:40]}).json()
    assert body["engine"] == "onnxruntime"
    assert client.get("/model").json()["engine"] == "onnxruntime"
    expected = trained.pipeline.predict_proba(pd.DataFrame(rows[:40]))
    got = np.array(
        [[p["probabilities"]["0"], p["probabilities"]["1"]] for p in body["predictions"]]
    )
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_a_version_without_onnx_is_served_by_sklearn(
    local_store: Store, trained, shipped_dataset, rows, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pipeline the converter cannot handle is published without model.onnx.
    monkeypatch.setattr(
        "mlplatform_retrainer.onnx_export.convert",
        lambda p, X: ({}, {"error": "not convertible"}),
    )
    publish_trained(ModelRegistry(local_store, SIGNING_KEY), trained, shipped_dataset)
    with TestClient(create_app(serving_settings(), local_store)) as c:
        body = c.post("/predict", json={"features": rows[0]}).json()
        assert body["engine"] == "sklearn"
        assert (
            body["predictions"][0]["label"] == trained.pipeline.predict(pd.DataFrame(rows[:1]))[0]
        )


def test_a_changed_onnx_file_is_refused_like_any_model_file(model_store: Store) -> None:
    key = keys.model_file("v1", "model.onnx")
    data = bytearray(model_store.get(key))
    data[-10] ^= 1
    model_store.put(key, bytes(data))
    with TestClient(create_app(serving_settings(), model_store)) as c:
        assert_error(c.get("/ready"), 503, "models/v1/model.onnx does not match")


def test_feedback_by_id_finds_recent_rows_in_memory_and_older_ones_in_the_store(
    model_store: Store, rows
) -> None:
    # 25 recent rows kept in memory: batches of 10 leave the cache whole, oldest first.
    settings = serving_settings(recent_cache_rows=25, log_flush_seconds=3600)
    with TestClient(create_app(settings, model_store)) as c:
        ids = []
        for i in range(5):
            r = c.post("/predict", json={"instances": rows[10 * i : 10 * i + 10]})
            ids.append([p["prediction_id"] for p in r.json()["predictions"]])
        log = c.app.state.service.log
        assert all(log.lookup(pid) is None for batch in ids[:2] for pid in batch)
        assert all(log.lookup(pid) is not None for batch in ids[2:] for pid in batch)
        assert log.lookup(ids[4][9])["mean_radius"] == rows[49]["mean_radius"]
        # one batch's key with a row it does not have
        assert log.lookup(ids[4][0][:26] + "00000a") is None
        # a row's id only as it was given out (int() would also read "0_9" as 9)
        assert log.lookup(ids[4][9][:-3] + "0_9") is None
        # evicted from memory, still found once the log is written: read back from the store
        assert log.flush() == 50
        r = c.post("/feedback", json={"prediction_id": ids[0][3], "target": 1})
        assert r.status_code == 201, r.text


def test_the_recent_cache_is_bounded_by_memory_too(model_store: Store, rows) -> None:
    # A one-row request costs ~2.5 kB in the cache: 100,000 of them took 250 MB.
    from mlplatform_serving.predlog import ENTRY_BYTES, REQUEST_BYTES

    one_row = ENTRY_BYTES + REQUEST_BYTES + 30 * 8 + 2 * 8 + 8 + 8  # X, proba, label, top
    settings = serving_settings(recent_cache_mb=3.5 * one_row / 2**20, log_flush_seconds=3600)
    with TestClient(create_app(settings, model_store)) as c:
        ids = [
            c.post("/predict", json={"features": row}).json()["predictions"][0]["prediction_id"]
            for row in rows[:10]
        ]
        log = c.app.state.service.log
        assert [log.lookup(i) is not None for i in ids] == [False] * 6 + [True] * 4
        assert log.flush() == 10  # the others are found in the stored log
        r = c.post("/feedback", json={"prediction_id": ids[0], "target": 1})
        assert r.status_code == 201, r.text


def test_fastapi_looks_for_opentelemetry_only_when_it_is_enabled(
    model_store: Store, rows, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FastAPI checks on every request whether an OpenTelemetry provider is configured
    (10-20 µs, bench/BENCHMARKS.md); the serving skips that unless MLPLATFORM_OPENTELEMETRY."""
    from opentelemetry import trace

    looked: list[int] = []
    real = trace.get_tracer_provider

    def counted() -> trace.TracerProvider:
        looked.append(1)
        return real()

    monkeypatch.setattr(trace, "get_tracer_provider", counted)
    for enabled in (False, True):
        looked.clear()
        with TestClient(create_app(serving_settings(opentelemetry=enabled), model_store)) as c:
            for _ in range(3):
                assert c.post("/predict", json={"features": rows[0]}).status_code == 200
        assert (len(looked) >= 3) if enabled else (looked == []), (enabled, len(looked))


def test_the_typed_json_decoder_reads_what_the_checked_path_reads(model_store: Store, rows) -> None:
    with TestClient(create_app(serving_settings(), model_store)) as c:
        runtime = c.app.state.service.runtime
        first = next(iter(rows[0]))
        good = [
            rows[0],
            {k: int(v) for k, v in rows[1].items()},  # integers are numbers too
            {**rows[2], first: 10**30},
            dict(reversed(list(rows[3].items()))),  # any key order
        ]
        body = json.dumps({"instances": good}).encode()
        X, field = runtime.decode_json(body)
        assert field == "instances"
        assert np.array_equal(X, runtime.validate_rows(json.loads(body)["instances"]))
        X, field = runtime.decode_json(json.dumps({"features": rows[4]}).encode())
        assert field == "features" and np.array_equal(X, runtime.validate_rows([rows[4]]))
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
            assert runtime.decode_json(b) is None, b[:80]


def test_a_backlog_is_written_in_objects_of_bounded_size(model_store: Store, rows) -> None:
    settings = serving_settings(log_write_max_rows=25, log_flush_seconds=3600)
    with TestClient(create_app(settings, model_store)) as c:
        ids = []
        for i in range(5):
            r = c.post("/predict", json={"instances": rows[10 * i : 10 * i + 10]})
            ids += [p["prediction_id"] for p in r.json()["predictions"]]
        r = c.post("/predict", json={"instances": rows[:40]})  # bigger than one object: whole
        ids += [p["prediction_id"] for p in r.json()["predictions"]]
        assert c.app.state.service.log.flush() == 90
    objects = model_store.list_keys(keys.PREDICTIONS)
    sizes = sorted(len(pd.read_parquet(io.BytesIO(model_store.get(k)))) for k in objects)
    assert sizes == [10, 20, 20, 40]  # whole requests: 10+10, 10+10, 10, then the 40 alone
    logged = datalog.read_predictions(model_store)["prediction_id"]
    assert len(logged) == 90 and sorted(logged) == sorted(ids)


def test_the_log_is_written_without_a_string_per_row(model_store: Store, rows) -> None:
    # Strings per row (ids, probabilities as JSON) cost more than half of each write
    # (bench/BENCHMARKS.md): the serving writes request_id + row and proba_0.. instead.
    with TestClient(create_app(serving_settings(log_flush_seconds=3600), model_store)) as c:
        answers = []
        for start in (0, 3):
            r = c.post("/predict", json={"instances": rows[start : start + 3]})
            answers += r.json()["predictions"]
        assert c.app.state.service.log.flush() == 6
    [key] = model_store.list_keys(keys.PREDICTIONS)
    raw = pd.read_parquet(io.BytesIO(model_store.get(key)), engine="fastparquet")
    assert [c for c in raw.columns if raw[c].dtype == object] == []
    assert raw["request_id"].nunique() == 2 and list(raw["request_row"]) == [0, 1, 2, 0, 1, 2]
    # readers see the documented columns, the same values as the answers
    logged = datalog.read_predictions(model_store)
    assert set(datalog.PREDICTION_COLUMNS) <= set(logged.columns)
    assert list(logged["prediction_id"]) == [a["prediction_id"] for a in answers]
    expected = [
        orjson.dumps(np.round(list(a["probabilities"].values()), 6).tolist()).decode()
        for a in answers
    ]
    assert list(logged["proba_json"]) == expected


class Counting:
    """An embedding engine that counts the rows it embeds."""

    def __init__(self, engine) -> None:  # type: ignore[no-untyped-def]
        self.engine, self.rows = engine, 0

    def transform(self, X: np.ndarray) -> np.ndarray:
        self.rows += len(X)
        return self.engine.transform(X)


def logged_embedding(
    store: Store, ids: list[str], n_components: int
) -> tuple[pd.DataFrame, np.ndarray]:
    """The log's rows of these prediction ids, in their order, and their PCA_* values."""
    log = datalog.read_predictions(store).set_index("prediction_id").loc[ids]
    return log, log[embedding_columns(n_components)].to_numpy()


def test_the_log_takes_the_embedding_from_the_run_that_predicted_the_rows(
    model_store: Store, rows, trained
) -> None:
    # model.onnx returns the embedding too: computing it again for the log cost ~12% of the
    # binary V2 rows/s (bench/BENCHMARKS.md).
    with TestClient(create_app(serving_settings(log_flush_seconds=3600), model_store)) as c:
        served = c.app.state.service.runtime.served
        assert served.engine.outputs == ["probabilities", "embedding"]
        served.embedding = counting = Counting(served.embedding)
        ids = [
            c.post("/predict", json={"features": rows[i]}).json()["predictions"][0]["prediction_id"]
            for i in range(3)
        ]
        r = c.post("/predict", json={"instances": rows[3:20]})
        ids += [p["prediction_id"] for p in r.json()["predictions"]]
        assert c.app.state.service.log.flush() == 20
    assert counting.rows == 0
    _, Z = logged_embedding(model_store, ids, trained.n_components)
    expected = embed(trained.pipeline, pd.DataFrame(rows[:20])).to_numpy()
    np.testing.assert_allclose(Z, expected, atol=1e-9)


def test_backup_answers_do_not_make_the_log_embed_the_other_rows_again(
    model_store: Store, rows, trained
) -> None:
    with TestClient(create_app(serving_settings(log_flush_seconds=3600), model_store)) as c:
        served = c.app.state.service.runtime.served
        served.embedding = counting = Counting(served.embedding)
        primary, ids = served.engine, []
        for engine, part in ((primary, rows[:5]), (Broken(), rows[5:8]), (primary, rows[8:10])):
            served.engine = engine
            r = c.post("/predict", json={"instances": part})
            ids += [p["prediction_id"] for p in r.json()["predictions"]]
        assert c.app.state.service.log.flush() == 10
    assert counting.rows == 0
    log, Z = logged_embedding(model_store, ids, trained.n_components)
    assert list(log["backup"]) == [False] * 5 + [True] * 3 + [False] * 2
    assert np.isnan(Z[5:8]).all()  # backup rows: no embedding, as before
    expected = embed(trained.pipeline, pd.DataFrame(rows[:10])).to_numpy()
    normal = [*range(5), 8, 9]
    np.testing.assert_allclose(Z[normal], expected[normal], atol=1e-9)


def test_a_version_whose_graph_returns_no_embedding_gets_it_computed_for_the_log(
    local_store: Store, rows, trained, shipped_dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Versions published before model.onnx returned the embedding name no embedding_output.
    real = onnx_export.convert

    def without_embedding_output(pipeline, X):  # type: ignore[no-untyped-def]
        files, info = real(pipeline, X)
        del info["embedding_output"]
        return files, info

    monkeypatch.setattr("mlplatform_retrainer.onnx_export.convert", without_embedding_output)
    publish_trained(ModelRegistry(local_store, SIGNING_KEY), trained, shipped_dataset)
    with TestClient(create_app(serving_settings(log_flush_seconds=3600), local_store)) as c:
        served = c.app.state.service.runtime.served
        assert served.engine.outputs == ["probabilities"]
        served.embedding = counting = Counting(served.embedding)
        r = c.post("/predict", json={"instances": rows[:20]})
        ids = [p["prediction_id"] for p in r.json()["predictions"]]
        assert c.app.state.service.log.flush() == 20
    assert counting.rows == 20
    _, Z = logged_embedding(local_store, ids, trained.n_components)
    expected = embed(trained.pipeline, pd.DataFrame(rows[:20])).to_numpy()
    np.testing.assert_allclose(Z, expected, atol=1e-9)


def test_a_flush_writes_what_was_buffered_when_it_started(
    model_store: Store, rows, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rows that arrive during a write wait for the next flush: writing "until empty" under
    # steady load wrote an object per handful of rows and fell behind (bench/BENCHMARKS.md).
    settings = serving_settings(log_flush_seconds=3600)
    with TestClient(create_app(settings, model_store)) as c:
        service = c.app.state.service
        c.post("/predict", json={"instances": rows[:10]})
        X = service.runtime.validate_rows([rows[0]])
        arrivals = []
        real_put = model_store.put

        def put(key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
            real_put(key, data, content_type)
            if key.startswith(keys.PREDICTIONS) and len(arrivals) < 5:
                arrivals.append(service.predict(X))  # a request answered meanwhile

        monkeypatch.setattr(model_store, "put", put)
        assert service.log.flush() == 10
        assert service.log.pending_rows == 1 and len(arrivals) == 1


def test_requests_wait_for_a_writer_that_is_behind_but_not_for_a_store_that_is_down(
    model_store: Store, rows, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Backpressure instead of dropping rows when the writer (not the store) is behind.
    settings = serving_settings(log_flush_seconds=3600, log_buffer_max_rows=40)
    with TestClient(create_app(settings, model_store)) as c:
        log = c.app.state.service.log
        c.post("/predict", json={"instances": rows[:30]})
        assert log.backlogged()  # 30 of 40 waiting, the store fine
        flusher = threading.Timer(0.3, log.flush)
        flusher.start()
        started = time.monotonic()
        r = c.post("/predict", json={"instances": rows[:5]})
        waited = time.monotonic() - started
        flusher.join()
        assert r.status_code == 200 and 0.25 < waited < 2.0  # held until the flush, not longer
        assert log.dropped_rows == 0 and log.pending_rows == 5

        def down(*args: object, **kwargs: object) -> None:
            raise StorageUnavailable("store down (test)")

        monkeypatch.setattr(model_store, "put", down)
        c.post("/predict", json={"instances": rows[:30]})
        assert log.flush() == 0 and not log.store_ok  # rows kept, and no waiting for them
        started = time.monotonic()
        assert c.post("/predict", json={"instances": rows[:5]}).status_code == 200
        assert time.monotonic() - started < 0.25


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


def test_the_openapi_document_has_unique_operations_and_json_errors(model_store: Store) -> None:
    app = create_app(serving_settings(), model_store)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # FastAPI warns of a duplicate operation id
        doc = app.openapi()
    ids = [op["operationId"] for path in doc["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids))
    assert list(doc["paths"]["/health"]) == ["get"]  # HEAD is served, not documented twice
    report = doc["paths"]["/reports/{report_id}"]["get"]["responses"]
    assert list(report["200"]["content"]) == ["text/html"]
    assert list(report["404"]["content"]) == ["application/json"]
    reload_ = doc["paths"]["/admin/reload"]["post"]
    body = reload_["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ReloadRequest"}
    assert {"409", "415", "422"} <= set(reload_["responses"])


def test_the_examples_of_the_docs_page_are_accepted_as_they_are(client: TestClient) -> None:
    """/docs' "Try it out" sends the document's examples: they were placeholder rows (a
    feature named "..."), which every endpoint refused with a 422."""
    doc = client.get("/openapi.json").json()

    def content(path: str, media: str = "application/json") -> dict[str, Any]:
        return doc["paths"][path]["post"]["requestBody"]["content"][media]  # type: ignore[no-any-return]

    predict = content("/predict")["examples"]
    assert set(predict) == {"one row", "many rows"}
    for example in predict.values():
        r = client.post("/predict", json=example["value"])
        assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 2
    csv_body = content("/predict", "text/csv")["example"]
    r = client.post("/predict", content=csv_body, headers={"content-type": "text/csv"})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2, r.text
    in_full = content("/feedback")["examples"]["a row in full"]["value"]
    r = client.post("/feedback", json=in_full)
    assert r.status_code == 201, r.text
    name = next(
        p["example"]
        for p in doc["paths"]["/v2/models/{name}/infer"]["post"]["parameters"]
        if p["name"] == "name"
    )
    infer = content("/v2/models/{name}/infer")["example"]
    r = client.post(f"/v2/models/{name}/infer", json=infer)
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [2], r.text
    # The pydantic models' own examples are rows of the model too.
    schemas = doc["components"]["schemas"]
    row = schemas["PredictRequest"]["properties"]["features"]["examples"][0]
    assert client.post("/predict", json={"features": row}).status_code == 200
    assert schemas["RowPrediction"]["properties"]["model_version"]["examples"] == ["v1"]


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


def test_the_docs_page_stays_up_for_a_manifest_without_feature_statistics(
    client: TestClient,
) -> None:
    manifest = client.app.state.service.runtime.model.manifest  # type: ignore[attr-defined]
    stats = manifest.pop("feature_schema")
    try:
        r = client.get("/openapi.json")
    finally:
        manifest["feature_schema"] = stats
    assert r.status_code == 200
    assert (
        "examples"
        not in r.json()["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    )
