"""Serving without scikit-learn or SciPy, as the serving image ships (issue 8's size budget).

A version with checked ONNX files is served, and its prediction log written with the
embedding, by ONNX Runtime alone; a version without them is refused with a reason that says
what to do, and the served version stays.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from mlplatform_common import datalog
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.schema import embed
from mlplatform_common.storage import LocalStore
from tests.conftest import SIGNING_KEY, ServingProcess, publish_trained, published_local_store
from tests.services.serving.test_api import assert_error

# Make `import sklearn` / `import scipy` fail (and importlib.util.find_spec return None), as in
# an environment where they are not installed, then start serving as `python -m` would.
WITHOUT_SKLEARN = """
import runpy, sys
for name in ("sklearn", "scipy"):
    sys.modules[name] = None
runpy.run_module("mlplatform_serving", run_name="__main__")
"""
ADMIN = {"Authorization": "Bearer no-sklearn-admin"}


@pytest.fixture
def store(tmp_path: Path, trained, shipped_dataset) -> LocalStore:
    store = published_local_store(tmp_path / "store", trained, shipped_dataset)
    return store


@pytest.fixture
def serving(store: LocalStore) -> Iterator[ServingProcess]:
    env = {
        "MLPLATFORM_STORE_URL": f"file://{store.root}",
        "MLPLATFORM_SIGNING_KEY": SIGNING_KEY.decode(),
        "MLPLATFORM_ADMIN_TOKEN": "no-sklearn-admin",
        "MLPLATFORM_LOG_FLUSH_SECONDS": "0.2",
        "MLPLATFORM_RETRAIN_EVERY": "0",
    }
    proc = ServingProcess(env, python_code=WITHOUT_SKLEARN).start()
    yield proc
    proc.stop()


def test_onnx_versions_are_served_and_logged_without_sklearn(
    serving: ServingProcess, store: LocalStore, rows, trained, shipped_dataset
) -> None:
    r = httpx.post(serving.url + "/predict", json={"instances": rows[:25]})
    assert r.status_code == 200, r.text
    assert r.json()["engine"] == "onnxruntime"
    ids = [p["prediction_id"] for p in r.json()["predictions"]]
    labels = [p["label"] for p in r.json()["predictions"]]
    assert labels == trained.pipeline.predict(shipped_dataset.X.iloc[:25]).tolist()
    output = serving.stop()  # graceful: flushes the prediction log
    assert "Traceback" not in output, output
    log = datalog.read_predictions(store).set_index("prediction_id").loc[ids]
    pca = [f"PCA_{i}" for i in range(1, trained.n_components + 1)]
    expected = embed(trained.pipeline, shipped_dataset.X.iloc[:25]).to_numpy()
    np.testing.assert_allclose(log[pca].to_numpy(), expected, atol=1e-9)


def test_a_version_without_onnx_files_is_refused_with_what_to_do(
    serving: ServingProcess, store: LocalStore, trained, shipped_dataset, monkeypatch
) -> None:
    monkeypatch.setattr(
        "mlplatform_retrainer.onnx_export.convert",
        lambda p, X, task: ({}, {"error": "ValueError: no converter"}),
    )
    v2 = publish_trained(ModelRegistry(store, SIGNING_KEY), trained, shipped_dataset)
    r = httpx.post(serving.url + "/admin/reload", headers=ADMIN, json={"version": v2})
    assert_error(
        r,
        503,
        "v2 has no checked ONNX file for its predictions (ValueError: no converter)",
        "SERVING_EXTRAS=sklearn",
    )
    # the served version stays, and answers
    assert (
        httpx.get(serving.url + "/ready").json().items()
        >= {"ready": True, "model_version": "v1"}.items()
    )
    r = httpx.post(serving.url + "/predict", json={"features": shipped_dataset.X.iloc[0].to_dict()})
    assert r.status_code == 200 and r.json()["model_version"] == "v1"


def test_a_model_is_registered_through_a_serving_without_sklearn(
    store: LocalStore, shipped_dataset
) -> None:
    """POST /admin/models never loads the model in serving: the form is read and the data
    checked without scikit-learn, and the retrainer it starts registers the upload."""
    import io

    import skops.io
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    model = Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression(max_iter=500))])
    model.fit(shipped_dataset.X, shipped_dataset.y)
    buf = io.BytesIO()
    skops.io.dump(model, buf)
    env = {
        "MLPLATFORM_STORE_URL": f"file://{store.root}",
        "MLPLATFORM_SIGNING_KEY": SIGNING_KEY.decode(),
        "MLPLATFORM_ADMIN_TOKEN": "no-sklearn-admin",
        "MLPLATFORM_RETRAIN_EVERY": "0",
        "MLPLATFORM_RETRAIN_LAUNCHER": "local",
    }
    proc = ServingProcess(env, python_code=WITHOUT_SKLEARN).start()
    try:
        r = httpx.post(
            proc.url + "/admin/models",
            params={"wait": 120},
            files={
                "model": ("lr.skops", buf.getvalue()),
                "data": ("cancer.csv", shipped_dataset.raw),
            },
            data={"target": "target"},
            headers=ADMIN,
            timeout=180,
        )
    finally:
        output = proc.stop()
    assert r.status_code == 201, r.text + output
    assert r.json()["version"] == "v2" and r.json()["promoted"] is False
    assert "Traceback" not in output, output
    assert ModelRegistry(store, SIGNING_KEY).manifest("v2")["origin"] == "registered"
