"""Batch scoring (``python -m mlplatform_retrainer batch``) on a real SeaweedFS store, through
the real CLI: chunks, the output beside the input, the prediction log flagged as batch (read
by the reporter), ``/feedback`` by a batch row's id, and bad files that write nothing."""

from __future__ import annotations

import io
import re
import time

import httpx
import numpy as np
import pandas as pd
import pytest

from mlplatform_common import datalog, keys
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.schema import Dataset, encoded_frame
from mlplatform_common.storage import S3Store
from mlplatform_reporter import job as reporter_job
from mlplatform_reporter.settings import ReporterSettings
from mlplatform_retrainer.job import upload_dataset
from tests.conftest import (
    SIGNING_KEY,
    S3Server,
    ServingProcess,
    publish_trained,
    run_cli,
    serving_env,
)

ROWS = 10_000
CHUNK = 3_000  # does not divide ROWS: the last chunk is 1,000 rows


def _store_with(s3_server: S3Server, trained, dataset: Dataset) -> tuple[S3Store, dict[str, str]]:  # type: ignore[no-untyped-def]
    store = s3_server.store()
    upload_dataset(store, dataset)
    publish_trained(ModelRegistry(store, SIGNING_KEY), trained, dataset)
    return store, serving_env(s3_server, store.bucket)


