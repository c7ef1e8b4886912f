"""Training and the ``train`` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from sklearn.datasets import load_iris

from mlplatform_common.registry import ModelRegistry
from mlplatform_common.schema import embed
from mlplatform_common.settings import DEV_SIGNING_KEY
from mlplatform_common.storage import LocalStore
from mlplatform_retrainer.train import TrainConfig, split, train
from tests.conftest import REPO, free_port


def test_reference_data_has_the_course_columns_and_the_training_rows(
    trained, shipped_dataset
) -> None:
    parts = split(shipped_dataset.X, shipped_dataset.y, TrainConfig())
    assert list(trained.ref_data.columns) == [f"PCA_{i}" for i in range(1, 11)] + ["target"]
    assert len(trained.ref_data) == len(parts.X_train) == trained.split_sizes["train"]
    assert trained.split_sizes == {"train": 341, "validation": 114, "test": 114}
    # ref_data is the training split pushed through the fitted embedding.
    pd.testing.assert_frame_equal(
        trained.ref_data.drop(columns="target"),
        embed(trained.pipeline, parts.X_train).reset_index(drop=True),
    )


def test_split_is_stratified_and_reproducible(shipped_dataset) -> None:
    a = split(shipped_dataset.X, shipped_dataset.y, TrainConfig(seed=7))
    b = split(shipped_dataset.X, shipped_dataset.y, TrainConfig(seed=7))
    assert list(a.X_test.index) == list(b.X_test.index)
    share = shipped_dataset.y.mean()
    for y in (a.y_train, a.y_val, a.y_test):
        assert abs(y.mean() - share) < 0.02


def test_metrics_cover_the_course_list(trained) -> None:
    assert set(trained.metrics["test"]) == {
        "accuracy",
        "balanced_accuracy",
        "precision",
        "recall",
        "f1",
        "roc_auc",
    }
    assert trained.metrics["test"]["f1"] > 0.9
    assert trained.metrics["backup_test"]["f1"] > 0.85


def test_components_are_configurable_and_clipped(shipped_dataset) -> None:
    result = train(shipped_dataset.X.iloc[:, :4], shipped_dataset.y, TrainConfig(n_components=10))
    assert result.n_components == 4
    assert list(result.ref_data.columns) == ["PCA_1", "PCA_2", "PCA_3", "PCA_4", "target"]


def test_unknown_estimator_is_refused(shipped_dataset) -> None:
    with pytest.raises(ValueError, match="unknown estimator 'svm'"):
        train(shipped_dataset.X, shipped_dataset.y, TrainConfig(estimator="svm"))


def _run_train(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "MLPLATFORM_STORE_URL": f"file://{store}",
        "MLPLATFORM_DEV_MODE": "true",
        "MLPLATFORM_SERVING_URL": f"http://127.0.0.1:{free_port()}",  # no serving there
    }
    return subprocess.run(
        [sys.executable, "-m", "mlplatform_retrainer", "train", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_train_command_publishes_v1_and_says_where(tmp_path: Path) -> None:
    store = tmp_path / "store"
    proc = _run_train(store)
    assert proc.returncode == 0, proc.stderr
    assert f"model v1 in production at file://{store}" in proc.stdout
    # No serving runs (make dev trains v1 before it starts one): said, and not an error.
    assert "serving not told (serving at http://127.0.0.1:" in proc.stdout
    assert "did not answer" in proc.stdout and "it loads v1 when it starts" in proc.stdout
    assert "training breast_cancer: estimator done" in proc.stderr
    registry = ModelRegistry(LocalStore(store), DEV_SIGNING_KEY.encode())
    assert registry.production_version() == "v1"
    assert LocalStore(store).exists("datasets/breast_cancer/raw.csv")
    # --if-missing leaves an existing production model alone.
    again = _run_train(store, "--if-missing")
    assert again.returncode == 0
    assert "v1 is already in production" in again.stdout
    assert registry.versions() == ["v1"]


def test_train_command_works_on_any_tabular_csv(tmp_path: Path) -> None:
    iris = load_iris(as_frame=True).frame.rename(columns={"target": "species"})
    iris["species"] = iris["species"].map({0: "setosa", 1: "versicolor", 2: "virginica"})
    path = tmp_path / "iris.csv"
    iris.to_csv(path, index=False)
    proc = _run_train(tmp_path / "store", "--data", str(path), "--target", "species")
    assert proc.returncode == 0, proc.stderr
    manifest = ModelRegistry(LocalStore(tmp_path / "store"), DEV_SIGNING_KEY.encode()).manifest(
        "v1"
    )
    assert manifest["classes"] == ["setosa", "versicolor", "virginica"]
    assert manifest["n_components"] == 4


@pytest.mark.parametrize(
    ("content", "target", "message"),
    [
        ("a,b\n1,2\n", "target", "target column 'target' not found"),
        ("a,b,target\n,1,1\n,2,0\n", "target", "feature column 'a' has no values at all"),
        ("a,target\n" + "1,1\n" * 10, "target", "single class"),
    ],
)
def test_train_command_explains_a_bad_csv_without_a_traceback(
    tmp_path: Path, content: str, target: str, message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    proc = _run_train(tmp_path / "store", "--data", str(path), "--target", target)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_train_refuses_to_run_without_a_signing_key_outside_dev_mode(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLPLATFORM_")}
    env["MLPLATFORM_STORE_URL"] = f"file://{tmp_path}"
    proc = subprocess.run(
        [sys.executable, "-m", "mlplatform_retrainer", "train"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "MLPLATFORM_SIGNING_KEY is not set" in proc.stderr
