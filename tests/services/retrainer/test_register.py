"""``mlplatform register``: models trained elsewhere (a Pipeline with category columns, an
XGBoost classifier, a LightGBM regressor) registered under three names into one real S3
store, each served by a real serving process answering JSON, CSV and V2 with the model's own
predictions; and every bad input refused with one line, nothing published."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
import skops.io
from lightgbm import LGBMRegressor
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from xgboost import XGBClassifier

from mlplatform_common import storage
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.schema import load_dataset
from mlplatform_common.settings import DEV_SIGNING_KEY
from mlplatform_common.storage import LocalStore, S3Store
from mlplatform_retrainer import register as registration
from tests.conftest import REPO, SIGNING_KEY, S3Server, ServingProcess, run_cli, serving_env
from tests.services.retrainer.conftest import log_messages
from tests.services.retrainer.user_models import Crashes, Hangs, RaisesOnPredict
from tests.services.serving.test_tasks import rows_of, v2_inputs

DATA = REPO / "data"
MLPLATFORM = str(Path(sys.executable).parent / "mlplatform")


def _register(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("mlplatform_retrainer", ["register", *args], env)


# -- the user's models ----------------------------------------------------------------------


def _penguins(tmp: Path) -> tuple[Path, Path, Any]:
    """A Pipeline with category columns (one-hot) and HistGradientBoostingRegressor."""
    data = pd.read_csv(DATA / "penguins.csv").dropna(subset=["body_mass_g"])
    X = data.drop(columns=["body_mass_g"])
    prep = ColumnTransformer(
        [("categories", OneHotEncoder(handle_unknown="ignore"), ["species", "island", "sex"])],
        remainder="passthrough",
    )
    model = Pipeline([("prep", prep), ("hgb", HistGradientBoostingRegressor(random_state=0))])
    model.fit(X, data["body_mass_g"])
    path, csv = tmp / "penguins.joblib", tmp / "penguins-mass.csv"
    joblib.dump(model, path)
    data.to_csv(csv, index=False)
    return path, csv, model


def _xgboost(tmp: Path) -> tuple[Path, Path, Any]:
    data = pd.read_csv(DATA / "breast_cancer.csv")
    model = XGBClassifier(n_estimators=30, max_depth=3, random_state=0)
    model.fit(data.drop(columns=["target"]), data["target"])
    path, parquet = tmp / "cancer.skops", tmp / "cancer.parquet"
    skops.io.dump(model, path)
    data.to_parquet(parquet)  # the same rows as the CSV the tests read
    return path, parquet, model


def _lightgbm(tmp: Path) -> tuple[Path, Path, Any]:
    data = pd.read_csv(DATA / "diabetes.csv")
    model = LGBMRegressor(n_estimators=40, random_state=0, verbose=-1)
    model.fit(data.drop(columns=["progression"]), data["progression"])
    path = tmp / "diabetes.pkl"
    with path.open("wb") as f:
        pickle.dump(model, f)
    return path, DATA / "diabetes.csv", model


@pytest.fixture(scope="module")
def registered(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Three models registered under three names into one bucket, each promoted."""
    tmp = tmp_path_factory.mktemp("register")
    store = s3_server.store()
    env = serving_env(s3_server, store.bucket, MLPLATFORM_ROLLOUT="none")
    models = {}
    for name, make, target, extra in (
        ("penguins", _penguins, "body_mass_g", []),
        (
            "cancer",
            _xgboost,
            "target",
            ["--trust", "xgboost.sklearn.XGBClassifier", "--trust", "xgboost.core.Booster"],
        ),
        ("diabetes", _lightgbm, "progression", []),
    ):
        path, data, model = make(tmp)
        args = ["--name", name, "--model", str(path), "--data", str(data), "--target", target]
        proc = _register(env, *args, "--promote", *extra)
        assert proc.returncode == 0, proc.stderr
        assert f"model v1 ({'classification' if name == 'cancer' else 'regression'}" in proc.stdout
        assert "in production" in proc.stdout
        models[name] = (
            model,
            data.with_suffix(".csv") if name != "cancer" else DATA / "breast_cancer.csv",
            target,
        )
    return store, env, models


