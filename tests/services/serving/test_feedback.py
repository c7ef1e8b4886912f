"""Feedback (``feedback``): resolving a prediction id or a row, storing, counting, and
starting a retrain every k labelled rows."""

from __future__ import annotations

import dataclasses

import pytest
from fastapi.testclient import TestClient

from mlplatform_common import datalog, keys
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import Store
from mlplatform_serving.app import create_app
from tests.conftest import SIGNING_KEY, S3Server, publish_trained
from tests.services.serving.conftest import ADMIN, WRITER, assert_error, serving_settings


def test_feedback_by_prediction_id_is_stored_with_its_features(
    client: TestClient, model_store: Store, rows
) -> None:
    pid = client.post("/predict", json={"features": rows[3]}).json()["predictions"][0][
        "prediction_id"
    ]
    r = client.post("/feedback", headers=WRITER, json={"prediction_id": pid, "target": 1})
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
    r = client.post("/feedback", headers=WRITER, json={"prediction_id": pid, "target": "yes"})
    assert_error(r, 422, "target: 'yes' is not one of the classes [0, 1]", "of model v1")
    r = client.post("/feedback", headers=WRITER, json={"prediction_id": pid, "target": "benign"})
    assert r.status_code == 201 and r.json()["model_version"] == "v1", r.text
    (stored,) = datalog.read_feedback(model_store).to_dict(orient="records")
    assert stored["target"] == "1" and stored["prediction"] == str(answer["label"])
    assert stored["mean_radius"] == rows[3]["mean_radius"]  # v1's features
    # A row given with its features is the served version's: v2's classes.
    x_row = {"x_" + k: v for k, v in rows[3].items()}
    r = client.post(
        "/feedback", headers=WRITER, json={"features": x_row, "prediction": "no", "target": "yes"}
    )
    assert r.status_code == 201 and r.json()["model_version"] == "v2", r.text


def test_feedback_for_an_id_only_in_the_stored_log(model_store: Store, rows) -> None:
    with TestClient(create_app(serving_settings(), model_store)) as c:
        pid = c.post("/predict", json={"features": rows[0]}).json()["predictions"][0][
            "prediction_id"
        ]
    # A new process: empty memory, the id is found in the Parquet log flushed at shutdown.
    with TestClient(create_app(serving_settings(), model_store)) as c:
        r = c.post("/feedback", headers=WRITER, json={"prediction_id": pid, "target": "malignant"})
        assert r.status_code == 201, r.text
    assert list(datalog.read_feedback(model_store)["target"]) == ["0"]


def test_feedback_with_full_features_and_counting(client: TestClient, rows) -> None:
    for i in range(3):
        r = client.post(
            "/feedback", headers=WRITER, json={"features": rows[i], "prediction": 1, "target": 0}
        )
        assert r.status_code == 201
        assert r.json()["labelled_since_training"] == i + 1
    r = client.post(
        "/feedback", headers=WRITER, json={"features": rows[4], "target": 1}
    )  # prediction computed
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
    assert_error(client.post("/feedback", headers=WRITER, json=body), status, fragment)
    assert datalog.read_feedback(model_store).empty  # nothing half-stored


def test_feedback_with_values_no_model_can_train_on_is_refused(
    client: TestClient, model_store: Store, rows
) -> None:
    # With its own prediction, feedback calls no model: the row was stored, and every later
    # retrain and report failed on it.
    body = {"features": {**rows[0], "mean_area": 1e308}, "prediction": 0, "target": 0}
    assert_error(
        client.post("/feedback", headers=WRITER, json=body),
        422,
        "features.mean_area: 1e+308 is beyond",
    )
    assert datalog.read_feedback(model_store).empty


def test_retrain_starts_once_per_multiple_of_k(model_store: Store, rows) -> None:
    started: list[str] = []
    app = create_app(serving_settings(retrain_every=3), model_store)
    app.state.service.retrain_launcher = lambda reason, force: started.append(reason) or True
    with TestClient(app) as c:
        flags = [
            c.post("/feedback", headers=WRITER, json={"features": rows[i], "target": 1}).json()[
                "retrain_started"
            ]
            for i in range(7)
        ]
    assert flags == [False, False, True, False, False, True, False]
    assert started[0] == "3 labelled rows since v1 (k=3)"


