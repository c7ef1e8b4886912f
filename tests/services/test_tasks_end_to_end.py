"""Each shipped data set end to end, through real processes on the real S3 server: train ->
serve (JSON, CSV, V2) -> feedback -> report -> retrain with the gate -> rollback.

The three cover the tasks and column types: breast cancer (binary classes, numbers), diabetes
(a regression) and penguins (text classes, categories, missing cells)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from mlplatform_common import datalog
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.reports import ReportArchive
from mlplatform_common.schema import load_dataset
from tests.conftest import DATA, SIGNING_KEY, S3Server, ServingProcess, run_cli, serving_env

WRITER = {"Authorization": "Bearer proc-writer"}
LABELLED = 40


def _env(server: S3Server, bucket: str) -> dict[str, str]:
    return serving_env(
        server,
        bucket,
        MLPLATFORM_PUSHGATEWAY_URL="",
        MLPLATFORM_ROLLOUT="local",
        MLPLATFORM_MIN_LABELLED_ROWS="20",
        # The gate must promote here, whatever the noise of a small retrain: the gate's own
        # decisions are proven in the retrainer's tests.
        MLPLATFORM_GATE_TOLERANCE="1.0",
    )


def _json_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as a client sends them: a missing cell as null."""
    rows: list[dict[str, Any]] = json.loads(frame.to_json(orient="records"))
    return rows


def _v2_request(frame: pd.DataFrame, schema: list[dict[str, Any]]) -> dict[str, Any]:
    """One V2 input per feature, as MLServer's pandas codec sends a table: BYTES for a
    category, FP64 for a number; a table of numbers only as one FP64 tensor."""
    names = [f["name"] for f in schema]
    if all(f["dtype"] == "float" for f in schema):
        data = frame[names].to_numpy(dtype=float)
        return {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": list(data.shape),
                    "datatype": "FP64",
                    "data": data.ravel().tolist(),
                }
            ]
        }
    inputs = []
    for f in schema:
        col = frame[f["name"]]
        if f["dtype"] == "category":
            inputs.append(
                {
                    "name": f["name"],
                    "shape": [len(col)],
                    "datatype": "BYTES",
                    "data": [str(v) for v in col],
                }
            )
        else:
            inputs.append(
                {
                    "name": f["name"],
                    "shape": [len(col)],
                    "datatype": "FP64",
                    "data": col.astype(float).tolist(),
                }
            )
    return {"inputs": inputs}


def _check_answers(answers: list[dict[str, Any]], task: str, classes: list[str]) -> None:
    for a in answers:
        if task == "regression":
            assert isinstance(a["value"], float) and np.isfinite(a["value"]), a
            assert "probabilities" not in a
        else:
            assert str(a["label"]) in classes, a
            assert 0 <= a["probability"] <= 1


