"""Retraining a registered model (issue 27, item 3): ``mlplatform run --force`` refits a
``sklearn.base.clone`` of the user's model on reference + labelled rows, gates it like a
trained candidate and publishes it as the production version's child; a model that cannot be
cloned or refitted stays in production, served, and its run is a recorded skip. Real
SeaweedFS, real CLI and serving processes."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.datasets import make_classification
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder
from xgboost import XGBClassifier

from mlplatform_common import datalog, keys, storage
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.schema import encoded_frame
from mlplatform_common.storage import S3Store, Store
from tests.conftest import REPO, SIGNING_KEY, S3Server, ServingProcess, run_cli, serving_env
from tests.services.retrainer.user_models import NotCloneable, RefusesRefit

DATA = REPO / "data"


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("mlplatform_retrainer", list(args), env)


def _register(
    env: dict[str, str], name: str, model: Any, tmp: Path, data: Path, target: str
) -> None:
    path = tmp / f"{name}.joblib"
    joblib.dump(model, path)
    args = ["--name", name, "--model", str(path), "--data", str(data), "--target", target]
    proc = _cli(env, "register", *args, "--promote")
    assert proc.returncode == 0, proc.stderr


def _label(store: Store, rows: pd.DataFrame, targets: pd.Series) -> None:
    """Labelled rows of v1, stored as serving stores them (features as sent, target as text)."""
    now = time.time()
    for i, (features, target) in enumerate(zip(rows.to_dict("records"), targets, strict=True)):
        features = {k: (None if pd.isna(v) else v) for k, v in features.items()}
        datalog.write_feedback(
            store,
            {
                "model_version": "v1",
                "prediction": str(target),
                "target": str(target),
                "features": features,
            },
            ts=now + i * 0.001,
        )


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server) -> tuple[S3Store, dict[str, str]]:
    store = s3_server.store()
    env = serving_env(s3_server, store.bucket, MLPLATFORM_ROLLOUT="none")
    return store, env


def _registry(store: S3Store, name: str) -> ModelRegistry:
    return ModelRegistry(storage.for_model(store, name), SIGNING_KEY)


def _runs(store: S3Store, name: str) -> list[dict[str, Any]]:
    scoped = storage.for_model(store, name)
    return [scoped.get_json(k) for k in sorted(scoped.list_keys("state/retrain-runs/"))]


def test_a_registered_pipeline_with_a_category_column_is_refitted_through_the_gate(
    bucket: tuple[S3Store, dict[str, str]], tmp_path: Path
) -> None:
    store, env = bucket
    data = pd.read_csv(DATA / "penguins.csv").dropna(subset=["body_mass_g"])
    X, y = data.drop(columns=["body_mass_g"]), data["body_mass_g"]
    prep = ColumnTransformer(
        [("categories", OneHotEncoder(handle_unknown="ignore"), ["species", "island", "sex"])],
        remainder="passthrough",
    )
    model = Pipeline([("prep", prep), ("hgb", HistGradientBoostingRegressor(random_state=0))])
    csv = tmp_path / "penguins.csv"
    data.to_csv(csv, index=False)
    _register(env, "penguins", model.fit(X, y), tmp_path, csv, "body_mass_g")
    # Labels that teach what v1 cannot know: penguins of an island it never saw, 1500 g
    # heavier than their kind (new rows, so none is a row of the gate's held-out split).
    gentoo = X[X["species"] == "Gentoo"].copy()
    gentoo["island"] = "Atlantis"
    taught = y.loc[gentoo.index] + 1500
    _label(storage.for_model(store, "penguins"), gentoo, taught)

    # The default tolerance: the gate judges on the newest labelled rows, which v1 never saw.
    proc = _cli(env, "run", "--force", "--name", "penguins")
    assert proc.returncode == 0, proc.stderr
    assert "retrain promoted (model penguins)" in proc.stdout, proc.stdout
    registry = _registry(store, "penguins")
    assert registry.versions() == ["v1", "v2"] and registry.production_version() == "v2"
    manifest = registry.manifest("v2")
    assert manifest["parent"] == "v1" and manifest["refit_of"] == "v1"
    assert manifest["origin"] == "registered" and manifest["format"] == "joblib"
    assert manifest["estimator"].endswith("HistGradientBoostingRegressor")
    assert manifest["backup_estimator"] is None and manifest["retrain"] == {"clone": True}
    assert manifest["embedding_space"] == "model transform"
    assert [f["name"] for f in manifest["feature_schema"]] == list(X.columns)
    rows = manifest["training_data"]
    assert rows["feedback_rows"] == round(len(gentoo) * 0.8)  # the newest 20 % are held out
    assert rows["rows"] == rows["reference_rows"] + rows["feedback_rows"]
    assert manifest["gate"]["promote"] is True and manifest["gate"]["metric"] == "rmse"
    assert set(manifest["metrics"]) == {"training", "test"}
    # The refit learned what the labels taught; v1 did not.
    v1, v2 = registry.load("v1"), registry.load("v2")
    sample = gentoo.iloc[:40]
    before = v1.pipeline.predict(encoded_frame(sample, v1.manifest["feature_schema"]))
    after = v2.pipeline.predict(encoded_frame(sample, manifest["feature_schema"]))
    assert float(np.mean(after - before)) > 500
    (record,) = _runs(store, "penguins")
    assert record["outcome"] == "promoted" and record["version"] == "v2"
    assert record["gate"]["promote"] is True


def _user_split(tmp: Path) -> tuple[Path, pd.DataFrame, pd.Series, pd.DataFrame, pd.Series]:
    """The user's reference rows (in a CSV) and 600 rows of the same kind that arrive later,
    labelled: enough that the newest 20 % (120 rows) judge a refit within the tolerance."""
    X_all, y_all = make_classification(
        n_samples=1400, n_features=8, n_informative=5, flip_y=0.05, random_state=2
    )
    X = pd.DataFrame(X_all, columns=[f"f{i}" for i in range(8)])
    y = pd.Series(y_all, name="target")
    csv = tmp / "reference.csv"
    X.iloc[:800].assign(target=y.iloc[:800]).to_csv(csv, index=False)
    return csv, X.iloc[:800], y.iloc[:800], X.iloc[800:], y.iloc[800:]


def test_a_registered_xgboost_refit_as_good_is_promoted_at_the_default_tolerance(
    bucket: tuple[S3Store, dict[str, str]], tmp_path: Path
) -> None:
    store, env = bucket
    csv, X, y, later_X, later_y = _user_split(tmp_path)
    model = XGBClassifier(n_estimators=30, max_depth=3, random_state=0).fit(X, y)
    _register(env, "cancer", model, tmp_path, csv, "target")
    scoped = storage.for_model(store, "cancer")

    # Too few labelled rows to judge a refit on rows v1 never saw: a recorded skip.
    _label(scoped, later_X.iloc[:40], later_y.iloc[:40])
    proc = _cli(env, "run", "--force", "--name", "cancer")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "retrain skipped (model cancer)" in proc.stdout, proc.stdout
    assert "only 8 newest labelled rows are held out for the gate" in proc.stdout
    assert _registry(store, "cancer").versions() == ["v1"]

    # v1 was fitted on every reference row, the gate's reference test split too (F1 0.97 there
    # against 0.94 for the refit, which would fail the default tolerance on it):
    # the gate judges on the newest labelled rows, which neither model saw, and on the
    # reference test split against a clone fitted on the reference rows outside it.
    _label(scoped, later_X.iloc[40:], later_y.iloc[40:])
    proc = _cli(env, "run", "--force", "--name", "cancer")
    assert proc.returncode == 0, proc.stderr
    assert "retrain promoted (model cancer)" in proc.stdout, proc.stdout
    registry = _registry(store, "cancer")
    manifest = registry.manifest("v2")
    gate = manifest["gate"]
    assert gate["tolerance"] == 0.02 and gate["holdout"] == "newest labelled rows"
    assert gate["holdout_rows"] == round(len(later_X) * 0.2)
    assert gate["reference_baseline"] == "a refit on the reference rows outside the test split"
    assert gate["reference_current"] < 1.0  # the baseline never saw the split, unlike v1
    assert "(newest labelled rows)" in proc.stdout and "(against a refit" in proc.stdout
    assert manifest["training_data"]["holdout"] == "newest labelled rows"
    assert manifest["training_data"]["feedback_rows"] == len(later_X) - gate["holdout_rows"]
    assert manifest["parent"] == "v1" and manifest["origin"] == "registered"
    assert manifest["estimator"] == "xgboost.sklearn.XGBClassifier"
    assert manifest["classes"] == [0, 1]
    assert "error" not in manifest["onnx"], manifest["onnx"]  # converted and checked, as register
    refit = registry.load("v2").pipeline.model
    assert isinstance(refit, XGBClassifier) and refit is not model
    assert refit.get_params()["n_estimators"] == 30  # a clone: the user's parameters
    skipped, promoted = _runs(store, "cancer")
    assert skipped["outcome"] == "skipped" and skipped["gate"] is None
    assert promoted["outcome"] == "promoted" and promoted["gate"] == gate


def test_a_registered_refit_on_corrupted_labels_is_rejected(
    bucket: tuple[S3Store, dict[str, str]], tmp_path: Path
) -> None:
    store, env = bucket
    csv, X, y, later_X, later_y = _user_split(tmp_path)
    model = XGBClassifier(n_estimators=30, max_depth=3, random_state=0).fit(X, y)
    _register(env, "flipped", model, tmp_path, csv, "target")
    _label(storage.for_model(store, "flipped"), later_X, 1 - later_y)  # every label wrong

    proc = _cli(env, "run", "--force", "--name", "flipped")
    assert proc.returncode == 0, proc.stderr
    assert "retrain rejected (model flipped)" in proc.stdout, proc.stdout
    assert _registry(store, "flipped").versions() == ["v1"]
    (rejected,) = _runs(store, "flipped")
    gate = rejected["gate"]
    # The newest labels are wrong too; the reference test split shows what they taught.
    assert gate["holdout"] == "newest labelled rows"
    assert gate["reference_candidate"] < gate["reference_current"] - 0.02


@pytest.mark.parametrize(
    ("name", "model", "why"),
    [
        ("vendor", RefusesRefit, "refitting a clone of it raised RuntimeError: only its vendor"),
        ("plain", NotCloneable, "sklearn.base.clone refused it when it was registered"),
    ],
)
def test_a_model_that_cannot_be_refitted_is_skipped_and_still_served(
    bucket: tuple[S3Store, dict[str, str]], tmp_path: Path, name: str, model: Any, why: str
) -> None:
    store, env = bucket
    data = pd.read_csv(DATA / "breast_cancer.csv")
    X, y = data.drop(columns=["target"]), data["target"]
    _register(env, name, model.trained(X, y), tmp_path, DATA / "breast_cancer.csv", "target")
    registry = _registry(store, name)
    assert registry.manifest("v1")["retrain"]["clone"] is (model is RefusesRefit)
    labelled = X.sample(n=30, random_state=2) * 1.001
    _label(storage.for_model(store, name), labelled, y.loc[labelled.index])

    proc = _cli(env, "run", "--force", "--name", name)
    assert proc.returncode == 0, proc.stderr
    assert f"retrain skipped (model {name})" in proc.stdout
    assert why in proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if "cannot be refitted" in line]
    assert len(warnings) == 1 and "Traceback" not in proc.stderr
    assert registry.versions() == ["v1"] and registry.production_version() == "v1"
    (record,) = _runs(store, name)
    assert record["outcome"] == "skipped" and record["version"] is None
    assert any(why in reason for reason in record["reasons"])
    # The rows are answered: k new rows do not retry it on the next run.
    watermark = storage.for_model(store, name).get_json(keys.WATERMARK)
    assert watermark["outcome"] == "skipped" and watermark["rows"] == 30
    proc = _cli({**env, "MLPLATFORM_RETRAIN_EVERY": "20"}, "run", "--name", name)
    assert proc.returncode == 0 and "retrain skipped" in proc.stdout and "no trigger" in proc.stdout
    # Served and monitored as before, and the run is shown with its reason.
    serving = ServingProcess({**env, "MLPLATFORM_MODEL_NAME": name}).start()
    try:
        instances = X.iloc[:3].to_dict("records")
        r = httpx.post(serving.url + "/predict", json={"instances": instances})
        assert r.status_code == 200, r.text
        expected = model.trained(X, y).predict(X.iloc[:3])
        assert [str(a["label"]) for a in r.json()["predictions"]] == [str(v) for v in expected]
        runs = httpx.get(serving.url + "/retrain-runs").json()["runs"]
        assert any(why in reason for reason in runs[-1]["reasons"])
    finally:
        serving.stop()
