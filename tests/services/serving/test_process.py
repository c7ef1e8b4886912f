"""Real uvicorn processes on a real S3 server: durability, hot swap, V2 client, faults."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from mlplatform_common import datalog
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import S3Store
from tests.conftest import (
    SIGNING_KEY,
    S3Server,
    ServingProcess,
    publish_trained,
    serving_env,
)
from tests.services.serving.test_api import sample

ADMIN = {"Authorization": "Bearer proc-admin"}
WRITER = {"Authorization": "Bearer proc-writer"}


@pytest.fixture
def s3_model(s3_server: S3Server, trained, shipped_dataset) -> S3Store:
    store = s3_server.store()
    publish_trained(ModelRegistry(store, SIGNING_KEY), trained, shipped_dataset)
    return store


@pytest.fixture
def serving(s3_server: S3Server, s3_model: S3Store) -> Iterator[ServingProcess]:
    proc = ServingProcess(serving_env(s3_server, s3_model.bucket)).start()
    yield proc
    proc.stop()


def test_predict_log_and_feedback_through_a_real_process(
    serving: ServingProcess, s3_model: S3Store, rows
) -> None:
    assert (
        httpx.get(serving.url + "/ready").json().items()
        >= {"ready": True, "model_version": "v1"}.items()
    )
    r = httpx.post(serving.url + "/predict", json={"instances": rows[:10]})
    assert r.status_code == 200
    ids = [p["prediction_id"] for p in r.json()["predictions"]]
    fb = httpx.post(
        serving.url + "/feedback", headers=WRITER, json={"prediction_id": ids[0], "target": 0}
    )
    assert fb.status_code == 201
    assert list(datalog.read_feedback(s3_model)["prediction_id"]) == [ids[0]]
    serving.stop()  # graceful shutdown flushes the rest of the log
    logged = datalog.read_predictions(s3_model)
    assert sorted(logged["prediction_id"]) == sorted(ids)
    assert {"mean_radius", "PCA_1", "PCA_10", "proba_json", "model_version"} <= set(logged.columns)
    assert set(logged["model_version"]) == {"v1"}
    # written as categories, read back as plain strings like every other column
    assert logged["model_version"].dtype == object and logged["prediction"].dtype == object
    labels = {p["prediction_id"]: str(p["label"]) for p in r.json()["predictions"]}
    assert dict(zip(logged["prediction_id"], logged["prediction"], strict=True)) == labels


def test_a_serving_process_stores_labels_only_with_the_writer_key_and_within_its_rate(
    s3_server: S3Server, s3_model: S3Store, rows
) -> None:
    env = serving_env(
        s3_server, s3_model.bucket, MLPLATFORM_FEEDBACK_RATE="0.1", MLPLATFORM_FEEDBACK_BURST="2"
    )
    proc = ServingProcess(env).start()
    try:
        url = proc.url + "/feedback"
        for headers in ({}, {"Authorization": "Bearer proc-writerx"}):
            r = httpx.post(url, headers=headers, json={"features": rows[0], "target": 1})
            assert r.status_code == 401, r.text
            assert r.json()["type"] == "Unauthorized"
            assert r.headers["www-authenticate"] == 'Bearer realm="mlplatform"'
        statuses = [
            httpx.post(url, headers=WRITER, json={"features": rows[i], "target": 1}, timeout=30)
            for i in range(4)
        ]
        assert [r.status_code for r in statuses] == [201, 201, 429, 429], statuses[-1].text
        assert all(1 <= int(r.headers["retry-after"]) <= 10 for r in statuses[2:])
        assert statuses[2].json()["type"] == "TooManyRequests"
    finally:
        proc.stop()
    keys = s3_model.list_keys("production/feedback/")
    assert len(keys) == 2
    assert sorted(datalog.read_feedback(s3_model)["feedback_id"]) == sorted(
        r.json()["feedback_id"] for r in statuses[:2]
    )


def test_1000_concurrent_feedback_posts_over_two_processes(
    s3_server: S3Server, s3_model: S3Store, rows
) -> None:
    # the load is the point here, not the rate of one key
    env = serving_env(s3_server, s3_model.bucket, MLPLATFORM_FEEDBACK_RATE="0")
    procs = [ServingProcess(env).start() for _ in range(2)]
    try:

        async def post_all() -> list[int]:
            limits = httpx.Limits(max_connections=64)
            async with httpx.AsyncClient(timeout=60, limits=limits) as client:
                sem = asyncio.Semaphore(64)

                async def one(i: int) -> int:
                    body = {"features": rows[i % len(rows)], "prediction": 1, "target": i % 2}
                    async with sem:
                        r = await client.post(
                            procs[i % 2].url + "/feedback", headers=WRITER, json=body
                        )
                    return r.status_code

                return await asyncio.gather(*(one(i) for i in range(1000)))

        statuses = asyncio.run(post_all())
    finally:
        for p in procs:
            p.stop()
    assert statuses.count(201) == 1000
    stored = datalog.read_feedback(s3_model)
    assert len(stored) == 1000
    assert stored["feedback_id"].is_unique
    assert sorted(stored["target"].astype(int).tolist()) == [0] * 500 + [1] * 500


def test_20_reloads_under_continuous_requests_fail_nothing(
    serving: ServingProcess, s3_model: S3Store, trained, shipped_dataset, rows
) -> None:
    registry = ModelRegistry(s3_model, SIGNING_KEY)
    failures: list[str] = []
    versions_seen: set[str] = set()
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                r = client.post(serving.url + "/predict", json={"instances": rows[:5]})
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text}")
                    continue
                body = r.json()
                versions_seen.update(p["model_version"] for p in body["predictions"])
                if len({p["model_version"] for p in body["predictions"]}) != 1:
                    failures.append("a batch answered by two versions")

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(20):
            publish_trained(registry, trained, shipped_dataset)
            r = httpx.post(serving.url + "/admin/reload", headers=ADMIN, timeout=30)
            assert r.status_code == 200, r.text
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert versions_seen <= set(registry.versions())
    assert len(versions_seen) > 1
    assert httpx.get(serving.url + "/health").json()["model_version"] == "v21"


def test_a_real_v2_client_gets_the_same_predictions(serving: ServingProcess, rows) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=serving.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlplatform")
    meta = client.get_model_metadata("mlplatform")
    assert meta["inputs"][0]["shape"] == [-1, 30]
    X = np.array([list(r.values()) for r in rows[:25]], dtype=np.float64)
    expected = httpx.post(serving.url + "/predict", json={"instances": rows[:25]}).json()
    expected_labels = [p["label"] for p in expected["predictions"]]
    expected_proba = [
        [p["probabilities"]["0"], p["probabilities"]["1"]] for p in expected["predictions"]
    ]
    for binary in (False, True):
        for dtype, datatype in ((np.float64, "FP64"), (np.float32, "FP32")):
            tensor = triton.InferInput("input-0", list(X.shape), datatype)
            tensor.set_data_from_numpy(X.astype(dtype), binary_data=binary)
            result = client.infer(
                "mlplatform",
                [tensor],
                outputs=[
                    triton.InferRequestedOutput("label", binary_data=False),
                    triton.InferRequestedOutput("probabilities", binary_data=False),
                ],
            )
            assert result.as_numpy("label").tolist() == expected_labels
            if dtype == np.float64:
                np.testing.assert_allclose(
                    result.as_numpy("probabilities"), expected_proba, atol=1e-6
                )
    # Binary outputs: the client's default (no outputs named: binary_data_output), and asked
    # for output by output.
    tensor = triton.InferInput("input-0", list(X.shape), "FP64")
    tensor.set_data_from_numpy(X, binary_data=True)
    for outputs in (
        None,
        [
            triton.InferRequestedOutput("label", binary_data=True),
            triton.InferRequestedOutput("probabilities", binary_data=True),
            triton.InferRequestedOutput("prediction_id", binary_data=False),
        ],
    ):
        result = client.infer("mlplatform", [tensor], outputs=outputs)
        label, proba = result.get_output("label"), result.get_output("probabilities")
        assert label["parameters"]["binary_data_size"] == 25 * 8 and "data" not in label
        assert proba["parameters"]["binary_data_size"] == 25 * 2 * 8
        assert result.as_numpy("label").tolist() == expected_labels
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected_proba, atol=1e-6)
        ids = [i.decode() if isinstance(i, bytes) else i for i in result.as_numpy("prediction_id")]
        assert len(set(ids)) == 25 and all(len(i) == 32 for i in ids)
        assert httpx.post(
            serving.url + "/feedback", headers=WRITER, json={"prediction_id": ids[3], "target": 1}
        ).is_success
    client.close()


def test_per_feature_fp32_inputs_beyond_fp32_are_refused_by_a_real_process(
    s3_server: S3Server, penguins_trained, penguins_dataset
) -> None:
    """A per-feature FP32 input of 1e39 (a column that may be missing, after a null) was
    answered 200 and logged; one [n, n_features] FP32 tensor was refused."""
    from tests.services.serving.test_tasks import rows_of, v2_inputs

    store = s3_server.store()
    publish_trained(ModelRegistry(store, SIGNING_KEY), penguins_trained, penguins_dataset)
    serving = ServingProcess(serving_env(s3_server, store.bucket)).start()
    try:
        inputs = v2_inputs(penguins_dataset, rows_of(penguins_dataset, 3))
        tensor = next(t for t in inputs if t["name"] == "bill_length_mm")
        url = serving.url + "/v2/models/mlplatform/infer"
        for value, shown in ((1e39, "1e+39"), (-1e39, "-1e+39")):
            tensor |= {"datatype": "FP32", "data": [None, 39.1, value]}
            r = httpx.post(url, json={"inputs": inputs})
            assert r.status_code == 422, r.text
            assert r.json() == {
                "error": f"inputs[bill_length_mm].data[2]: {shown} is too large for FP32",
                "type": "InvalidInput",
            }
        tensor["data"] = [None, 39.1, 3.4e38]  # FP32 holds it
        r = httpx.post(url, json={"inputs": inputs})
        assert r.status_code == 200, r.text
        ids = next(o for o in r.json()["outputs"] if o["name"] == "prediction_id")["data"]
    finally:
        out = serving.stop()
    assert "Traceback" not in out
    logged = datalog.read_predictions(store)
    assert sorted(logged["prediction_id"]) == sorted(ids)  # nothing of the refused requests


def test_per_feature_int_inputs_take_only_integers_in_range_in_a_real_process(
    s3_server: S3Server, penguins_trained, penguins_dataset
) -> None:
    """A per-feature input declared INT32/INT64 took 2.5 and 2**40: answered 200 and logged,
    scored as the float. Now 422, and nothing of it logged."""
    from tests.services.serving.test_tasks import rows_of, v2_inputs

    store = s3_server.store()
    publish_trained(ModelRegistry(store, SIGNING_KEY), penguins_trained, penguins_dataset)
    serving = ServingProcess(serving_env(s3_server, store.bucket)).start()
    ids: list[str] = []
    try:
        inputs = v2_inputs(penguins_dataset, rows_of(penguins_dataset, 4))
        mass = next(t for t in inputs if t["name"] == "body_mass_g")
        year = next(t for t in inputs if t["name"] == "year")
        url = serving.url + "/v2/models/mlplatform/infer"
        refused = [
            (mass, "INT32", [None, 3750, 3800, 2.5], "data[3]: 2.5 is not an INT32"),
            (mass, "INT32", [None, 3750, 2**40, 3800], "data[2]: 1099511627776 is out of range"),
            (year, "INT64", [2007, 2007.5, 2008, 2009], "data[1]: 2007.5 is not an INT64"),
            (year, "INT64", [2007, 2008, 2009, 2**64], "data[3]: 1.8446744073709552e+19 is out"),
            # booleans and text were refused before, and are still
            (year, "INT64", [2007, True, 2008, 2009], "data[1]: must be a number, got a boolean"),
            (year, "INT64", [2007, "2008", 2008, 2009], "data[1]: must be a number, got a string"),
        ]
        for tensor, datatype, values, error in refused:
            kept = tensor["data"]
            tensor |= {"datatype": datatype, "data": values}
            r = httpx.post(url, json={"inputs": inputs})
            assert r.status_code == 422, r.text
            body = r.json()
            assert body["type"] == "InvalidInput"
            assert body["error"].startswith(f"inputs[{tensor['name']}].{error}"), body
            tensor |= {"datatype": "FP64", "data": kept}
        # the exact body of one refusal
        mass |= {"datatype": "INT32", "data": [None, 3750, 2**40, 3800]}
        r = httpx.post(url, json={"inputs": inputs})
        assert r.json() == {
            "error": "inputs[body_mass_g].data[2]: 1099511627776 is out of range for INT32",
            "type": "InvalidInput",
        }
        # whole numbers, a null where the feature may be missing: answered and logged
        mass["data"] = [None, 3750, 2**31 - 1, 3800.0]
        year |= {"datatype": "INT64", "data": [2007, 2008, 2009, 2**62]}
        r = httpx.post(url, json={"inputs": inputs})
        assert r.status_code == 200, r.text
        ids = next(o for o in r.json()["outputs"] if o["name"] == "prediction_id")["data"]
    finally:
        out = serving.stop()
    assert "Traceback" not in out
    logged = datalog.read_predictions(store)
    assert sorted(logged["prediction_id"]) == sorted(ids) and len(ids) == 4
    assert logged["year"].max() == 2**62


def test_predictions_keep_answering_while_the_store_is_down(trained, shipped_dataset, rows) -> None:
    server = S3Server().start()
    store = server.store()
    publish_trained(ModelRegistry(store, SIGNING_KEY), trained, shipped_dataset)
    env = serving_env(
        server,
        store.bucket,
        MLPLATFORM_LOG_BUFFER_MAX_ROWS="30",
        MLPLATFORM_S3_TIMEOUT_SECONDS="0.5",
        MLPLATFORM_S3_RETRIES="0",
    )
    proc = ServingProcess(env).start()
    try:
        server.stop()
        for _ in range(10):
            r = httpx.post(proc.url + "/predict", json={"instances": rows[:10]}, timeout=30)
            assert r.status_code == 200
        deadline = time.monotonic() + 15
        dropped = 0.0
        while time.monotonic() < deadline and dropped < 70:
            dropped = sample(
                httpx.get(proc.url + "/metrics").text,
                "mlplatform_prediction_log_dropped_rows_total",
            )
            time.sleep(0.2)
        assert dropped == 70  # 100 rows, at most 30 kept
        system = httpx.get(proc.url + "/metrics/system").json()["prediction_log"]
        assert system["pending_rows"] <= 30 and system["dropped_rows"] == 70
        fb = httpx.post(
            proc.url + "/feedback",
            headers=WRITER,
            json={"features": rows[0], "target": 1},
            timeout=30,
        )
        assert fb.status_code == 503 and fb.json()["type"] == "StorageUnavailable"
    finally:
        proc.stop()


def test_metrics_add_up_across_uvicorn_workers(
    s3_server: S3Server, s3_model: S3Store, rows
) -> None:
    proc = ServingProcess(serving_env(s3_server, s3_model.bucket, MLPLATFORM_WORKERS="2")).start()
    try:
        with httpx.Client() as client:
            for _ in range(40):  # new connections spread over both workers
                client.post(
                    proc.url + "/predict",
                    json={"features": rows[0]},
                    headers={"Connection": "close"},
                )
            text = client.get(proc.url + "/metrics").text
    finally:
        proc.stop()
    route = {"route": "/predict", "method": "POST", "status": "200"}
    assert sample(text, "mlplatform_http_requests_total", **route) == 40


def test_a_regression_exports_its_predicted_values_bucketed_by_its_reference_target(
    s3_server: S3Server, diabetes_trained, diabetes_dataset, serving: ServingProcess, rows
) -> None:
    """Nothing showed a regression's output distribution: the probability histogram is a
    classifier's. Two workers, as the value histogram is made at load, not at import."""
    from prometheus_client.parser import text_string_to_metric_families

    from tests.services.serving.test_tasks import rows_of

    store = s3_server.store()
    registry = ModelRegistry(store, SIGNING_KEY)
    publish_trained(registry, diabetes_trained, diabetes_dataset)
    env = serving_env(s3_server, store.bucket, MLPLATFORM_WORKERS="2")
    proc = ServingProcess(env).start()
    values: list[float] = []
    try:
        with httpx.Client() as client:
            for i in range(12):  # new connections spread over both workers
                r = client.post(
                    proc.url + "/predict",
                    json={"instances": rows_of(diabetes_dataset, 1 + i % 4, start=10 * i)},
                    headers={"Connection": "close"},
                )
                assert r.status_code == 200, r.text
                values += [p["value"] for p in r.json()["predictions"]]
            text = client.get(proc.url + "/metrics").text
    finally:
        proc.stop()
    (family,) = [
        f for f in text_string_to_metric_families(text) if f.name == "mlplatform_prediction_value"
    ]
    buckets = {float(s.labels["le"]): s.value for s in family.samples if s.name.endswith("bucket")}
    assert sample(text, "mlplatform_prediction_value_count") == len(values) == 30
    assert sample(text, "mlplatform_prediction_value_sum") == pytest.approx(sum(values))
    # the bounds: quantiles 0, 1, 5, 10, 20, ..., 90, 95, 99 and 100% of the version's
    # reference target (ref_data.csv), as the served version carries it
    target = registry.load("v1").ref_data["target"].to_numpy(dtype=float)
    levels = [0, 0.01, 0.05, *np.arange(0.1, 0.95, 0.1), 0.95, 0.99, 1]
    expected = sorted({float(f"{q:.6g}") for q in np.quantile(target, levels)})
    assert sorted(buckets)[:-1] == pytest.approx(expected, rel=1e-5)
    assert buckets[float("inf")] == len(values)
    for le, count in buckets.items():
        assert count == sum(v <= le for v in values), le
    # a classifier's serving exports no such histogram
    httpx.post(serving.url + "/predict", json={"instances": rows[:5]}).raise_for_status()
    assert "mlplatform_prediction_value" not in httpx.get(serving.url + "/metrics").text
    assert "mlplatform_prediction_probability_count 5.0" in httpx.get(serving.url + "/metrics").text