def test_trigger_markers_keep_the_newest_and_each_multiple_still_starts_once(
    s3_server: S3Server, trained, shipped_dataset, rows
) -> None:
    """Two replicas on one real store: every multiple of k starts one run, and the markers
    prefix is pruned to the newest (a marker from before markers carried ``at`` goes first)."""
    store = s3_server.store()
    publish_trained(ModelRegistry(store, SIGNING_KEY), trained, shipped_dataset)
    store.put(keys.trigger("v0-50"), b'{"reason": "written before markers had a time"}')
    started: list[str] = []
    apps = [
        create_app(serving_settings(retrain_every=2, feedback_count_max_age=0), store)
        for _ in range(2)
    ]
    for app in apps:
        app.state.service.retrain_launcher = lambda reason, force: started.append(reason) or True
        app.state.service.feedback.markers_kept = 2  # pruned past 4
    with TestClient(apps[0]) as a, TestClient(apps[1]) as b:
        flags = [
            (a, b)[i % 2]
            .post("/feedback", headers=WRITER, json={"features": rows[i], "target": 1})
            .json()["retrain_started"]
            for i in range(13)
        ]
    assert flags == [count % 2 == 0 for count in range(1, 14)]  # 13 is in 12's multiple
    assert started == [f"{n} labelled rows since v1 (k=2)" for n in range(2, 13, 2)]
    # The old marker and v1-2, v1-4 went when v1-8 made five; v1-12 blocks row 13 still.
    assert sorted(store.list_keys(keys.TRIGGERS)) == sorted(
        keys.trigger(f"v1-{n}") for n in (6, 8, 10, 12)
    )


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
        r = c.post("/feedback", headers=WRITER, json={"prediction_id": ids[0][3], "target": 1})
        assert r.status_code == 201, r.text


# -- the writer key and its rate -----------------------------------------------------------


def _stored(store: Store) -> list[str]:
    """Every labelled row's object in the store, read from the store itself."""
    return store.list_keys("production/feedback/")


@pytest.fixture
def writer_store(store: Store, trained, shipped_dataset) -> Store:
    """A published model in the local store and in the real S3 server (SeaweedFS)."""
    publish_trained(ModelRegistry(store, SIGNING_KEY), trained, shipped_dataset)
    return store


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({}, "missing bearer token"),
        ({"Authorization": "Bearer test-writer-tokenx"}, "wrong bearer token"),
        ({"Authorization": "Bearer test-writer-toke"}, "wrong bearer token"),
        ({"Authorization": "Bearer  test-writer-token"}, "wrong bearer token"),
        ({"Authorization": "Basic test-writer-token"}, "missing bearer token"),
        ({"Authorization": "test-writer-token"}, "missing bearer token"),
        ({"Authorization": "Bearer "}, "missing bearer token"),
        ({"X-Writer-Token": "test-writer-token"}, "missing bearer token"),
    ],
)
def test_feedback_without_the_writer_key_is_401_and_stores_nothing(
    writer_store: Store, rows, headers: dict[str, str], fragment: str
) -> None:
    with TestClient(create_app(serving_settings(), writer_store)) as c:
        pid = c.post("/predict", json={"features": rows[0]}).json()["predictions"][0][
            "prediction_id"
        ]
        for body in ({"prediction_id": pid, "target": 1}, {"features": rows[1], "target": 0}):
            r = c.post("/feedback", headers=headers, json=body)
            assert_error(r, 401, fragment, "Authorization: Bearer <writer token>")
            assert r.json()["type"] == "Unauthorized"
            assert r.headers["www-authenticate"] == 'Bearer realm="mlplatform"'
    # after shutdown, so the log flush cannot hide a late write
    assert _stored(writer_store) == []
    assert datalog.read_feedback(writer_store).empty


