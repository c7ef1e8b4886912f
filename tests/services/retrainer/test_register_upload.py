"""``mlplatform run`` with MLPLATFORM_ACTION=register:<id>, as serving's launcher starts it for
an upload of POST /admin/models: the upload is registered, its outcome written and its files
deleted; a retried run registers nothing twice; an unknown upload is one line."""

from __future__ import annotations

import io
from pathlib import Path

import joblib
import pandas as pd
import skops.io
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from mlplatform_common import keys, storage, uploads
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.settings import DEV_SIGNING_KEY
from mlplatform_common.storage import LocalStore, Store
from tests.conftest import DATA, run_cli

NAME = "fraud"


def _env(root: Path, upload_id: str) -> dict[str, str]:
    return {
        "MLPLATFORM_STORE_URL": f"file://{root}",
        "MLPLATFORM_DEV_MODE": "true",
        "MLPLATFORM_ROLLOUT": "none",
        "MLPLATFORM_MODEL_NAME": NAME,
        "MLPLATFORM_ACTION": f"register:{upload_id}",
    }


def _upload(store: Store, model: bytes, filename: str, promote: bool) -> str:
    """An upload as serving stores it (routes/uploads.py)."""
    upload_id = uploads.new_id()
    request = {
        "model_file": filename,
        "format": uploads.model_format(filename),
        "data_file": "cancer.csv",
        "dataset": uploads.dataset_name("cancer.csv", upload_id),
        "target": "target",
        "task": None,
        "promote": promote,
        "trust": [],
    }
    uploads.store_upload(store, upload_id, model, DATA.read_bytes(), request)
    return upload_id


def _pipeline() -> Pipeline:
    frame = pd.read_csv(DATA)
    model = Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression(max_iter=500))])
    return model.fit(frame.drop(columns=["target"]), frame["target"])


def test_an_upload_is_registered_once_and_its_files_deleted(tmp_path: Path) -> None:
    root = LocalStore(tmp_path / "store")
    root.ensure()
    store = storage.for_model(root, NAME)
    buf = io.BytesIO()
    skops.io.dump(_pipeline(), buf)
    upload_id = _upload(store, buf.getvalue(), "lr.skops", promote=True)

    proc = run_cli("mlplatform_retrainer", ["run"], _env(tmp_path / "store", upload_id))
    assert proc.returncode == 0, proc.stderr
    assert "model v1 (classification" in proc.stdout and "in production" in proc.stdout
    registry = ModelRegistry(store, DEV_SIGNING_KEY.encode())
    assert registry.versions() == ["v1"] and registry.production_version() == "v1"
    assert registry.manifest("v1")["source_file"] == "lr.skops"
    status = uploads.status(store, upload_id)
    assert status["state"] == "published" and status["version"] == "v1"
    assert status["promoted"] is True
    assert sorted(store.list_keys(keys.upload_file(upload_id, ""))) == [
        keys.upload_file(upload_id, "outcome.json"),
        keys.upload_file(upload_id, "request.json"),
    ]

    # A retried Job (Kubernetes' backoffLimit) finds the outcome: nothing registered twice.
    again = run_cli("mlplatform_retrainer", ["run"], _env(tmp_path / "store", upload_id))
    assert again.returncode == 0, again.stderr
    assert "model v1" in again.stdout
    assert registry.versions() == ["v1"]


def test_a_refused_upload_is_one_line_its_outcome_written_and_nothing_published(
    tmp_path: Path,
) -> None:
    root = LocalStore(tmp_path / "store")
    root.ensure()
    store = storage.for_model(root, NAME)
    buf = io.BytesIO()
    joblib.dump(LogisticRegression(), buf)  # not fitted
    upload_id = _upload(store, buf.getvalue(), "lr.joblib", promote=True)
    for _ in range(2):  # the first run, then a retried one: the same line
        proc = run_cli("mlplatform_retrainer", ["run"], _env(tmp_path / "store", upload_id))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        # the stages it passed (the pod's log), then the refusal's one line
        lines = [line for line in proc.stderr.splitlines() if " ERROR " in line]
        assert len(lines) == 1 and "UploadRefused" in lines[0], proc.stderr
        assert "lr.joblib: the LogisticRegression is not fitted" in lines[0]
        assert "Traceback" not in proc.stderr
    status = uploads.status(store, upload_id)
    assert status["state"] == "refused" and "is not fitted" in status["reason"]
    assert ModelRegistry(store, DEV_SIGNING_KEY.encode()).versions() == []
    assert store.list_keys(keys.DATASETS) == []
    assert not store.exists(keys.upload_file(upload_id, uploads.DATA))


def test_an_unknown_upload_is_one_line(tmp_path: Path) -> None:
    proc = run_cli("mlplatform_retrainer", ["run"], _env(tmp_path / "store", "0" * 32))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"upload '{'0' * 32}': no such upload" in lines[0], proc.stderr
