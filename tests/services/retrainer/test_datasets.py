"""`upload_dataset_file` and `train_from_store` on a real SeaweedFS store: the plain functions a
CLI calls (`mlplatform data upload`, `mlplatform train --dataset`)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from mlplatform_common import datasets, keys
from mlplatform_common.errors import Conflict, DatasetError, PayloadTooLarge
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import open_store
from mlplatform_retrainer.job import train_from_store, upload_dataset_file
from mlplatform_retrainer.settings import RetrainerSettings
from tests.conftest import REPO, SIGNING_KEY, S3Server


def _settings(s3_server: S3Server, **kw: object) -> RetrainerSettings:
    common = s3_server.settings(f"b-{uuid.uuid4().hex[:12]}", model_name="fraud")
    return RetrainerSettings(
        **common.model_dump(exclude={"signing_key"}),
        signing_key=SIGNING_KEY.decode(),
        n_components=3,
        **kw,
    )


def test_a_file_uploaded_then_trained_from_the_store(s3_server: S3Server) -> None:
    settings = _settings(s3_server)
    summary = upload_dataset_file(settings, REPO / "data" / "diabetes.csv", "diab")
    assert summary["task"] == "regression" and summary["rows"] == 442  # target from .meta.json
    store = open_store(settings)  # the model's part of the store
    assert store.exists(keys.dataset("diab", "meta.json"))
    assert [d["name"] for d in datasets.listing(store)] == ["diab"]
    with pytest.raises(Conflict, match="'diab' already exists"):
        upload_dataset_file(settings, REPO / "data" / "diabetes.csv", "diab")

    published = train_from_store(settings, "diab")
    manifest = ModelRegistry(store, SIGNING_KEY).manifest(published.version)
    assert manifest["training_data"]["dataset"] == "diab"
    assert manifest["task"] == "regression" and published.promoted


def test_a_bad_file_is_refused_before_anything_is_stored(
    s3_server: S3Server, tmp_path: Path
) -> None:
    settings = _settings(s3_server, dataset_max_mb=0.01)
    with pytest.raises(PayloadTooLarge, match=r"limit of 0.01 MB \(MLPLATFORM_DATASET_MAX_MB\)"):
        upload_dataset_file(settings, REPO / "data" / "diabetes.csv", "diab")
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n1,2\n")
    with pytest.raises(DatasetError, match="target column 'target' not found"):
        upload_dataset_file(settings, bad, "bad")
    assert open_store(settings, ensure=True).list_keys(keys.DATASETS) == []


def test_mlplatform_data_upload_then_train_on_it_and_a_bad_file_is_one_line(
    s3_server: S3Server, tmp_path: Path
) -> None:
    from tests.conftest import run_cli, serving_env

    bucket = f"b-{uuid.uuid4().hex[:12]}"
    s3_server.store(bucket)
    env = serving_env(s3_server, bucket, MLPLATFORM_N_COMPONENTS="3")
    penguins = REPO / "data" / "penguins.csv"
    done = run_cli(
        "mlplatform_retrainer",
        ["data", "upload", str(penguins), "--name", "birds", "--dataset-name", "pg"],
        env,
    )
    assert done.returncode == 0, done.stderr
    assert "stored data set 'pg'" in done.stdout and "target 'species'" in done.stdout
    done = run_cli("mlplatform_retrainer", ["train", "--name", "birds", "--dataset", "pg"], env)
    assert done.returncode == 0, done.stderr
    birds = open_store(s3_server.settings(bucket, model_name="birds"))
    manifest = ModelRegistry(birds, SIGNING_KEY).manifest("v1")
    assert manifest["training_data"]["dataset"] == "pg"

    bad = tmp_path / "bad.csv"
    bad.write_text("a,a,target\n1,2,0\n")
    done = run_cli("mlplatform_retrainer", ["data", "upload", str(bad), "--name", "birds"], env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "'a'" in done.stderr
    assert [d["name"] for d in datasets.listing(birds)] == ["pg"]  # nothing else stored