def test_register_shows_its_stages_on_stderr_and_keeps_stdout(
    s3_server: S3Server, tmp_path: Path
) -> None:
    """What a user waits for (the separate process, the conversion, the store) has a line
    before and one after with the time; stdout is the summary alone, as before."""
    path, _csv, _model = _lightgbm(tmp_path)
    data = tmp_path / "diabetes.parquet"
    pd.read_csv(DATA / "diabetes.csv").to_parquet(data)
    store = s3_server.store()
    env = serving_env(s3_server, store.bucket, MLPLATFORM_ROLLOUT="none")
    proc = _register(
        env, "--name", "diab", "--model", str(path), "--data", str(data), "--target", "progression"
    )
    assert proc.returncode == 0, proc.stderr
    manifest = _registry(store, "diab").manifest("v1")
    described = registration.describe(
        registration.Registered("v1", manifest, False), storage.for_model(store, "diab").url
    )
    assert proc.stdout == described + "\n"
    expected = [
        r"read diabetes.parquet \(0.0 MB\) in \d+\.\d s",
        r"validated: 442 rows x 11 columns, task regression \(.+\)",
        r"loading diabetes.pkl and predicting the 442 reference rows in a separate process "
        r"\(timeout 120 s\) \.\.\.",
        r"diabetes.pkl loaded and predicted them in \d+\.\d s",
        r"computing the drift embedding and the reference scores, converting to ONNX \.\.\.",
        r"version files ready in \d+\.\d s",
        r"storing datasets/diabetes and the version's \d+ files \(\d+\.\d MB\) \.\.\.",
        r"stored in \d+\.\d s",
    ]
    stages = [m for m in log_messages(proc.stderr) if any(re.fullmatch(p, m) for p in expected)]
    assert len(stages) == len(expected), proc.stderr
    for message, pattern in zip(stages, expected, strict=True):  # in this order
        assert re.fullmatch(pattern, message), (message, pattern)


def _registry(store: S3Store, name: str) -> ModelRegistry:
    return ModelRegistry(storage.for_model(store, name), SIGNING_KEY)


def test_registered_versions_are_signed_with_their_origin_and_kept_apart(registered) -> None:  # type: ignore[no-untyped-def]
    store, env, _models = registered
    assert storage.model_names(store) == ["cancer", "diabetes", "penguins"]
    manifests = {
        name: _registry(store, name).manifest("v1") for name in ("penguins", "cancer", "diabetes")
    }
    for name, manifest in manifests.items():
        assert _registry(store, name).production_version() == "v1"
        assert _registry(store, name).versions() == ["v1"]
        assert manifest["origin"] == "registered" and manifest["retrain"] == {"clone": True}
        assert "reference" in manifest["metrics"]
    assert manifests["penguins"]["format"] == "joblib"
    assert manifests["cancer"]["format"] == "skops"
    assert manifests["penguins"]["estimator"].endswith("HistGradientBoostingRegressor")
    assert manifests["cancer"]["estimator"] == "xgboost.sklearn.XGBClassifier"
    assert manifests["cancer"]["classes"] == [0, 1]
    # The pipeline's own transform steps give its embedding; the boosters' the raw numbers.
    assert manifests["penguins"]["embedding_space"] == "model transform"
    assert manifests["cancer"]["embedding_space"] == "raw numbers"
    # ONNX where it converts (the boosters, checked on every row), else the reason.
    assert "category features" in manifests["penguins"]["onnx"]["error"]
    for name in ("cancer", "diabetes"):
        onnx = manifests[name]["onnx"]
        assert "error" not in onnx and onnx["checked_rows"] > 400
        assert onnx["embedding"]["file"] == "embedding.onnx"
    kinds = {f["name"]: f["dtype"] for f in manifests["penguins"]["feature_schema"]}
    assert kinds["island"] == "category" and kinds["bill_length_mm"] == "float"
    # status lists one name's versions only.
    proc = run_cli("mlplatform_retrainer", ["status", "--name", "cancer"], env)
    assert proc.returncode == 0, proc.stderr
    assert "production: v1" in proc.stdout and "registered" in proc.stdout
    assert "roc_auc=" in proc.stdout and "rmse" not in proc.stdout


