"""What a newcomer hit (issue 29): a wrong content type, a bare JSON array, a refused reload
logged as an ERROR; and /metrics/kpis counting predictions per version across a reload. In a
real serving process on the real S3 server, and in the app in-process."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from fastapi.testclient import TestClient

from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import S3Store, Store
from tests.conftest import SIGNING_KEY, S3Server, ServingProcess, publish_trained, serving_env
from tests.services.serving.conftest import ADMIN, WRITER, assert_error

PROC_ADMIN = {"Authorization": "Bearer proc-admin"}


@pytest.fixture
def s3_model(s3_server: S3Server, trained, shipped_dataset) -> S3Store:
    store = s3_server.store()
    publish_trained(ModelRegistry(store, SIGNING_KEY), trained, shipped_dataset)
    return store


def test_a_real_process_answers_the_rough_edges_and_counts_per_version(
    s3_server: S3Server, s3_model: S3Store, trained, shipped_dataset, rows
) -> None:
    proc = ServingProcess(serving_env(s3_server, s3_model.bucket)).start()
    try:
        url = proc.url
        # text/plain (curl -d without -H) and any other type: 415 naming the accepted ones
        for media in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
            r = httpx.post(url + "/predict", content=b"1,2,3", headers={"content-type": media})
            assert_error(r, 415, f"content-type: '{media}' is not supported")
            assert "application/json or text/csv" in r.json()["error"]
            assert r.json()["type"] == "UnsupportedMediaType"
        # rows without the envelope: the platform's own message, not pydantic's
        r = httpx.post(url + "/predict", json=rows[:2])
        assert_error(r, 422, 'body: a JSON array; send {"instances": [...]}')
        assert "dictionary" not in r.text
        r = httpx.post(
            url + "/predict", content=b"[]", headers={"content-type": "application/json"}
        )
        assert_error(r, 422, 'send {"instances": [...]}')
        # predictions per version, across a reload from v1 to v2
        assert httpx.post(url + "/predict", json={"instances": rows[:3]}).status_code == 200
        publish_trained(ModelRegistry(s3_model, SIGNING_KEY), trained, shipped_dataset)
        r = httpx.post(url + "/admin/reload", headers=PROC_ADMIN)
        assert r.json() == {"model_version": "v2", "previous_version": "v1"}, r.text
        assert httpx.post(url + "/predict", json={"instances": rows[:5]}).status_code == 200
        assert httpx.post(url + "/predict", json={"features": rows[0]}).status_code == 200
        kpis = httpx.get(url + "/metrics/kpis").json()
        assert kpis["predictions_by_version"] == {"v1": 3, "v2": 6}
        assert kpis["predictions"] == 9 and kpis["model_version"] == "v2"
        # a refused reload: the current model keeps serving, and it is no ERROR
        r = httpx.post(url + "/admin/reload", headers=PROC_ADMIN, json={"version": "v9"})
        assert_error(r, 404, "v9 does not exist")
        assert httpx.get(url + "/health").json()["model_version"] == "v2"
    finally:
        output = proc.stop()
    refused = [line for line in output.splitlines() if "model load failed" in line]
    assert len(refused) == 1, output
    assert "WARNING" in refused[0] and "v2 keeps serving" in refused[0], refused
    assert "ERROR" not in output, output


def test_refused_reloads_are_warnings_in_process(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="mlplatform"):
        assert_error(client.post("/admin/reload", headers=ADMIN, json={"version": "v9"}), 404)
        bad = {"version": "v1", "signature": "0" * 64}  # another store's v1
        assert_error(client.post("/admin/reload", headers=ADMIN, json=bad), 409)
    failed = [r for r in caplog.records if "model load failed" in r.getMessage()]
    assert len(failed) == 2
    assert {r.levelname for r in failed} == {"WARNING"}
    assert all("v1 keeps serving" in r.getMessage() for r in failed)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_kpis_count_predictions_per_version_across_a_reload(
    client: TestClient, model_store: Store, trained, shipped_dataset, rows
) -> None:
    assert client.get("/metrics/kpis").json()["predictions_by_version"] == {}
    client.post("/predict", json={"instances": rows[:4]})
    client.post(
        "/predict",
        content="\n".join(",".join(map(str, r.values())) for r in rows[:2]),
        headers={"content-type": "text/csv"},
    )
    assert client.get("/metrics/kpis").json()["predictions_by_version"] == {"v1": 6}
    publish_trained(ModelRegistry(model_store, SIGNING_KEY), trained, shipped_dataset)
    assert client.post("/admin/reload", headers=ADMIN).json()["model_version"] == "v2"
    client.post("/predict", json={"instances": rows[:7]})
    kpis = client.get("/metrics/kpis").json()
    assert kpis["predictions_by_version"] == {"v1": 6, "v2": 7}
    assert kpis["predictions"] == 13
    # what feedback predicts for itself is no served prediction
    client.post("/feedback", headers=WRITER, json={"features": rows[0], "target": 1})
    assert client.get("/metrics/kpis").json()["predictions_by_version"] == {"v1": 6, "v2": 7}


@pytest.mark.parametrize("media", ["text/plain", "application/xml", "multipart/form-data"])
def test_unsupported_content_types_on_predict_are_415_in_process(
    client: TestClient, media: str
) -> None:
    r = client.post("/predict", content=b"x", headers={"content-type": media})
    assert_error(
        r, 415, f"content-type: '{media}' is not supported; send application/json or text/csv"
    )


def test_a_bare_array_on_feedback_says_to_send_items(client: TestClient, rows) -> None:
    body = json.dumps([{"features": rows[0], "target": 1}])
    r = client.post("/feedback", headers=WRITER, content=body)
    assert_error(r, 422, 'body: a JSON array; send {"items": [...]}')
