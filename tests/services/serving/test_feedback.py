"""Feedback (``feedback``): resolving a prediction id or a row, storing, counting, and
starting a retrain every k labelled rows."""

from __future__ import annotations

import dataclasses

import pytest
from fastapi.testclient import TestClient

from mlplatform_common import datalog
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import Store
from mlplatform_serving.app import create_app
from tests.conftest import SIGNING_KEY, publish_trained
from tests.services.serving.conftest import ADMIN, assert_error, serving_settings


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