def test_feedback_with_the_writer_key_or_the_admin_key_is_stored(writer_store: Store, rows) -> None:
    with TestClient(create_app(serving_settings(), writer_store)) as c:
        r = c.post("/feedback", headers=WRITER, json={"features": rows[0], "target": 1})
        assert r.status_code == 201, r.text
        # admin may do what a writer may (README: which key guards what)
        r = c.post("/feedback", headers=ADMIN, json={"features": rows[1], "target": 0})
        assert r.status_code == 201, r.text
    assert len(_stored(writer_store)) == 2
    assert sorted(datalog.read_feedback(writer_store)["target"]) == ["0", "1"]


def test_feedback_over_the_rate_is_429_with_retry_after_and_stores_nothing(
    writer_store: Store, rows
) -> None:
    from mlplatform_serving.ratelimit import TokenBuckets

    now = [0.0]  # the buckets' clock, so a slow store cannot refill them between requests
    settings = serving_settings(feedback_rate=0.5, feedback_burst=3)
    with TestClient(create_app(settings, writer_store)) as c:
        c.app.state.service.write_limit = TokenBuckets(0.5, 3, clock=lambda: now[0])
        statuses = [
            c.post("/feedback", headers=WRITER, json={"features": rows[i], "target": 1})
            for i in range(5)
        ]
        assert [r.status_code for r in statuses] == [201, 201, 201, 429, 429]
        for refused in statuses[3:]:
            assert_error(refused, 429, "the writer key is over its write rate (0.5/s, burst 3)")
            assert refused.json()["type"] == "TooManyRequests"
            assert refused.headers["retry-after"] == "2"
        assert len(_stored(writer_store)) == 3  # the refused ones left nothing
        # each key has its own bucket: the admin key is not held back by the writer's
        r = c.post("/feedback", headers=ADMIN, json={"features": rows[6], "target": 0})
        assert r.status_code == 201, r.text
        now[0] += 2.0  # Retry-After later, the same request is taken
        r = c.post("/feedback", headers=WRITER, json={"features": rows[7], "target": 1})
        assert r.status_code == 201, r.text
        assert c.post("/feedback", headers=WRITER, json={"target": 1}).status_code == 429
        # predictions have no key and no rate
        for _ in range(5):
            assert c.post("/predict", json={"features": rows[0]}).status_code == 200
    assert len(_stored(writer_store)) == 5
    assert sorted(datalog.read_feedback(writer_store)["target"]) == ["0"] + ["1"] * 4


def test_writing_is_disabled_without_any_token_outside_dev_mode(model_store: Store, rows) -> None:
    settings = serving_settings(writer_token=None, admin_token=None)
    with TestClient(create_app(settings, model_store)) as c:
        r = c.post("/feedback", headers=WRITER, json={"features": rows[0], "target": 1})
        assert_error(r, 401, "writing is disabled", "MLPLATFORM_WRITER_TOKEN")
    assert _stored(model_store) == []


def test_dev_mode_takes_the_dev_writer_token(model_store: Store, rows) -> None:
    from mlplatform_common.settings import DEV_WRITER_TOKEN

    settings = serving_settings(writer_token=None, admin_token=None, dev_mode=True)
    with TestClient(create_app(settings, model_store)) as c:
        body = {"features": rows[0], "target": 1}
        assert_error(c.post("/feedback", json=body), 401, "missing bearer token")
        dev = {"Authorization": f"Bearer {DEV_WRITER_TOKEN}"}
        assert c.post("/feedback", headers=dev, json=body).status_code == 201
    assert len(_stored(model_store)) == 1


def test_token_buckets_refill_at_the_rate_up_to_the_burst() -> None:
    from mlplatform_serving.ratelimit import TokenBuckets

    now = [100.0]
    buckets = TokenBuckets(rate=2.0, burst=3, clock=lambda: now[0])
    assert [buckets.take("writer") for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]
    assert buckets.take("admin") == 0.0  # its own bucket
    now[0] += 0.25  # half a token back
    assert buckets.take("writer") == 0.25  # a refusal takes nothing
    now[0] += 0.25
    assert buckets.take("writer") == 0.0
    now[0] += 3600  # an idle key gets back its burst, no more
    assert [buckets.take("writer") for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]
    assert TokenBuckets(rate=0.0, burst=1).take("writer") == 0.0  # 0: no limit
