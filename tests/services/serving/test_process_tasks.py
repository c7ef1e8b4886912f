"""A regression (diabetes) and a mixed-type classifier (penguins) served by a real process on
the real S3 server: JSON, CSV and V2 predictions (a missing cell, an unseen category), feedback
by id, and the rows read back from the log with their types."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from mlplatform_common import datalog
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.schema import UNKNOWN, encoded_frame
from mlplatform_common.storage import S3Store
from tests.conftest import SIGNING_KEY, S3Server, ServingProcess, publish_trained, serving_env
from tests.services.serving.test_process import WRITER
from tests.services.serving.test_tasks import expected_proba, rows_of, v2_inputs

INFER = "/v2/models/mlplatform/infer"


def _serve(server: S3Server, trained: Any, dataset: Any) -> tuple[S3Store, ServingProcess]:
    store = server.store()
    publish_trained(ModelRegistry(store, SIGNING_KEY), trained, dataset)
    return store, ServingProcess(serving_env(server, store.bucket)).start()


@pytest.fixture
def diabetes(s3_server: S3Server, diabetes_trained, diabetes_dataset) -> Iterator[Any]:
    store, proc = _serve(s3_server, diabetes_trained, diabetes_dataset)
    yield store, proc
    proc.stop()


@pytest.fixture
def penguins(s3_server: S3Server, penguins_trained, penguins_dataset) -> Iterator[Any]:
    store, proc = _serve(s3_server, penguins_trained, penguins_dataset)
    yield store, proc
    proc.stop()


def _feedback(url: str, pid: str, target: Any) -> None:
    r = httpx.post(url + "/feedback", headers=WRITER, json={"prediction_id": pid, "target": target})
    assert r.status_code == 201, r.text


def test_a_regression_through_a_real_process(diabetes, diabetes_trained, diabetes_dataset) -> None:  # type: ignore[no-untyped-def]
    store, proc = diabetes
    frame = diabetes_dataset.X.iloc[:6]
    want = diabetes_trained.pipeline.predict(encoded_frame(frame, diabetes_trained.schema))
    model = httpx.get(proc.url + "/model").json()
    assert model["task"] == "regression" and model["feature_schema"][0]["dtype"] == "float"

    r = httpx.post(proc.url + "/predict", json={"instances": rows_of(diabetes_dataset, 2)})
    assert r.status_code == 200, r.text
    by_json = r.json()["predictions"]
    r = httpx.post(
        proc.url + "/predict",
        content=frame.iloc[2:4].to_csv(index=False),
        headers={"content-type": "text/csv"},
    )
    assert r.status_code == 200, r.text
    by_csv = r.json()["predictions"]
    data = frame.iloc[4:].to_numpy().tolist()
    tensor = {"name": "input-0", "datatype": "FP64", "shape": [2, 10], "data": data}
    r = httpx.post(proc.url + INFER, json={"inputs": [tensor]})
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert set(outputs) == {"predict", "prediction_id"}

    values = [a["value"] for a in by_json + by_csv] + outputs["predict"]["data"]
    np.testing.assert_allclose(values, want, rtol=1e-9)
    ids = [a["prediction_id"] for a in by_json + by_csv] + outputs["prediction_id"]["data"]
    _feedback(proc.url, ids[0], 151)
    _feedback(proc.url, ids[5], 75.5)
    proc.stop()  # graceful shutdown flushes the log

    log = datalog.read_predictions(store).set_index("prediction_id").loc[ids]
    assert log["prediction"].dtype == np.float64
    np.testing.assert_allclose(log["prediction"], want, rtol=1e-9)
    assert not [c for c in log.columns if c.startswith("proba") or c == "probability"]
    np.testing.assert_allclose(log["bmi"], frame["bmi"])
    labelled = datalog.read_feedback(store)
    assert list(labelled["target"]) == ["151.0", "75.5"]
    assert pd.to_numeric(labelled["target"]).tolist() == [151.0, 75.5]


def test_a_mixed_type_model_through_a_real_process(
    penguins, penguins_trained, penguins_dataset
) -> None:  # type: ignore[no-untyped-def]
    store, proc = penguins
    rows = rows_of(penguins_dataset, 6)  # row 3: missing numbers and a missing sex
    rows[1]["island"] = "Atlantis"  # never seen in training
    want = expected_proba(penguins_trained, penguins_dataset, rows)
    model = httpx.get(proc.url + "/model").json()
    kinds = {f["name"]: f["dtype"] for f in model["feature_schema"]}
    assert kinds["island"] == "category" and kinds["year"] == "float"

    r = httpx.post(proc.url + "/predict", json={"instances": rows[:2]})
    assert r.status_code == 200, r.text
    by_json = r.json()["predictions"]
    frame = pd.DataFrame(rows[2:4], columns=penguins_dataset.features)
    text = frame.to_csv(index=False)
    assert ",," in text  # the missing cells, empty
    r = httpx.post(proc.url + "/predict", content=text, headers={"content-type": "text/csv"})
    assert r.status_code == 200, r.text
    by_csv = r.json()["predictions"]
    r = httpx.post(proc.url + INFER, json={"inputs": v2_inputs(penguins_dataset, rows[4:])})
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}

    got = [list(a["probabilities"].values()) for a in by_json + by_csv]
    got += np.reshape(outputs["probabilities"]["data"], (2, 3)).tolist()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    labels = [a["label"] for a in by_json + by_csv] + outputs["label"]["data"]
    assert set(labels) <= {"Adelie", "Chinstrap", "Gentoo"}
    ids = [a["prediction_id"] for a in by_json + by_csv] + outputs["prediction_id"]["data"]
    _feedback(proc.url, ids[1], "Adelie")  # the row of the unseen island
    _feedback(proc.url, ids[3], "Adelie")  # the row of missing cells
    metrics = httpx.get(proc.url + "/metrics").text
    assert 'mlplatform_unknown_categories_total{feature="island"} 1.0' in metrics
    proc.stop()

    log = datalog.read_predictions(store).set_index("prediction_id").loc[ids]
    assert list(log["prediction"]) == labels
    assert list(log["island"]) == [
        r["island"] if r["island"] != "Atlantis" else UNKNOWN for r in rows
    ]
    assert log["sex"].iloc[3] is None and log["sex"].iloc[0] == rows[0]["sex"]
    assert log["bill_length_mm"].dtype == np.float64 and math.isnan(log["bill_length_mm"].iloc[3])
    assert log["year"].tolist() == [float(r["year"]) for r in rows]
    labelled = datalog.read_feedback(store).set_index("prediction_id")
    assert labelled.loc[ids[1], "island"] == UNKNOWN and labelled.loc[ids[3], "sex"] is None
    assert labelled.loc[ids[3], "bill_length_mm"] is None or math.isnan(
        labelled.loc[ids[3], "bill_length_mm"]
    )
    assert list(labelled["target"]) == ["Adelie", "Adelie"]
