"""Every endpoint through the ASGI app (the lifespan runs, so the model really loads)."""

from __future__ import annotations

import gc
import gzip
import io
import json
import logging
import time
import warnings
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from mlplatform_common import datalog, keys
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.schema import embed, embedding_columns
from mlplatform_common.storage import Store
from mlplatform_retrainer import onnx_export
from mlplatform_serving import process
from mlplatform_serving.app import create_app
from mlplatform_serving.codecs.json_rows import RowsCodec
from tests.conftest import SIGNING_KEY, publish_trained
from tests.services.serving.conftest import ADMIN, WRITER, assert_error, serving_settings
from tests.services.serving.test_dataplane import Broken

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


def test_the_lifespan_tunes_each_serving_process(local_store: Store) -> None:
    # The lifespan runs in every uvicorn worker: the GC thresholds (process.py) hold there.
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)  # Python's defaults
    try:
        with TestClient(create_app(serving_settings(), local_store)):
            assert gc.get_threshold() == process.GC_THRESHOLDS
    finally:
        gc.set_threshold(*before)


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
        deadline = time.monotonic() + 60  # the next alias poll, then the load, on a busy machine
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


# -- bad input: 4xx naming the field, never 500 (each format's own: test_codecs_*) -------


@pytest.mark.parametrize("path", ["/predict", "/feedback", "/v2/models/mlplatform/infer"])
def test_a_compressed_body_is_a_415_naming_the_encoding(client: TestClient, path: str) -> None:
    r = client.post(
        path,
        content=gzip.compress(b'{"features": {}}'),
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert_error(r, 415, "content-encoding: 'gzip' is not supported; send the body uncompressed")
    r = client.post(path, content=b"{}", headers={"content-encoding": "identity", **WRITER})
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
    client.post("/feedback", headers=WRITER, json={"features": rows[0], "target": 0})
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


def test_the_document_declares_the_tokens_the_routes_check(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["writerToken"]["scheme"] == schemes["adminToken"]["scheme"] == "bearer"
    secured = {
        (path, method): op["security"]
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if "security" in op
    }
    assert secured == {
        ("/feedback", "post"): [{"writerToken": []}],
        ("/admin/reload", "post"): [{"adminToken": []}],
        ("/admin/retrain", "post"): [{"adminToken": []}],
        ("/admin/promote", "post"): [{"adminToken": []}],
        ("/admin/rollback", "post"): [{"adminToken": []}],
        ("/admin/unpin", "post"): [{"adminToken": []}],
        ("/admin/train", "post"): [{"adminToken": []}],
        ("/admin/datasets", "post"): [{"adminToken": []}],
        ("/admin/datasets", "get"): [{"adminToken": []}],
        ("/admin/models", "post"): [{"adminToken": []}],
        ("/admin/models/uploads/{upload_id}", "get"): [{"adminToken": []}],
    }


def test_admin_needs_the_token(client: TestClient) -> None:
    assert_error(client.post("/admin/reload"), 401, "bearer token")
    assert_error(client.post("/admin/reload", headers={"Authorization": "Bearer wrong"}), 401)
    # the writer key labels rows; it does not reload, retrain or unpin
    r = client.post("/admin/reload", headers=WRITER)
    assert_error(r, 401, "admin token")
    assert r.headers["www-authenticate"] == 'Bearer realm="mlplatform"'
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
        lambda p, X, task: ({}, {"error": "not convertible"}),
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
        r = c.post("/feedback", headers=WRITER, json={"prediction_id": ids[0], "target": 1})
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

    def without_embedding_output(pipeline, X, task):  # type: ignore[no-untyped-def]
        files, info = real(pipeline, X, task)
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
        X = RowsCodec.of(service.runtime.served).validate([rows[0]])
        arrivals = []
        real_put = model_store.put

        def put(key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
            real_put(key, data, content_type)
            if key.startswith(keys.PREDICTIONS) and len(arrivals) < 5:
                arrivals.append(service.plane.predict(X))  # a request answered meanwhile

        monkeypatch.setattr(model_store, "put", put)
        assert service.log.flush() == 10
        assert service.log.pending_rows == 1 and len(arrivals) == 1


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
    r = client.post("/feedback", headers=WRITER, json=in_full)
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