@pytest.mark.parametrize("name", ["penguins", "cancer", "diabetes"])
def test_a_registered_model_is_served_with_its_own_predictions(registered, name: str) -> None:  # type: ignore[no-untyped-def]
    _store, env, models = registered
    model, data, target = models[name]
    dataset = load_dataset(data, target)
    rows = rows_of(dataset, 6, start=3)
    frame = pd.DataFrame(rows, columns=dataset.features).astype(dataset.X.dtypes.to_dict())
    regression = name != "cancer"
    want = model.predict(frame) if regression else model.predict_proba(frame)
    serving = ServingProcess({**env, "MLPLATFORM_MODEL_NAME": name}).start()
    try:
        card = httpx.get(serving.url + "/model").json()
        assert card["version"] == "v1" and card["task"] == (
            "regression" if regression else "classification"
        )
        r = httpx.post(serving.url + "/predict", json={"instances": rows[:2]})
        assert r.status_code == 200, r.text
        answers = r.json()["predictions"]
        csv = pd.DataFrame(rows[2:4], columns=dataset.features).to_csv(index=False)
        r = httpx.post(serving.url + "/predict", content=csv, headers={"content-type": "text/csv"})
        assert r.status_code == 200, r.text
        answers += r.json()["predictions"]
        r = httpx.post(
            f"{serving.url}/v2/models/{name}/infer", json={"inputs": v2_inputs(dataset, rows[4:])}
        )
        assert r.status_code == 200, r.text
        outputs = {o["name"]: o for o in r.json()["outputs"]}
        engine = httpx.get(serving.url + "/health").json()
    finally:
        serving.stop()
    if regression:
        got = [a["value"] for a in answers] + outputs["predict"]["data"]
        tolerance = 1e-9 if name == "penguins" else 1e-5  # LightGBM's ONNX graph runs in float32
    else:
        got = [list(a["probabilities"].values()) for a in answers]
        got += np.reshape(outputs["probabilities"]["data"], (2, 2)).tolist()
        tolerance = 1e-6
    np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)
    assert engine["model_version"] == "v1"


# -- help ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["train"],
        ["register"],
        ["promote"],
        ["pin"],
        ["rollback"],
        ["unpin"],
        ["status"],
        ["run"],
    ],
)
def test_every_command_prints_its_help(command: list[str]) -> None:
    proc = subprocess.run(
        [MLPLATFORM, *command, "--help"], capture_output=True, text=True, check=False, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"Usage: mlplatform {' '.join(command)}".rstrip())
    assert "--name" in proc.stdout or not command


@pytest.mark.parametrize(
    "module", ["mlplatform_retrainer", "mlplatform_serving", "mlplatform_webapp"]
)
def test_each_service_module_prints_its_help(module: str) -> None:
    proc = run_cli(module, ["--help"], {}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m " + module) or proc.stdout.startswith(
        "Usage: python -m " + module
    )
    assert "Traceback" not in proc.stderr


# -- refused ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cancer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """A logistic regression on the breast-cancer data, as a .joblib, and its data."""
    tmp = tmp_path_factory.mktemp("cancer")
    data = pd.read_csv(DATA / "breast_cancer.csv")
    model = Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression(max_iter=500))])
    model.fit(data.drop(columns=["target"]), data["target"])
    joblib.dump(model, tmp / "lr.joblib")
    return tmp / "lr.joblib", data


def _local_env(store: Path) -> dict[str, str]:
    return {
        "MLPLATFORM_STORE_URL": f"file://{store}",
        "MLPLATFORM_DEV_MODE": "true",
        "MLPLATFORM_ROLLOUT": "none",
    }


