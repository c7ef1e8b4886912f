"""POST /admin/models on a real serving process over a real SeaweedFS, whose local launcher
starts the real retrainer to register the upload: a skops scikit-learn pipeline is published
as a candidate, then promoted and served; every bad upload gets a clear 4xx (or a refused
outcome whose reason names the problem), and nothing is published for it."""

from __future__ import annotations

import io
import pickle
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
import skops.io
from fastapi.testclient import TestClient
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from mlplatform_common import keys, storage, uploads
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import Store
from mlplatform_serving.app import create_app
from tests.conftest import DATA, SIGNING_KEY, S3Server, ServingProcess, serving_env
from tests.services.retrainer.user_models import RaisesOnPredict
from tests.services.serving.conftest import ADMIN as TEST_ADMIN
from tests.services.serving.conftest import assert_error, serving_settings

ADMIN = {"Authorization": "Bearer proc-admin"}
NAME = "cancer"
CANCER = DATA.read_bytes()
FRAME = pd.read_csv(DATA)
X, Y = FRAME.drop(columns=["target"]), FRAME["target"]


def _skops(model: Any) -> bytes:
    buf = io.BytesIO()
    skops.io.dump(model, buf)
    return buf.getvalue()


def _joblib(model: Any) -> bytes:
    buf = io.BytesIO()
    joblib.dump(model, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression(max_iter=500))]).fit(
        X, Y
    )


@pytest.fixture(scope="module")
def served(s3_server: S3Server) -> Iterator[tuple[ServingProcess, Store]]:
    """A serving of the named model ``cancer`` with no version yet, which starts the real
    retrainer for an upload; uploads bound to 1 MB."""
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    root = s3_server.store(bucket)
    env = serving_env(
        s3_server,
        bucket,
        MLPLATFORM_MODEL_NAME=NAME,
        MLPLATFORM_RETRAIN_LAUNCHER="local",
        MLPLATFORM_MODEL_UPLOAD_MAX_MB="1",
        MLPLATFORM_LOAD_RETRY_SECONDS="0.5",
    )
    proc = ServingProcess(env).start(wait_ready=False)  # no model: it is uploaded first
    yield proc, storage.for_model(root, NAME)
    proc.stop()


def _registry(store: Store) -> ModelRegistry:
    return ModelRegistry(store, SIGNING_KEY)


def _post(
    proc: ServingProcess,
    model: tuple[str, bytes] | None,
    data: tuple[str, bytes] | None = ("cancer.csv", CANCER),
    fields: dict[str, Any] | None = None,
    wait: float = 0,
    headers: dict[str, str] = ADMIN,
) -> httpx.Response:
    files = {}
    if model is not None:
        files["model"] = (model[0], model[1], "application/octet-stream")
    if data is not None:
        files["data"] = (data[0], data[1], "text/csv")
    return httpx.post(
        f"{proc.url}/admin/models",
        params={"wait": wait} if wait else None,
        files=files,
        data={"target": "target", **(fields or {})},
        headers=headers,
        timeout=wait + 60,
    )


def _state(store: Store) -> dict[str, Any]:
    """What a refused upload must leave as it was."""
    registry = _registry(store)
    return {
        "versions": registry.versions(),
        "production": registry.production(),
        "datasets": sorted(store.list_keys(keys.DATASETS)),
    }