def test_feedback_by_id_works_on_the_replica_that_did_not_predict_it(
    s3_server: S3Server, s3_model: S3Store, rows
) -> None:
    # As on the cluster: the log is flushed every 2 s, and the label, sent at once, reaches
    # the other replica (a Service balancing per request). It answered 404 until the flush.
    env = serving_env(s3_server, s3_model.bucket, MLPLATFORM_LOG_FLUSH_SECONDS="2")
    a = ServingProcess(env).start()
    b = ServingProcess(env).start()
    impatient = ServingProcess({**env, "MLPLATFORM_FEEDBACK_WAIT_SECONDS": "0"}).start()
    try:
        for i in range(3):
            r = httpx.post(a.url + "/predict", json={"features": rows[i]})
            (answer,) = r.json()["predictions"]
            fb = httpx.post(
                b.url + "/feedback",
                headers=WRITER,
                json={"prediction_id": answer["prediction_id"], "target": answer["label"]},
                timeout=30,
            )
            assert fb.status_code == 201, fb.text
            assert fb.json()["model_version"] == "v1"
        # A replica that does not wait says "not yet", with when to ask again, never 404.
        r = httpx.post(a.url + "/predict", json={"features": rows[5]})
        pid = r.json()["predictions"][0]["prediction_id"]
        fb = httpx.post(
            impatient.url + "/feedback", headers=WRITER, json={"prediction_id": pid, "target": 0}
        )
        assert fb.status_code == 409, fb.text
        assert (
            fb.json()["type"] == "NotYet" and "not in the prediction log yet" in fb.json()["error"]
        )
        # a client that waits as told gets it stored once the flush has written the row (a
        # slow store write under load may take another round)
        for _ in range(10):
            time.sleep(int(fb.headers["retry-after"]))
            fb = httpx.post(
                impatient.url + "/feedback",
                headers=WRITER,
                json={"prediction_id": pid, "target": 0},
            )
            if fb.status_code != 409:
                break
        assert fb.status_code == 201, fb.text
        assert len(datalog.read_feedback(s3_model)) == 4  # nothing stored by the 409
    finally:
        for proc in (a, b, impatient):
            proc.stop()


def test_behind_the_ingress_prefix_serving_starts_without_a_warning(
    s3_server: S3Server, s3_model: S3Store
) -> None:
    # FastAPI deprecated its own root_path: every start wrote a non-JSON warning to the log.
    proc = ServingProcess(serving_env(s3_server, s3_model.bucket, MLPLATFORM_ROOT_PATH="/api"))
    try:
        proc.start()
        for path in ("/api/ready", "/ready"):
            assert httpx.get(proc.url + path).status_code == 200, path
        assert httpx.get(proc.url + "/api/openapi.json").json()["servers"] == [{"url": "/api"}]
    finally:
        output = proc.stop()
    assert "serving model v1" in output
    assert "Warning" not in output, output