def _rows(dataset: Dataset, n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` rows of the data set's features (drawn with replacement), columns shuffled: a
    header in any order is the model's."""
    rng = np.random.default_rng(seed)
    frame = dataset.X.iloc[rng.integers(0, len(dataset.X), n)].reset_index(drop=True)
    return frame[list(rng.permutation(frame.columns))]


def _batch(env: dict[str, str], *args: str):  # type: ignore[no-untyped-def]
    return run_cli("mlplatform_retrainer", ["batch", *args], env)


def _expected(store: S3Store, version: str, rows: pd.DataFrame) -> tuple[object, np.ndarray]:
    """The registry model's own answers for ``rows``: its pipeline on the encoded rows."""
    model = ModelRegistry(store, SIGNING_KEY).load(version)
    X = encoded_frame(rows, model.manifest["feature_schema"])
    if model.manifest.get("task") == "regression":
        return model, np.asarray(model.pipeline.predict(X), dtype=float)
    return model, model.pipeline.predict_proba(X)


def _check_scored(store: S3Store, version: str, rows: pd.DataFrame, out: pd.DataFrame) -> None:
    model, expected = _expected(store, version, rows)
    assert len(out) == len(rows)
    # the input's columns first, as they were, then the answers
    assert list(out.columns[: rows.shape[1]]) == list(rows.columns)
    np.testing.assert_allclose(
        out[list(rows.columns)].to_numpy(dtype=float), rows.to_numpy(dtype=float)
    )
    classes = model.classes  # type: ignore[attr-defined]
    assert list(out.columns[rows.shape[1] :]) == [
        "prediction_id",
        "prediction",
        "probability",
        *(f"proba_{c}" for c in classes),
        "model_version",
    ]
    proba = out[[f"proba_{c}" for c in classes]].to_numpy(dtype=float)
    np.testing.assert_allclose(proba, expected, atol=1e-6)  # ONNX Runtime vs scikit-learn
    labels = np.asarray(classes)[expected.argmax(axis=1)]
    assert (out["prediction"].to_numpy() == labels).all()
    assert (out["model_version"] == version).all()
    assert out["prediction_id"].is_unique
    assert out["prediction_id"].map(datalog.prediction_time).notna().all()


def _progress(stdout: str) -> list[str]:
    return re.findall(r"^rows \d+/\d+ \(\d+%\)$", stdout, flags=re.M)


def test_csv_and_parquet_are_scored_in_chunks_logged_as_batch_and_reported(
    s3_server: S3Server, trained, shipped_dataset: Dataset
) -> None:
    store, env = _store_with(s3_server, trained, shipped_dataset)
    rows = _rows(shipped_dataset, ROWS)
    store.put("batch/in.csv", rows.to_csv(index=False).encode())
    proc = _batch(env, "--input", "batch/in.csv", "--chunk-rows", str(CHUNK))
    assert proc.returncode == 0, proc.stderr
    assert _progress(proc.stdout) == [
        "rows 3000/10000 (30%)",
        "rows 6000/10000 (60%)",
        "rows 9000/10000 (90%)",
        "rows 10000/10000 (100%)",
    ]
    assert "batch/in.predictions.csv" in proc.stdout and "onnxruntime" in proc.stdout
    csv_out = pd.read_csv(io.BytesIO(store.get("batch/in.predictions.csv")))
    _check_scored(store, "v1", rows, csv_out)

    # Parquet in, Parquet out, a version named, an output key given
    parquet_rows = _rows(shipped_dataset, 2_500, seed=1)
    buf = io.BytesIO()
    parquet_rows.to_parquet(buf, index=False)  # pyarrow writes it, as a user's tools would
    store.put("batch/more.parquet", buf.getvalue())
    proc = _batch(
        env,
        "--input",
        "batch/more.parquet",
        "--output",
        "batch/scored/more.parquet",
        "--version",
        "v1",
        "--chunk-rows",
        "1000",
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        _progress(proc.stdout)[-1] == "rows 2500/2500 (100%)" and len(_progress(proc.stdout)) == 3
    )
    pq_out = pd.read_parquet(io.BytesIO(store.get("batch/scored/more.parquet")))
    _check_scored(store, "v1", parquet_rows, pq_out)

    # every scored row is in the prediction log, flagged, with its features and answer
    logged = datalog.read_predictions(store)
    assert len(logged) == ROWS + 2_500
    assert (logged[datalog.SOURCE_COLUMN] == datalog.BATCH).all()
    ids = pd.concat([csv_out["prediction_id"], pq_out["prediction_id"]])
    assert set(logged["prediction_id"]) == set(ids) and ids.is_unique
    by_id = logged.set_index("prediction_id").loc[csv_out["prediction_id"]]
    assert (by_id["prediction"].astype(str).to_numpy() == csv_out["prediction"].astype(str)).all()
    np.testing.assert_allclose(
        by_id[list(rows.columns)].to_numpy(dtype=float), rows.to_numpy(dtype=float)
    )
    assert len(store.list_keys(keys.PREDICTIONS)) == 4 + 3  # one object per chunk

    # the reporter reads them as production traffic and says they came from batch jobs
    settings = ReporterSettings(
        store_url=env["MLPLATFORM_STORE_URL"],
        s3_endpoint=s3_server.endpoint,
        s3_access_key=env["MLPLATFORM_S3_ACCESS_KEY"],  # type: ignore[arg-type]
        s3_secret_key=env["MLPLATFORM_S3_SECRET_KEY"],  # type: ignore[arg-type]
        signing_key=SIGNING_KEY.decode(),  # type: ignore[arg-type]
    )
    model = ModelRegistry(store, SIGNING_KEY).load("v1")
    result = reporter_job.build(
        settings, store, model, reporter_job.window(settings, store, time.time())
    )
    assert result.rows["production"] == ROWS + 2_500
    assert (
        f"{ROWS + 2_500} of the {ROWS + 2_500} production rows were scored by batch jobs"
        in " ".join(result.notes)
    )
    assert "embedding" in result.drift


def test_a_regression_gives_value(
    s3_server: S3Server, diabetes_trained, diabetes_dataset: Dataset
) -> None:
    store, env = _store_with(s3_server, diabetes_trained, diabetes_dataset)
    rows = _rows(diabetes_dataset, 1_234, seed=2)
    store.put("scores/diabetes.csv", rows.to_csv(index=False).encode())
    proc = _batch(env, "--input", "scores/diabetes.csv", "--chunk-rows", "500")
    assert proc.returncode == 0, proc.stderr
    assert _progress(proc.stdout) == [
        "rows 500/1234 (40%)",
        "rows 1000/1234 (81%)",
        "rows 1234/1234 (100%)",
    ]
    out = pd.read_csv(io.BytesIO(store.get("scores/diabetes.predictions.csv")))
    assert list(out.columns[rows.shape[1] :]) == ["prediction_id", "value", "model_version"]
    _, expected = _expected(store, "v1", rows)
    np.testing.assert_allclose(out["value"], expected, rtol=1e-6, atol=1e-6)
    logged = datalog.read_predictions(store)
    assert len(logged) == 1_234 and (logged[datalog.SOURCE_COLUMN] == datalog.BATCH).all()
    np.testing.assert_allclose(
        logged.set_index("prediction_id").loc[out["prediction_id"], "prediction"], out["value"]
    )


def test_categories_and_missing_cells_are_scored_like_serving(
    s3_server: S3Server, penguins_trained, penguins_dataset: Dataset
) -> None:
    store, env = _store_with(s3_server, penguins_trained, penguins_dataset)
    rows = _rows(penguins_dataset, 700, seed=3)
    rows.loc[5, "island"] = "Atlantis"  # never seen: scored as unknown, logged as <unknown>
    store.put("batch/penguins.csv", rows.to_csv(index=False).encode())
    proc = _batch(env, "--input", "batch/penguins.csv", "--chunk-rows", "256")
    assert proc.returncode == 0, proc.stderr
    out = pd.read_csv(io.BytesIO(store.get("batch/penguins.predictions.csv")))
    model, expected = _expected(store, "v1", rows)
    classes = model.classes  # type: ignore[attr-defined]
    np.testing.assert_allclose(out[[f"proba_{c}" for c in classes]], expected, atol=1e-6)
    assert out["island"].equals(rows["island"])
    logged = datalog.read_predictions(store).set_index("prediction_id")
    assert logged.loc[out["prediction_id"][5], "island"] == "<unknown>"
    assert list(logged.loc[out["prediction_id"], "prediction"]) == list(out["prediction"])


def test_feedback_by_the_id_of_a_batch_row_stores_that_row(
    s3_server: S3Server, trained, shipped_dataset: Dataset
) -> None:
    store, env = _store_with(s3_server, trained, shipped_dataset)
    serving = ServingProcess(env).start()
    try:
        online = httpx.post(
            serving.url + "/predict",
            json={"instances": shipped_dataset.X.iloc[:3].to_dict("records")},
            timeout=30,
        )
        assert online.status_code == 200, online.text
        rows = _rows(shipped_dataset, 50, seed=4)
        store.put("batch/few.csv", rows.to_csv(index=False).encode())
        proc = _batch(env, "--input", "batch/few.csv", "--chunk-rows", "20")
        assert proc.returncode == 0, proc.stderr
        out = pd.read_csv(io.BytesIO(store.get("batch/few.predictions.csv")))
        pick = 37  # a row of the last chunk
        pid = out["prediction_id"][pick]
        r = httpx.post(
            serving.url + "/feedback",
            json={"prediction_id": pid, "target": "1"},
            headers={"Authorization": "Bearer proc-writer"},
            timeout=30,
        )
        assert r.status_code == 201, r.text
    finally:
        serving.stop()
    [stored] = datalog.read_feedback(store).to_dict("records")
    assert stored["prediction_id"] == pid and stored["model_version"] == "v1"
    assert stored["prediction"] == str(out["prediction"][pick]) and stored["target"] == "1"
    for name in rows.columns:
        assert stored[name] == pytest.approx(rows[name][pick])
    # online rows (no flag in their batches) and batch rows read together
    logged = datalog.read_predictions(store)
    assert sorted(logged[datalog.SOURCE_COLUMN].value_counts().items()) == [
        ("batch", 50),
        ("online", 3),
    ]


@pytest.mark.parametrize(
    ("key", "body", "args", "says"),
    [
        ("batch/absent.csv", None, [], "input 'batch/absent.csv': no such object"),
        ("batch/cols.csv", "wrong-columns", [], "missing ['mean_radius'"),
        ("batch/png.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", [], "not a CSV file"),
        ("batch/junk.parquet", b"id,a\n1,2\n", [], "not a readable Parquet file"),
        ("batch/cut.parquet", "truncated-parquet", [], "not a readable Parquet file"),
        ("batch/ok.csv", "good", ["--version", "v9"], "model version v9 does not exist"),
        ("batch/cell.csv", "bad-cell", [], "line 5, column 'mean_radius': 'abc' is not a number"),
        ("batch/ok.txt", "good", [], "must end in .csv or .parquet"),
        (
            "batch/ok.csv",
            "good",
            ["--output", "production/predictions/x.csv"],
            "which the platform owns",
        ),
    ],
)
def test_bad_input_exits_with_one_line_and_writes_nothing(
    s3_server: S3Server,
    trained,
    shipped_dataset: Dataset,
    key: str,
    body: object,
    args: list[str],
    says: str,
) -> None:
    store, env = _store_with(s3_server, trained, shipped_dataset)
    rows = _rows(shipped_dataset, 20, seed=5)
    if body == "good":
        body = rows.to_csv(index=False).encode()
    elif body == "wrong-columns":
        body = rows.drop(columns="mean_radius").assign(customer="x").to_csv(index=False).encode()
    elif body == "truncated-parquet":  # the magic at both ends, a footer cut short
        buf = io.BytesIO()
        rows.to_parquet(buf, index=False)
        body = buf.getvalue()[:40] + buf.getvalue()[-8:]
    elif body == "bad-cell":
        rows = rows.astype(object)
        rows.loc[3, "mean_radius"] = "abc"
        body = rows.to_csv(index=False).encode()
    if body is not None:
        store.put(key, body)  # type: ignore[arg-type]
    before = set(store.list_keys())
    proc = _batch(env, "--input", key, "--chunk-rows", "7", *args)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and says in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and not _progress(proc.stdout)
    assert set(store.list_keys()) == before  # no output, no log rows
    assert datalog.read_predictions(store).empty


def test_the_backup_answers_when_the_primary_model_raises(
    local_store, trained, shipped_dataset: Dataset
) -> None:  # type: ignore[no-untyped-def]
    from mlplatform_retrainer.batch import make_engine

    publish_trained(ModelRegistry(local_store, SIGNING_KEY), trained, shipped_dataset)
    model = ModelRegistry(local_store, SIGNING_KEY).load("v1")
    engine = make_engine(model)
    assert engine.name == "onnxruntime"
    X = encoded_frame(shipped_dataset.X.iloc[:40], model.manifest["feature_schema"]).to_numpy()
    out, Z, backup = engine.run(X)
    assert not backup and Z.shape == (40, model.manifest["n_components"])

    def broken(X: np.ndarray) -> tuple[np.ndarray, None]:
        raise RuntimeError("primary down")

    engine._run = broken
    out, Z, backup = engine.run(X)
    assert backup and np.isnan(Z).all() and Z.shape == (40, model.manifest["n_components"])
    frame = pd.DataFrame(X, columns=model.features)
    np.testing.assert_allclose(out, model.backup.predict_proba(frame))