@pytest.fixture(scope="module")
def registered(served, pipeline: Pipeline) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The pipeline uploaded twice: as a candidate (answered 202, then polled), then promoted
    (``wait``: answered 201 with the version)."""
    proc, store = served
    model = ("my lr.skops", _skops(pipeline))
    first = _post(proc, model)
    assert first.status_code == 202, first.text
    upload = first.json()
    assert upload["state"] == "pending"
    assert upload["status"] == f"/admin/models/uploads/{upload['upload']}"
    deadline = time.monotonic() + 180
    while True:
        status = httpx.get(proc.url + upload["status"], headers=ADMIN).json()
        if status["state"] != "pending" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    candidate = {"upload": upload, "status": status, "state": _state(store)}
    second = _post(proc, model, fields={"promote": "true"}, wait=180)
    return {"candidate": candidate, "promoted": second}


def test_a_skops_pipeline_is_published_as_a_candidate_then_promoted_and_served(
    served, registered, pipeline: Pipeline
) -> None:  # type: ignore[no-untyped-def]
    proc, store = served
    candidate = registered["candidate"]
    upload_id = candidate["upload"]["upload"]
    assert candidate["status"]["state"] == "published", candidate["status"]
    assert candidate["status"]["version"] == "v1" and candidate["status"]["promoted"] is False
    assert candidate["status"]["model_file"] == "my-lr.skops"
    assert candidate["state"]["versions"] == ["v1"] and candidate["state"]["production"] is None

    promoted = registered["promoted"]
    assert promoted.status_code == 201, promoted.text
    body = promoted.json()
    assert body["state"] == "published" and body["version"] == "v2" and body["promoted"] is True
    registry = _registry(store)
    assert registry.production_version() == "v2"
    manifest = registry.manifest("v2")
    assert manifest["origin"] == "registered" and manifest["format"] == "skops"
    assert manifest["source_file"] == "my-lr.skops"
    assert manifest["estimator"].endswith("LogisticRegression")
    # The reference rows are kept as a data set of their own (named after file and upload).
    dataset = manifest["training_data"]["dataset"]
    assert dataset.startswith("cancer-") and store.exists(keys.dataset(dataset, "meta.json"))

    # The upload's model and data are gone once the outcome is written; the status stays.
    assert sorted(store.list_keys(keys.upload_file(upload_id, ""))) == [
        keys.upload_file(upload_id, "outcome.json"),
        keys.upload_file(upload_id, "request.json"),
    ]

    # Promoted: this serving now serves it (the retrainer told it to reload), with the
    # pipeline's own probabilities.
    health = httpx.get(proc.url + "/health").json()
    assert health["model_version"] == "v2", health
    rows = X.iloc[:3].to_dict(orient="records")
    r = httpx.post(proc.url + "/predict", json={"instances": rows})
    assert r.status_code == 200, r.text
    got = [list(p["probabilities"].values()) for p in r.json()["predictions"]]
    np.testing.assert_allclose(got, pipeline.predict_proba(X.iloc[:3]), atol=1e-5)


def test_the_status_of_an_unknown_upload_is_404(served) -> None:  # type: ignore[no-untyped-def]
    proc, _ = served
    for upload_id in ("0" * 32, "not-an-id"):
        r = httpx.get(f"{proc.url}/admin/models/uploads/{upload_id}", headers=ADMIN)
        assert_error(r, 404, "no such upload")
    r = httpx.get(f"{proc.url}/admin/models/uploads/{'0' * 32}")
    assert_error(r, 401, "bearer token")


WRONG_COLUMNS = FRAME.drop(columns=["worst_radius"]).assign(colour="red").to_csv(index=False)
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 20


@pytest.mark.parametrize(
    ("case", "status", "says"),
    [
        ({"headers": {"Authorization": "Bearer wrong"}}, 401, "bearer token"),
        ({"headers": {}}, 401, "bearer token"),
        ({"model": None}, 422, "model: required"),
        ({"data": None}, 422, "data: required"),
        ({"fields": {"target": ""}}, 422, "target: required"),
        ({"fields": {"target": "kind"}}, 422, "data: target column 'kind' not found"),
        (
            {"data": ("wrong.csv", WRONG_COLUMNS.encode())},
            422,
            "data: the columns besides the target must be the model's 30 features: missing "
            "['worst_radius']; unexpected ['colour']",
        ),
        ({"data": ("rows.csv", PNG)}, 422, "data: not a CSV or Parquet file"),
        ({"data": ("rows.xlsx", CANCER)}, 422, "data: 'rows.xlsx': use a .csv or .parquet"),
        ({"data": ("rows.csv", b"")}, 422, "data: the file 'rows.csv' is empty"),
        ({"model": ("model.onnx", b"\x08\x07")}, 422, "model: unknown model format '.onnx'"),
        ({"model": ("model.skops", b"")}, 422, "model: the file 'model.skops' is empty"),
        ({"fields": {"task": "ranking"}}, 422, "task: 'ranking': use one of"),
        ({"fields": {"promote": "maybe"}}, 422, "promote: 'maybe' is not a boolean"),
        ({"fields": {"trust": "os.system; rm"}}, 422, "trust: 'os.system; rm' is not a type"),
        ({"model": ("big.skops", b"x" * (1024 * 1024))}, 413, "MLPLATFORM_MODEL_UPLOAD_MAX_MB"),
    ],
)
def test_a_bad_upload_is_a_clear_4xx_and_nothing_is_stored_or_published(
    served, registered, case: dict[str, Any], status: int, says: str
) -> None:  # type: ignore[no-untyped-def]
    proc, store = served
    before, uploads_before = _state(store), store.list_keys(keys.UPLOADS)
    r = _post(
        proc,
        case.get("model", ("lr.skops", b"a model")),
        case.get("data", ("cancer.csv", CANCER)),
        fields=case.get("fields"),
        headers=case.get("headers", ADMIN),
    )
    assert_error(r, status, says)
    assert _state(store) == before
    assert store.list_keys(keys.UPLOADS) == uploads_before


def test_the_size_bound_holds_while_a_body_of_unknown_length_is_read(served) -> None:  # type: ignore[no-untyped-def]
    """A chunked body has no Content-Length to refuse up front: the bound stops the read."""
    proc, store = served
    before = store.list_keys(keys.UPLOADS)
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"; filename="m.skops"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(40):  # 2.5 MB, past the 1 MB bound
            yield b"x" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    r = httpx.post(
        f"{proc.url}/admin/models",
        content=body(),
        headers={**ADMIN, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=60,
    )
    assert_error(r, 413, "over the limit of 1 MB", "MLPLATFORM_MODEL_UPLOAD_MAX_MB")
    assert store.list_keys(keys.UPLOADS) == before


def test_a_body_that_is_not_a_form_is_415(served) -> None:  # type: ignore[no-untyped-def]
    proc, _ = served
    r = httpx.post(f"{proc.url}/admin/models", json={"model": "x"}, headers=ADMIN)
    assert_error(r, 415, "multipart/form-data")


def _unfitted() -> tuple[str, bytes]:
    return "unfitted.skops", _skops(LogisticRegression())


def _raises() -> tuple[str, bytes]:
    return "raises.joblib", _joblib(RaisesOnPredict().fit(X, Y))


def _fewer_columns() -> tuple[str, bytes]:
    model = Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression())])
    model.fit(X.drop(columns=["worst_radius"]), Y)
    return "fewer.skops", _skops(model)


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (_raises, "raises.joblib raised on the reference rows: ValueError: this model cannot"),
        (
            lambda: ("weights.pkl", pickle.dumps({"weights": [1, 2, 3]})),
            "weights.pkl is not a model: it holds a dict",
        ),
        (_unfitted, "unfitted.skops: the LogisticRegression is not fitted"),
        (lambda: ("notes.skops", b"these are my notes\n"), "notes.skops is not a skops file"),
        (_fewer_columns, "has columns the model was not fitted on ['worst_radius']"),
    ],
)
def test_a_refused_registration_names_the_problem_and_publishes_nothing(
    served, registered, make: Any, says: str
) -> None:  # type: ignore[no-untyped-def]
    proc, store = served
    before = _state(store)
    r = _post(proc, make(), wait=120)
    assert_error(r, 422, says)
    assert r.json()["type"] == "UploadRefused"
    assert _state(store) == before
    # The status says the same, and the upload's files are gone.
    ids = store.list_dirs(keys.UPLOADS)
    refused = [
        s
        for s in (uploads.status(store, i) for i in ids)
        if s["state"] == "refused" and says in s["reason"]
    ]
    assert len(refused) == 1, refused
    upload_id = refused[0]["upload"]
    answer = httpx.get(f"{proc.url}/admin/models/uploads/{upload_id}", headers=ADMIN).json()
    assert answer["state"] == "refused" and says in answer["reason"]
    assert "version" not in answer
    # the run writes the outcome, then deletes the files: the answer may come between the two
    data = keys.upload_file(upload_id, uploads.DATA)
    deadline = time.monotonic() + 30
    while store.exists(data) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not store.exists(data)


def test_without_a_launcher_an_upload_is_503_and_stores_nothing(local_store: Store) -> None:
    """MLPLATFORM_RETRAIN_LAUNCHER=none: nothing could register the upload."""
    with TestClient(create_app(serving_settings(), local_store)) as client:
        r = client.post(
            "/admin/models",
            files={"model": ("m.skops", b"x"), "data": ("d.csv", CANCER)},
            data={"target": "target"},
            headers=TEST_ADMIN,
        )
    assert_error(r, 503, "no retrain launcher", "MLPLATFORM_RETRAIN_LAUNCHER")
    assert local_store.list_keys("") == []