def _refused(tmp_path: Path, model: Path, data: Path, message: str, *extra: str) -> None:
    store = tmp_path / "store"
    proc = _register(
        _local_env(store),
        "--name",
        "fraud",
        "--model",
        str(model),
        "--data",
        str(data),
        "--target",
        "target",
        *extra,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    # Nothing published, nothing uploaded.
    assert not store.exists() or LocalStore(store).list_keys("") == []
    if store.exists():
        assert ModelRegistry(LocalStore(store), DEV_SIGNING_KEY.encode()).versions() == []


def _fitted(tmp_path: Path, cls: type, data: pd.DataFrame) -> Path:
    path = tmp_path / f"{cls.__name__}.joblib"
    joblib.dump(cls().fit(data.drop(columns=["target"]), data["target"]), path)
    return path


def test_wrong_columns_are_named(tmp_path: Path, cancer) -> None:  # type: ignore[no-untyped-def]
    model, data = cancer
    path = tmp_path / "wrong.csv"
    data.drop(columns=["worst_radius"]).assign(colour="red").to_csv(path, index=False)
    _refused(
        tmp_path,
        model,
        path,
        "lacks the model's features ['worst_radius'] and has columns the model was not fitted on ['colour']",
    )


def test_a_missing_target_column_is_named(tmp_path: Path, cancer) -> None:  # type: ignore[no-untyped-def]
    model, data = cancer
    path = tmp_path / "no-target.csv"
    data.drop(columns=["target"]).to_csv(path, index=False)
    _refused(tmp_path, model, path, "target column 'target' not found")


@pytest.mark.parametrize(
    ("cls", "message", "extra"),
    [
        (
            RaisesOnPredict,
            "raised on the reference rows: ValueError: this model cannot predict",
            [],
        ),
        (Hangs, "did not load and predict the 569 reference rows within 5s", ["--timeout", "5"]),
        (
            Crashes,
            "crashed the process that loaded it and predicted the reference rows (SIGSEGV)",
            [],
        ),
    ],
)
def test_a_model_that_raises_hangs_or_crashes_is_refused(
    tmp_path: Path, cancer, cls: type, message: str, extra: list[str]
) -> None:  # type: ignore[no-untyped-def]
    _model, data = cancer
    _refused(tmp_path, _fitted(tmp_path, cls, data), DATA / "breast_cancer.csv", message, *extra)


def test_an_unfitted_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "unfitted.joblib"
    joblib.dump(LogisticRegression(), path)
    _refused(tmp_path, path, DATA / "breast_cancer.csv", "the LogisticRegression is not fitted")


@pytest.mark.parametrize(
    ("filename", "content", "message"),
    [
        (
            "dict.pkl",
            pickle.dumps({"weights": [1, 2, 3]}),
            "dict.pkl is not a model: it holds a dict",
        ),
        (
            "notes.joblib",
            b"these are my notes\n",
            "notes.joblib could not be loaded as a joblib/pickle file",
        ),
        ("notes.skops", b"these are my notes\n", "notes.skops is not a skops file"),
        ("model.onnx", b"\x08\x07", "unknown model format '.onnx'"),
    ],
)
def test_a_file_that_is_not_a_model_is_refused(
    tmp_path: Path, filename: str, content: bytes, message: str
) -> None:
    path = tmp_path / filename
    path.write_bytes(content)
    _refused(tmp_path, path, DATA / "breast_cancer.csv", message)


def test_a_skops_file_with_untrusted_types_is_refused_unless_trusted(
    tmp_path: Path, cancer
) -> None:  # type: ignore[no-untyped-def]
    _model, data = cancer
    path = tmp_path / "custom.skops"
    skops.io.dump(RaisesOnPredict().fit(data.drop(columns=["target"]), data["target"]), path)
    untrusted = "tests.services.retrainer.user_models.RaisesOnPredict"
    _refused(
        tmp_path, path, DATA / "breast_cancer.csv", f"holds types that are not trusted: {untrusted}"
    )
    # Trusted, it loads, and is then refused for what it does (it runs the code it trusts).
    _refused(
        tmp_path,
        path,
        DATA / "breast_cancer.csv",
        "raised on the reference rows",
        "--trust",
        untrusted,
    )


def test_a_skops_pipeline_of_scikit_learn_types_registers_as_a_candidate(
    tmp_path: Path, cancer
) -> None:  # type: ignore[no-untyped-def]
    model, _data = cancer
    path = tmp_path / "lr.skops"
    skops.io.dump(joblib.load(model), path)
    store = tmp_path / "store"
    env = _local_env(store)
    args = [
        "--name",
        "fraud",
        "--model",
        str(path),
        "--data",
        str(DATA / "breast_cancer.csv"),
        "--target",
        "target",
    ]
    proc = _register(env, *args)
    assert proc.returncode == 0, proc.stderr
    assert (
        "model v1 (classification, sklearn.linear_model._logistic.LogisticRegression) published as a candidate"
        in proc.stdout
    )
    registry = ModelRegistry(
        storage.for_model(LocalStore(store), "fraud"), DEV_SIGNING_KEY.encode()
    )
    assert registry.versions() == ["v1"] and registry.production() is None
    manifest = registry.manifest("v1")
    assert manifest["format"] == "skops" and manifest["embedding_space"] == "model transform"
    # A promotion by name then puts it in production, and status says so.
    proc = run_cli("mlplatform_retrainer", ["promote", "fraud", "v1"], env)
    assert proc.returncode == 0, proc.stderr
    assert "fraud: production is v1" in proc.stdout
    assert registry.production_version() == "v1"
    proc = run_cli("mlplatform_retrainer", ["status", "--name", "fraud"], env)
    assert "production: v1" in proc.stdout and "* v1  registered" in proc.stdout
    # What serving's admin API starts: a run with MLPLATFORM_ACTION does that instead of a retrain.
    proc = run_cli(
        "mlplatform_retrainer",
        ["run"],
        {**env, "MLPLATFORM_MODEL_NAME": "fraud", "MLPLATFORM_ACTION": "pin:v1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "fraud: production is v1 and held" in proc.stdout
    assert registry.production()["hold"]["reason"] == "pinned to v1 by hand"  # type: ignore[index]


def test_rows_a_registered_model_refuses_are_bad_input_not_a_crash() -> None:
    """A category value the user's encoder never saw: a 422 from serving, naming the model's
    complaint, not a 500."""
    from mlplatform_common.errors import InvalidInput
    from mlplatform_common.registered import RegisteredModel
    from mlplatform_common.schema import encoded_frame, feature_schema

    X = pd.DataFrame({"colour": ["red", "blue"] * 10, "size": np.arange(20.0)})
    y = [0, 1] * 10
    strict = ColumnTransformer([("c", OneHotEncoder(), ["colour"])], remainder="passthrough")
    model = Pipeline([("prep", strict), ("lr", LogisticRegression())]).fit(X, y)
    schema = feature_schema(X)
    wrapped = RegisteredModel(model, schema, embedding=None)
    seen = encoded_frame(X.iloc[:2], schema)
    np.testing.assert_allclose(wrapped.predict_proba(seen), model.predict_proba(X.iloc[:2]))
    unseen = encoded_frame(pd.DataFrame({"colour": ["green"], "size": [1.0]}), schema)
    with pytest.raises(
        InvalidInput, match="refused these rows: ValueError: Found unknown categories"
    ):
        wrapped.predict_proba(unseen)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["status", "--name", "Bad_Name"], {}, "model name 'Bad_Name': use 1-40 lowercase"),
        (["status"], {"MLPLATFORM_MODEL_NAME": "Bad"}, "MLPLATFORM_MODEL_NAME: Value error"),
        (["rollback", "--name", "nothing-here"], {}, "no previous production version"),
        (["run"], {"MLPLATFORM_ACTION": "rollback"}, "no previous production version"),
        (["run"], {"MLPLATFORM_ACTION": "retrain"}, "MLPLATFORM_ACTION='retrain': use promote:vN"),
    ],
)
def test_a_bad_name_or_state_is_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    proc = run_cli("mlplatform_retrainer", args, {**_local_env(tmp_path / "store"), **env})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