@pytest.mark.parametrize(
    ("name", "task"),
    [
        ("breast_cancer", "classification"),
        ("diabetes", "regression"),
        ("penguins", "classification"),
    ],
)
def test_a_shipped_data_set_goes_the_whole_loop(s3_server: S3Server, name: str, task: str) -> None:
    data_path = DATA.parent / f"{name}.csv"
    dataset = load_dataset(data_path)
    store = s3_server.store()
    env = _env(s3_server, store.bucket)

    # train: v1, its task read from the target
    proc = run_cli("mlplatform_retrainer", ["train", "--data", str(data_path)], env)
    assert proc.returncode == 0, proc.stderr
    registry = ModelRegistry(store, SIGNING_KEY)
    manifest = registry.manifest("v1")
    assert manifest["task"] == task
    schema = manifest["feature_schema"]
    classes = [str(c) for c in manifest["classes"]]

    serving = ServingProcess(env).start()
    try:
        assert httpx.get(serving.url + "/model").json()["task"] == task
        rows = dataset.X.sample(n=LABELLED, random_state=7)
        truth = dataset.y.loc[rows.index]

        # JSON rows (penguins: missing cells as null, and an island no penguin lives on)
        sent = _json_rows(rows)
        if name == "penguins":
            sent[0]["island"] = "Atlantis"
            sent[1]["sex"] = None
            sent[1]["bill_length_mm"] = None
        r = httpx.post(serving.url + "/predict", json={"instances": sent}, timeout=30)
        assert r.status_code == 200, r.text
        answers = r.json()["predictions"]
        assert len(answers) == LABELLED
        _check_answers(answers, task, classes)

        # CSV: an empty cell is a missing value
        body = rows.head(5).to_csv(index=False)
        r = httpx.post(
            serving.url + "/predict", content=body, headers={"Content-Type": "text/csv"}, timeout=30
        )
        assert r.status_code == 200, r.text
        from_csv = r.json()["predictions"]
        assert len(from_csv) == 5
        _check_answers(from_csv, task, classes)

        # V2
        complete = rows.dropna().head(4)
        r = httpx.post(
            serving.url + "/v2/models/mlplatform/infer",
            json=_v2_request(complete, schema),
            timeout=30,
        )
        assert r.status_code == 200, r.text
        outputs = {o["name"]: o for o in r.json()["outputs"]}
        if task == "regression":
            assert outputs["predict"]["datatype"] == "FP64"
            assert outputs["predict"]["shape"][0] == len(complete)
            assert "probabilities" not in outputs
        else:
            assert {str(c) for c in outputs["label"]["data"]} <= set(classes)
            assert outputs["probabilities"]["shape"] == [len(complete), len(classes)]

        # feedback with the true target, by id
        with httpx.Client(base_url=serving.url, headers=WRITER, timeout=30) as client:
            for answer, target in zip(answers, truth, strict=True):
                fb = client.post(
                    "/feedback",
                    json={
                        "prediction_id": answer["prediction_id"],
                        "target": target.item() if hasattr(target, "item") else target,
                    },
                )
                assert fb.status_code == 201, fb.text
        deadline = time.monotonic() + 30
        while datalog.count_feedback(store) < LABELLED and time.monotonic() < deadline:
            time.sleep(0.2)
        assert datalog.count_feedback(store) == LABELLED

        # the logged rows keep their types: category text, a missing cell missing
        deadline = time.monotonic() + 30
        while len(logged := datalog.read_predictions(store)) < LABELLED + 9:
            assert time.monotonic() < deadline, f"{len(logged)} rows logged"
            time.sleep(0.2)
        if name == "penguins":
            assert set(logged["island"].dropna()) <= {"Biscoe", "Dream", "Torgersen", "<unknown>"}
            assert "<unknown>" in set(logged["island"])
            assert logged["sex"].isna().any()
        if task == "regression":
            assert pd.api.types.is_float_dtype(logged["prediction"])

        # report: drift and the task's quality from the labelled rows
        proc = run_cli("mlplatform_reporter", ["run"], env)
        assert proc.returncode == 0, proc.stderr
        report = ReportArchive(store).latest()
        assert report is not None
        quality = report["quality"]
        assert ("rmse" in quality) == (task == "regression"), quality
        assert ("f1" in quality) == (task == "classification"), quality
        assert report["drift"], report
        # what the window predicted, for the web app's trends
        predicted = report["predictions"]
        assert ("p50" in predicted) == (task == "regression"), predicted
        if task == "classification":
            assert (
                set(predicted["counts"]) <= set(classes)
                and sum(predicted["counts"].values()) >= LABELLED
            )

        # retrain: the gate compares by the task's metric, then the swap and a rollback
        proc = run_cli(
            "mlplatform_retrainer",
            ["run", "--force"],
            {**env, "MLPLATFORM_SERVING_URL": serving.url},
        )
        assert proc.returncode == 0, proc.stderr
        metric = "rmse" if task == "regression" else "f1"
        assert f"candidate {metric}=" in proc.stdout, proc.stdout
        assert "retrain promoted" in proc.stdout, proc.stdout
        assert registry.manifest("v2")["task"] == task
        assert httpx.get(serving.url + "/health").json()["model_version"] == "v2"
        r = httpx.post(serving.url + "/predict", json={"instances": sent[:3]}, timeout=30)
        assert r.status_code == 200, r.text
        _check_answers(r.json()["predictions"], task, classes)

        proc = run_cli(
            "mlplatform_retrainer", ["rollback"], {**env, "MLPLATFORM_SERVING_URL": serving.url}
        )
        assert proc.returncode == 0, proc.stderr
        assert httpx.get(serving.url + "/health").json()["model_version"] == "v1"
    finally:
        serving.stop()
