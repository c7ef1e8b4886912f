"""POST /feedback with a batch (``{"items": [...]}``): per-row results, partial success row by
row with every good row stored, the batch limit, the writer key's rate counting rows, and the
retrain every k rows counting the batch's stored rows. On a local store and on the real S3
server (SeaweedFS)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from mlplatform_common import datalog
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import Store
from mlplatform_serving.app import create_app
from mlplatform_serving.ratelimit import TokenBuckets
from tests.conftest import SIGNING_KEY, publish_trained
from tests.services.serving.conftest import WRITER, assert_error, serving_settings


@pytest.fixture
def writer_store(store: Store, trained, shipped_dataset) -> Store:
    publish_trained(ModelRegistry(store, SIGNING_KEY), trained, shipped_dataset)
    return store


def _stored(store: Store) -> list[str]:
    return store.list_keys("production/feedback/")


def _ids(c: TestClient, rows: list[dict[str, float]]) -> list[str]:
    r = c.post("/predict", json={"instances": rows})
    assert r.status_code == 200, r.text
    return [p["prediction_id"] for p in r.json()["predictions"]]


def test_a_batch_all_stored_is_201_with_a_result_per_row(writer_store: Store, rows) -> None:
    with TestClient(create_app(serving_settings(), writer_store)) as c:
        ids = _ids(c, rows[:3])
        items: list[dict[str, Any]] = [
            {"prediction_id": ids[0], "target": 1},
            {"prediction_id": ids[1], "target": "malignant"},  # a class name
            {"features": rows[5], "prediction": 1, "target": 0},
            {"features": rows[6], "target": 1},  # prediction computed
        ]
        r = c.post("/feedback", headers=WRITER, json={"items": items})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["stored"] == 4 and body["failed"] == 0
        assert body["labelled_since_training"] == 4 and body["retrain_started"] is False
        assert [res["index"] for res in body["results"]] == [0, 1, 2, 3]
        assert {res["status"] for res in body["results"]} == {201}
        assert [res["prediction_id"] for res in body["results"]] == [ids[0], ids[1], None, None]
        # the single form is unchanged beside it
        one = c.post("/feedback", headers=WRITER, json={"prediction_id": ids[2], "target": 0})
        assert one.status_code == 201 and one.json()["labelled_since_training"] == 5
    stored = datalog.read_feedback(writer_store)
    by_id = {row["feedback_id"]: row for row in stored.to_dict(orient="records")}
    assert [by_id[res["feedback_id"]]["target"] for res in body["results"]] == ["1", "0", "0", "1"]
    assert by_id[body["results"][0]["feedback_id"]]["mean_radius"] == rows[0]["mean_radius"]
    assert by_id[body["results"][2]["feedback_id"]]["mean_radius"] == rows[5]["mean_radius"]
    assert len(_stored(writer_store)) == 5


def test_a_partial_failure_is_207_row_by_row_and_every_good_row_is_stored(
    writer_store: Store, rows
) -> None:
    with TestClient(create_app(serving_settings(), writer_store)) as c:
        ids = _ids(c, rows[:2])
        items: list[dict[str, Any]] = [
            {"prediction_id": ids[0], "target": 1},
            {"prediction_id": "f" * 32, "target": 1},  # unknown id
            {"prediction_id": ids[1], "target": "yes"},  # not a class
            {"features": {"mean_radius": 1.0}, "target": 1},  # the wrong features
            {"features": rows[7], "target": 0},
            {"prediction_id": ids[1], "target": 1, "note": "x"},  # a field no row has
            {"prediction_id": ids[1]},  # no target
            {"features": {**rows[8], "mean_area": 1e308}, "prediction": 0, "target": 0},
            {"prediction_id": ids[1], "target": 0},
        ]
        r = c.post("/feedback", headers=WRITER, json={"items": items})
        assert r.status_code == 207, r.text
        body = r.json()
        assert body["stored"] == 3 and body["failed"] == 6
        results = body["results"]
        assert [res["status"] for res in results] == [201, 404, 422, 422, 201, 422, 422, 422, 201]
        assert [res["index"] for res in results] == list(range(9))
        errors = {res["index"]: (res["error"], res["type"]) for res in results if "error" in res}
        assert errors[1][0].startswith("items.1.prediction_id 'ffff") and errors[1][1] == "NotFound"
        assert errors[2][0].startswith("items.2.target: 'yes' is not one of the classes [0, 1]")
        assert errors[3][0].startswith("items.3.features: missing feature")
        assert errors[5][0] == "items.5.note: Extra inputs are not permitted"
        assert errors[6][0] == "items.6.target: Field required"
        assert errors[7][0].startswith("items.7.features.mean_area: 1e+308 is beyond")
        assert all(t == "InvalidInput" for i, (_, t) in errors.items() if i != 1)
        assert all("feedback_id" not in res for res in results if res["status"] != 201)
        assert body["labelled_since_training"] == 3
    # every good row stored whole and readable; nothing of the bad ones
    stored = datalog.read_feedback(writer_store)
    good = [results[i]["feedback_id"] for i in (0, 4, 8)]
    assert sorted(stored["feedback_id"]) == sorted(good)
    by_id = stored.set_index("feedback_id")
    assert by_id.loc[good[0], "prediction_id"] == ids[0] and by_id.loc[good[0], "target"] == "1"
    assert by_id.loc[good[1], "mean_radius"] == rows[7]["mean_radius"]
    assert by_id.loc[good[2], "prediction_id"] == ids[1] and by_id.loc[good[2], "target"] == "0"
    assert len(_stored(writer_store)) == 3


def test_a_batch_over_the_limit_is_413_and_stores_nothing(
    local_store: Store, rows, trained, shipped_dataset
) -> None:
    publish_trained(ModelRegistry(local_store, SIGNING_KEY), trained, shipped_dataset)
    with TestClient(create_app(serving_settings(feedback_batch_max=5), local_store)) as c:
        items = [{"features": rows[i], "target": 1} for i in range(6)]
        r = c.post("/feedback", headers=WRITER, json={"items": items})
        assert_error(
            r, 413, "items: 6 rows is over the limit of 5 per batch (MLPLATFORM_FEEDBACK_BATCH_MAX)"
        )
        assert r.json()["type"] == "PayloadTooLarge"
        assert _stored(local_store) == []
        r = c.post("/feedback", headers=WRITER, json={"items": items[:5]})
        assert r.status_code == 201 and r.json()["stored"] == 5, r.text
    assert len(_stored(local_store)) == 5


def test_a_1000_row_batch_is_stored_with_a_result_per_row(writer_store: Store, rows) -> None:
    # The default limits: a batch of 1,000 rows is more than the burst (100), so it is taken
    # from the full bucket and the writer key then waits for the rate to pay for it.
    now = [0.0]
    with TestClient(create_app(serving_settings(), writer_store)) as c:
        settings = c.app.state.service.settings
        assert settings.feedback_batch_max == 1000 and settings.feedback_burst < 1000
        c.app.state.service.write_limit = TokenBuckets(
            settings.feedback_rate, settings.feedback_burst, clock=lambda: now[0]
        )
        sent = (rows * 3)[:1000]
        ids = _ids(c, sent)
        items = [{"prediction_id": pid, "target": i % 2} for i, pid in enumerate(ids)]
        r = c.post("/feedback", headers=WRITER, json={"items": items})
        assert r.status_code == 201, r.text[:500]
        body = r.json()
        assert body["stored"] == 1000 and body["failed"] == 0
        assert body["labelled_since_training"] == 1000
        assert [res["index"] for res in body["results"]] == list(range(1000))
        assert [res["prediction_id"] for res in body["results"]] == ids
        assert len({res["feedback_id"] for res in body["results"]}) == 1000
        # the key is in debt for 900 rows: at 10 rows/s the next row waits 90 s
        r = c.post("/feedback", headers=WRITER, json={"prediction_id": ids[0], "target": 1})
        assert_error(r, 429, "the writer key is over its write rate (10/s, burst 100)")
        assert r.headers["retry-after"] == "91"
    stored = datalog.read_feedback(writer_store)
    assert len(stored) == 1000 and len(_stored(writer_store)) == 1000
    assert sorted(stored["prediction_id"]) == sorted(ids)
    targets = dict(zip(stored["prediction_id"], stored["target"], strict=True))
    assert [targets[pid] for pid in ids[:4]] == ["0", "1", "0", "1"]


def test_the_rate_counts_a_batch_as_its_rows(
    local_store: Store, rows, trained, shipped_dataset
) -> None:
    publish_trained(ModelRegistry(local_store, SIGNING_KEY), trained, shipped_dataset)
    now = [0.0]

    def batch(n: int, start: int) -> dict[str, Any]:
        return {"items": [{"features": rows[start + i], "target": 1} for i in range(n)]}

    with TestClient(create_app(serving_settings(), local_store)) as c:
        c.app.state.service.write_limit = TokenBuckets(0.5, 3, clock=lambda: now[0])
        assert c.post("/feedback", headers=WRITER, json=batch(2, 0)).status_code == 201
        r = c.post("/feedback", headers=WRITER, json=batch(2, 2))  # 1 token left
        assert_error(r, 429, "a batch of 2 rows is more than it holds now; nothing was stored")
        assert r.headers["retry-after"] == "2"
        assert len(_stored(local_store)) == 2
        one = {"features": rows[4], "target": 0}
        assert c.post("/feedback", headers=WRITER, json=one).status_code == 201
        # more rows than the burst: taken once the bucket is full, never refused for good
        assert_error(c.post("/feedback", headers=WRITER, json=batch(5, 5)), 429, "retry in 6 s")
        now[0] += 6.0
        r = c.post("/feedback", headers=WRITER, json=batch(5, 5))
        assert r.status_code == 201 and r.json()["stored"] == 5, r.text
        r = c.post("/feedback", headers=WRITER, json=one)  # 2 rows in debt
        assert_error(r, 429, "retry in 6 s")
        assert r.headers["retry-after"] == "6"
    assert len(_stored(local_store)) == 8


def test_retrain_every_k_counts_the_batch_s_stored_rows(model_store: Store, rows) -> None:
    started: list[str] = []
    app = create_app(serving_settings(retrain_every=3), model_store)
    app.state.service.retrain_launcher = lambda reason, force: started.append(reason) or True
    with TestClient(app) as c:
        items = [{"features": rows[i], "target": 1} for i in range(3)]
        items.insert(1, {"features": {"mean_radius": 1.0}, "target": 1})  # fails, not counted
        body = c.post("/feedback", headers=WRITER, json={"items": items}).json()
        assert (body["stored"], body["labelled_since_training"]) == (3, 3)
        assert body["retrain_started"] is True
        one = c.post("/feedback", headers=WRITER, json={"features": rows[5], "target": 0}).json()
        assert (one["labelled_since_training"], one["retrain_started"]) == (4, False)
        # 4 + 4 = 8 crosses 6: one retrain
        items = [{"features": rows[6 + i], "target": 0} for i in range(4)]
        body = c.post("/feedback", headers=WRITER, json={"items": items}).json()
        assert (body["labelled_since_training"], body["retrain_started"]) == (8, True)
    assert started == ["3 labelled rows since v1 (k=3)", "8 labelled rows since v1 (k=3)"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"items": 5}, "items: Input should be a valid list"),
        ({"items": "abc"}, "items: Input should be a valid list"),
        (
            {"items": {"0": {"prediction_id": "x", "target": 1}}},
            "items: Input should be a valid list",
        ),
        ({"items": None}, "items: Input should be a valid list"),
        ({"items": []}, "items: List should have at least 1 item"),
        ({"items": [1, 2]}, "items.0: Input should be a valid dictionary"),
        (
            {"items": [{"prediction_id": "x", "target": 1}, None]},
            "items.1: Input should be a valid dictionary",
        ),
        ({"items": [["prediction_id", "target"]]}, "items.0: Input should be a valid dictionary"),
        ({"items": [{"target": 1}], "target": 1}, "target: Extra inputs are not permitted"),
    ],
)
def test_hostile_batch_bodies_are_422_naming_the_field(
    model_store: Store, rows, body: dict[str, Any], fragment: str
) -> None:
    with TestClient(create_app(serving_settings(), model_store)) as c:
        assert_error(c.post("/feedback", headers=WRITER, json=body), 422, fragment)
    assert _stored(model_store) == []


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        (
            {"prediction_id": 5, "target": 1},
            "items.0.prediction_id: Input should be a valid string",
        ),
        (
            {"prediction_id": ["x"], "target": 1},
            "items.0.prediction_id: Input should be a valid string",
        ),
        ({"features": "abc", "target": 1}, "items.0.features: Input should be a valid dictionary"),
        ({"features": [1, 2], "target": 1}, "items.0.features: Input should be a valid dictionary"),
        ({"features": "ROW", "target": {"a": 1}}, "items.0.target: "),
        ({"features": "ROW", "target": [1]}, "items.0.target: "),
        ({"features": {"mean_radius": "big"}, "target": 1}, "items.0.features"),
    ],
)
def test_items_of_wrong_types_fail_alone_naming_the_field(
    model_store: Store, rows, item: dict[str, Any], fragment: str
) -> None:
    with TestClient(create_app(serving_settings(), model_store)) as c:
        good = {"features": rows[0], "target": 1}
        if item.get("features") == "ROW":  # a whole row, whose target is of a wrong type
            item = {**item, "features": rows[1]}
        r = c.post("/feedback", headers=WRITER, json={"items": [item, good]})
        assert r.status_code == 207, r.text
        bad, ok = r.json()["results"]
        assert 400 <= bad["status"] < 500 and fragment in bad["error"], bad
        assert ok["status"] == 201
    assert len(_stored(model_store)) == 1


def test_a_batch_without_the_writer_key_is_401_and_stores_nothing(model_store: Store, rows) -> None:
    with TestClient(create_app(serving_settings(), model_store)) as c:
        body = {"items": [{"features": rows[0], "target": 1}]}
        assert_error(c.post("/feedback", json=body), 401, "missing bearer token")
    assert _stored(model_store) == []
