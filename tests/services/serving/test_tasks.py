"""Serving any tabular task: a regression (diabetes) answers values, a classifier of mixed
types (penguins: text classes, categories, missing cells) takes text and nulls, in JSON, CSV
and V2; the prediction log and the labelled rows keep categories as text."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from mlplatform_common import datalog
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.schema import UNKNOWN, encoded_frame
from mlplatform_common.storage import Store
from mlplatform_serving.app import create_app
from tests.conftest import SIGNING_KEY, publish_trained
from tests.services.serving.conftest import ADMIN, WRITER, assert_error, serving_settings


def rows_of(dataset: Any, n: int, start: int = 0) -> list[dict[str, Any]]:
    """Rows as a client sends them: NaN as null (a missing value)."""
    frame = dataset.X.iloc[start : start + n].astype(object)
    return [
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
        for row in frame.to_dict(orient="records")
    ]


@pytest.fixture
def penguins_store(local_store: Store, penguins_trained, penguins_dataset) -> Store:
    publish_trained(ModelRegistry(local_store, SIGNING_KEY), penguins_trained, penguins_dataset)
    return local_store


@pytest.fixture
def diabetes_store(local_store: Store, diabetes_trained, diabetes_dataset) -> Store:
    publish_trained(ModelRegistry(local_store, SIGNING_KEY), diabetes_trained, diabetes_dataset)
    return local_store


@pytest.fixture
def penguins(penguins_store: Store) -> Iterator[TestClient]:
    with TestClient(create_app(serving_settings(), penguins_store)) as c:
        yield c


@pytest.fixture
def diabetes(diabetes_store: Store) -> Iterator[TestClient]:
    with TestClient(create_app(serving_settings(), diabetes_store)) as c:
        yield c


def unknown_islands() -> float:
    """This process's count of unseen island values (the registry is the process's own)."""
    from prometheus_client import REGISTRY

    labels = {"feature": "island"}
    return REGISTRY.get_sample_value("mlplatform_unknown_categories_total", labels) or 0.0


def expected_proba(trained: Any, dataset: Any, rows: list[dict[str, Any]]) -> np.ndarray:
    frame = pd.DataFrame(rows, columns=dataset.features)
    proba: np.ndarray = trained.pipeline.predict_proba(encoded_frame(frame, trained.schema))
    return proba


# -- regression --------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 40])  # the dicts, and the spliced answer of many rows
def test_a_regression_answers_its_values_in_json(
    diabetes: TestClient, diabetes_trained, diabetes_dataset, n: int
) -> None:
    rows = rows_of(diabetes_dataset, n)
    r = diabetes.post("/predict", json={"instances": rows})
    assert r.status_code == 200, r.text
    answers = r.json()["predictions"]
    want = diabetes_trained.pipeline.predict(
        encoded_frame(diabetes_dataset.X[:n], diabetes_trained.schema)
    )
    assert [set(a) for a in answers] == [{"prediction_id", "value", "model_version", "backup"}] * n
    np.testing.assert_allclose([a["value"] for a in answers], want, rtol=1e-9)
    assert len({a["prediction_id"] for a in answers}) == n


def test_a_reload_gives_the_value_histogram_the_new_versions_buckets(
    diabetes_store: Store, diabetes_dataset, shipped_dataset, trained
) -> None:
    """Prometheus fixes buckets when a histogram is made: a reload (local mode) to a version
    with another reference target makes it again with that version's bounds, and to a
    classifier takes it away."""
    from prometheus_client.parser import text_string_to_metric_families

    from mlplatform_retrainer.train import TrainConfig, train

    def histogram(c: TestClient) -> dict[float, float] | None:
        for family in text_string_to_metric_families(c.get("/metrics").text):
            if family.name == "mlplatform_prediction_value":
                samples = family.samples
                return {float(s.labels["le"]): s.value for s in samples if "le" in s.labels}
        return None

    registry = ModelRegistry(diabetes_store, SIGNING_KEY)
    small = dataclasses.replace(
        diabetes_dataset, X=diabetes_dataset.X[:120], y=diabetes_dataset.y[:120]
    )
    v2 = publish_trained(
        registry, train(small.X, small.y, TrainConfig(), task="regression"), small, promote=False
    )
    v3 = publish_trained(registry, trained, shipped_dataset, promote=False)  # a classifier
    with TestClient(create_app(serving_settings(), diabetes_store)) as c:
        before = histogram(c)  # earlier tests' apps of v1's buckets in this process count too
        assert before is not None
        assert c.post("/predict", json={"instances": rows_of(diabetes_dataset, 3)}).is_success
        first = histogram(c)
        assert first is not None and first[math.inf] == before[math.inf] + 3
        r = c.post("/admin/reload", headers=ADMIN, json={"version": v2})
        assert r.status_code == 200, r.text
        second = histogram(c)
        target = registry.load(v2).ref_data["target"].to_numpy(dtype=float)
        assert second is not None and set(second.values()) == {0.0}  # counts start again
        assert sorted(second)[0] == float(f"{target.min():.6g}") != sorted(first)[0]
        assert sorted(second)[-2] == float(f"{target.max():.6g}")
        assert c.post("/predict", json={"instances": rows_of(diabetes_dataset, 2)}).is_success
        after = histogram(c)
        assert after is not None and set(after) == set(second) and after[math.inf] == 2
        assert c.post("/admin/reload", headers=ADMIN, json={"version": v3}).is_success
        assert histogram(c) is None


def test_a_regression_answers_csv_and_v2(
    diabetes: TestClient, diabetes_trained, diabetes_dataset
) -> None:
    frame = diabetes_dataset.X.iloc[:4]
    want = diabetes_trained.pipeline.predict(encoded_frame(frame, diabetes_trained.schema))
    r = diabetes.post(
        "/predict", content=frame.to_csv(index=False), headers={"content-type": "text/csv"}
    )
    assert r.status_code == 200, r.text
    np.testing.assert_allclose([a["value"] for a in r.json()["predictions"]], want, rtol=1e-9)
    tensor = {
        "name": "input-0",
        "datatype": "FP64",
        "shape": list(frame.shape),
        "data": frame.to_numpy().tolist(),
    }
    r = diabetes.post("/v2/models/mlplatform/infer", json={"inputs": [tensor]})
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert set(outputs) == {"predict", "prediction_id"}
    assert outputs["predict"]["datatype"] == "FP64" and outputs["predict"]["shape"] == [4]
    np.testing.assert_allclose(outputs["predict"]["data"], want, rtol=1e-9)
    # asking for a classifier's output is named
    r = diabetes.post(
        "/v2/models/mlplatform/infer",
        json={"inputs": [tensor], "outputs": [{"name": "probabilities"}]},
    )
    assert_error(r, 422, "outputs: unknown output 'probabilities'", "predict")
    meta = diabetes.get("/v2/models/mlplatform").json()
    assert [o["name"] for o in meta["outputs"]] == ["predict", "prediction_id"]
    assert meta["parameters"]["task"] == "regression"


def test_the_model_card_has_the_task_and_the_typed_schema(
    diabetes: TestClient, penguins_store: Store
) -> None:
    card = diabetes.get("/model").json()
    assert card["task"] == "regression" and card["classes"] == []
    # a version published before tasks existed is a classifier
    manifest = diabetes.app.state.service.runtime.model.manifest  # type: ignore[attr-defined]
    assert manifest.pop("task") == "regression"
    try:
        from mlplatform_serving.runtime import task_of

        assert task_of(manifest) == "classification"
    finally:
        manifest["task"] = "regression"
    assert {f["dtype"] for f in card["feature_schema"]} == {"float"}
    with TestClient(create_app(serving_settings(), penguins_store)) as c:
        card = c.get("/model").json()
    assert card["task"] == "classification"
    island = next(f for f in card["feature_schema"] if f["name"] == "island")
    assert island["dtype"] == "category" and island["categories"] == [
        "Biscoe",
        "Dream",
        "Torgersen",
    ]


def test_regression_feedback_takes_a_number_and_refuses_anything_else(
    diabetes: TestClient, diabetes_store: Store, diabetes_dataset
) -> None:
    row = rows_of(diabetes_dataset, 1)[0]
    pid = diabetes.post("/predict", json={"features": row}).json()["predictions"][0][
        "prediction_id"
    ]
    for bad in ("high", True, None, [1], "1e400"):
        r = diabetes.post("/feedback", headers=WRITER, json={"prediction_id": pid, "target": bad})
        assert_error(r, 422, "target", "regression")
    r = diabetes.post("/feedback", headers=WRITER, json={"prediction_id": pid, "target": 151})
    assert r.status_code == 201, r.text
    r = diabetes.post("/feedback", headers=WRITER, json={"features": row, "target": 75.5})
    assert r.status_code == 201, r.text
    stored = datalog.read_feedback(diabetes_store)
    assert list(stored["target"]) == ["151.0", "75.5"]
    assert pd.to_numeric(stored["prediction"]).notna().all()  # the predicted values, as text
    assert stored.iloc[0]["bmi"] == row["bmi"]


def test_the_log_of_a_regression_holds_the_value_and_no_probabilities(
    diabetes: TestClient, diabetes_store: Store, diabetes_dataset, diabetes_trained
) -> None:
    rows = rows_of(diabetes_dataset, 5)
    answers = diabetes.post("/predict", json={"instances": rows}).json()["predictions"]
    diabetes.app.state.service.log.flush()  # type: ignore[attr-defined]
    log = datalog.read_predictions(diabetes_store)
    assert log["prediction"].dtype == np.float64
    assert not [c for c in log.columns if c.startswith("proba") or c == "probability"]
    np.testing.assert_allclose(log["prediction"], [a["value"] for a in answers])
    assert list(log["prediction_id"]) == [a["prediction_id"] for a in answers]
    kpis = diabetes.get("/metrics/kpis").json()
    assert kpis["mean_confidence"] is None and kpis["class_distribution"] == {}
    assert kpis["mean_value"] == pytest.approx(np.mean([a["value"] for a in answers]))


# -- mixed types (penguins) --------------------------------------------------------------------


def test_text_categories_and_nulls_are_predicted_as_the_pipeline_does(
    penguins: TestClient, penguins_trained, penguins_dataset
) -> None:
    rows = rows_of(penguins_dataset, 6)  # row 3 has missing numbers and a missing sex
    assert any(v is None for v in rows[3].values())
    rows[1]["island"] = "Atlantis"  # never seen in training: accepted, counted
    before = unknown_islands()
    r = penguins.post("/predict", json={"instances": rows})
    assert r.status_code == 200, r.text
    answers = r.json()["predictions"]
    want = expected_proba(penguins_trained, penguins_dataset, rows)
    np.testing.assert_allclose(
        [[a["probabilities"][c] for c in ("Adelie", "Chinstrap", "Gentoo")] for a in answers],
        want,
        rtol=1e-6,
    )
    assert {a["label"] for a in answers} <= {"Adelie", "Chinstrap", "Gentoo"}
    assert answers[0]["label_name"] == answers[0]["label"]
    assert unknown_islands() == before + 1
    assert 'mlplatform_unknown_categories_total{feature="island"}' in penguins.get("/metrics").text
    # one row of the same, and a body the fast reader refuses (an extra space) alike
    one = penguins.post("/predict", json={"features": rows[3]}).json()["predictions"][0]
    np.testing.assert_allclose(list(one["probabilities"].values()), want[3], rtol=1e-6)


def test_mixed_rows_in_csv_with_an_empty_cell_and_an_unseen_category(
    penguins: TestClient, penguins_trained, penguins_dataset
) -> None:
    frame = penguins_dataset.X.iloc[:5].copy()
    frame.loc[frame.index[2], "island"] = "Atlantis"
    text = frame.to_csv(index=False)  # NaN -> an empty cell
    assert ",," in text
    r = penguins.post("/predict", content=text, headers={"content-type": "text/csv"})
    assert r.status_code == 200, r.text
    got = [list(a["probabilities"].values()) for a in r.json()["predictions"]]
    want = expected_proba(penguins_trained, penguins_dataset, rows_of(penguins_dataset, 5))
    np.testing.assert_allclose(got[:2], want[:2], rtol=1e-6)
    # without a header line, in the order of GET /model
    r = penguins.post(
        "/predict",
        content=frame.to_csv(index=False, header=False),
        headers={"content-type": "text/csv"},
    )
    assert r.status_code == 200 and len(r.json()["predictions"]) == 5, r.text


def v2_inputs(dataset: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One input per feature, as MLServer's pandas codec sends a DataFrame."""
    out = []
    for name in dataset.features:
        category = dataset.X[name].dtype == object
        out.append(
            {
                "name": name,
                "datatype": "BYTES" if category else "FP64",
                "shape": [len(rows), 1] if category else [len(rows)],
                "data": [r[name] for r in rows],
            }
        )
    return out


def test_mixed_rows_as_v2_inputs_per_feature(
    penguins: TestClient, penguins_trained, penguins_dataset
) -> None:
    rows = rows_of(penguins_dataset, 5)
    rows[0]["sex"] = "unknown-sex"
    inputs = v2_inputs(penguins_dataset, rows)
    r = penguins.post("/v2/models/mlplatform/infer", json={"inputs": inputs[::-1]})  # any order
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert outputs["label"]["datatype"] == "BYTES"
    want = expected_proba(penguins_trained, penguins_dataset, rows)
    np.testing.assert_allclose(
        np.reshape(outputs["probabilities"]["data"], (5, 3)), want, rtol=1e-6
    )
    meta = penguins.get("/v2/models/mlplatform").json()
    assert {i["name"]: i["datatype"] for i in meta["inputs"]}["island"] == "BYTES"
    # one tensor of numbers cannot carry categories
    tensor = {"name": "input-0", "datatype": "FP64", "shape": [1, 7], "data": [[1.0] * 7]}
    r = penguins.post("/v2/models/mlplatform/infer", json={"inputs": [tensor]})
    assert_error(r, 422, "inputs[input-0]", "category features", "island")


def test_the_log_keeps_categories_as_text_and_feedback_by_id_too(
    penguins: TestClient, penguins_store: Store, penguins_dataset
) -> None:
    rows = rows_of(penguins_dataset, 4)
    rows[0]["island"] = "Atlantis"
    answers = penguins.post("/predict", json={"instances": rows}).json()["predictions"]
    r = penguins.post(
        "/feedback",
        headers=WRITER,
        json={"prediction_id": answers[3]["prediction_id"], "target": "Adelie"},
    )
    assert r.status_code == 201, r.text
    r = penguins.post(
        "/feedback",
        headers=WRITER,
        json={"prediction_id": answers[0]["prediction_id"], "target": "Penguin"},
    )
    assert_error(r, 422, "target: 'Penguin' is not one of the classes")
    penguins.app.state.service.log.flush()  # type: ignore[attr-defined]
    log = datalog.read_predictions(penguins_store)
    assert list(log["island"]) == [UNKNOWN, "Torgersen", "Torgersen", "Torgersen"]
    assert log["sex"].iloc[3] is None and math.isnan(log["bill_length_mm"].iloc[3])
    assert log["bill_length_mm"].dtype == np.float64
    assert set(log["prediction"]) <= {"Adelie", "Chinstrap", "Gentoo"}
    (stored,) = datalog.read_feedback(penguins_store).to_dict(orient="records")
    assert stored["target"] == "Adelie" and stored["island"] == "Torgersen"
    assert stored["sex"] is None and stored["bill_length_mm"] is None


def test_feedback_with_features_takes_text_and_null(
    penguins: TestClient, penguins_store: Store, penguins_dataset
) -> None:
    row = rows_of(penguins_dataset, 1, start=3)[0]
    r = penguins.post("/feedback", headers=WRITER, json={"features": row, "target": "Adelie"})
    assert r.status_code == 201, r.text
    bad = {**row, "island": {"name": "Dream"}}
    r = penguins.post("/feedback", headers=WRITER, json={"features": bad, "target": "Adelie"})
    assert_error(r, 422, "features.island", "must be text")
    (stored,) = datalog.read_feedback(penguins_store).to_dict(orient="records")
    assert stored["island"] == "Torgersen" and stored["sex"] is None
    assert stored["prediction"] in {"Adelie", "Chinstrap", "Gentoo"}


def test_feature_distribution_of_categories(penguins: TestClient, penguins_dataset) -> None:
    rows = rows_of(penguins_dataset, 4)
    rows[0]["island"] = "Atlantis"
    assert penguins.post("/predict", json={"instances": rows}).status_code == 200
    r = penguins.get("/metrics/feature-distribution?page_size=20")
    assert r.status_code == 200, r.text
    items = {i["feature"]: i for i in r.json()["items"]}
    island = items["island"]
    assert island["recent"]["unknown_share"] == 0.25
    assert island["recent"]["shares"]["Torgersen"] == 0.75
    assert set(island["reference"]["shares"]) == {"Biscoe", "Dream", "Torgersen"}
    assert items["sex"]["recent"]["missing_share"] == 0.25
    assert items["bill_length_mm"]["recent"]["mean"] is not None
    docs = penguins.get("/openapi.json").json()  # examples of categories, no placeholder
    example = docs["components"]["schemas"]["PredictRequest"]["properties"]["features"]["examples"][
        0
    ]
    assert example["island"] in {"Biscoe", "Dream", "Torgersen"}


def test_a_regression_with_a_checked_onnx_graph_is_served_by_onnxruntime(
    local_store: Store,
    diabetes_trained,
    diabetes_dataset,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The contract: the graph's first output, named by manifest["onnx"]["output"], holds the
    # values, [n] or [n, 1] (skl2onnx's regressors give [n, 1]).
    from mlplatform_retrainer import onnx_export

    def regression_graph(pipeline, X, task):  # type: ignore[no-untyped-def]
        assert task == "regression"
        graph = onnx_export._to_onnx(pipeline, X.shape[1])
        output = graph.graph.output[0].name
        info = {"input": onnx_export.INPUT, "output": output, "embedding": {"error": "none"}}
        return {onnx_export.MODEL_FILE: graph.SerializeToString()}, info

    monkeypatch.setattr("mlplatform_retrainer.onnx_export.convert", regression_graph)
    publish_trained(ModelRegistry(local_store, SIGNING_KEY), diabetes_trained, diabetes_dataset)
    rows = rows_of(diabetes_dataset, 20)
    want = diabetes_trained.pipeline.predict(
        encoded_frame(diabetes_dataset.X[:20], diabetes_trained.schema)
    )
    with TestClient(create_app(serving_settings(), local_store)) as c:
        assert c.get("/model").json()["engine"] == "onnxruntime"
        r = c.post("/predict", json={"instances": rows})
        assert r.status_code == 200, r.text
        body = r.json()
    assert body["engine"] == "onnxruntime"
    np.testing.assert_allclose([a["value"] for a in body["predictions"]], want, rtol=1e-6)


def test_the_backup_answers_a_regression_when_the_primary_fails(
    diabetes: TestClient, diabetes_trained, diabetes_dataset
) -> None:
    served = diabetes.app.state.service.runtime.served  # type: ignore[attr-defined]

    class Broken:
        name = "sklearn"

        def run(self, X: np.ndarray) -> Any:
            raise RuntimeError("the primary is down")

    served.engine = Broken()
    frame = diabetes_dataset.X.iloc[:3]
    r = diabetes.post("/predict", json={"instances": rows_of(diabetes_dataset, 3)})
    assert r.status_code == 200, r.text
    answers = r.json()["predictions"]
    want = diabetes_trained.backup.predict(encoded_frame(frame, diabetes_trained.schema))
    assert [a["backup"] for a in answers] == [True] * 3
    np.testing.assert_allclose([a["value"] for a in answers], want)


@pytest.mark.parametrize("task", ["penguins", "diabetes"])
def test_the_docs_examples_of_other_tasks_are_accepted_as_they_are(
    request: pytest.FixtureRequest, task: str
) -> None:
    # Categories as their most common value, a regression's target a number, V2 as an input
    # per feature for a model with categories: "Try it out" sends them as they are.
    from tests.services.serving import test_api

    client = request.getfixturevalue(task)
    test_api.test_the_examples_of_the_docs_page_are_accepted_as_they_are(client)


def test_a_model_of_numbers_takes_per_feature_inputs_too(client: TestClient, rows) -> None:
    # As MLServer's pandas codec sends a DataFrame: the same answers as one [n, 30] tensor.
    names = list(rows[0])
    inputs = [
        {"name": f, "datatype": "FP64", "shape": [3, 1], "data": [[r[f]] for r in rows[:3]]}
        for f in names
    ]
    r = client.post("/v2/models/mlplatform/infer", json={"inputs": inputs})
    assert r.status_code == 200, r.text
    tensor = {
        "name": "input-0",
        "datatype": "FP64",
        "shape": [3, len(names)],
        "data": [list(r.values()) for r in rows[:3]],
    }
    one = client.post("/v2/models/mlplatform/infer", json={"inputs": [tensor]})
    outputs = {o["name"]: o["data"] for o in r.json()["outputs"]}
    expected = {o["name"]: o["data"] for o in one.json()["outputs"]}
    assert outputs["label"] == expected["label"]
    np.testing.assert_allclose(outputs["probabilities"], expected["probabilities"])
    # a feature left out, or a per-feature input beside the [n, 30] tensor, is named
    r = client.post("/v2/models/mlplatform/infer", json={"inputs": inputs[1:]})
    assert_error(r, 422, f"inputs: no input for feature {names[0]!r}")
    r = client.post("/v2/models/mlplatform/infer", json={"inputs": [tensor, *inputs]})
    assert_error(r, 422, "inputs[input-0]: unknown input 'input-0'")


def test_a_model_of_numbers_that_may_be_missing_takes_nulls_in_every_format(
    local_store: Store, penguins_dataset
) -> None:
    # Numbers only, some nullable: JSON null, an empty CSV cell, null or NaN (binary) in the
    # one V2 tensor, where the column may be missing; refused where it may not.
    from mlplatform_retrainer.train import TrainConfig, train

    numbers = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "year"]
    X = penguins_dataset.X[numbers]
    trained = train(X, penguins_dataset.y, TrainConfig())
    dataset = dataclasses.replace(penguins_dataset, X=X)
    publish_trained(ModelRegistry(local_store, SIGNING_KEY), trained, dataset)
    rows = rows_of(dataset, 4)  # row 3: the four measures missing
    want = expected_proba(trained, dataset, rows)
    with TestClient(create_app(serving_settings(), local_store)) as c:
        r = c.post("/predict", json={"instances": rows})
        assert r.status_code == 200, r.text
        got = [list(a["probabilities"].values()) for a in r.json()["predictions"]]
        np.testing.assert_allclose(got, want, rtol=1e-6)
        csv_body = X.iloc[:4].to_csv(index=False)
        r = c.post("/predict", content=csv_body, headers={"content-type": "text/csv"})
        assert r.status_code == 200, r.text
        data = [[r_[f] for f in numbers] for r_ in rows]
        tensor = {"name": "input-0", "datatype": "FP64", "shape": [4, 5]}
        r = c.post("/v2/models/mlplatform/infer", json={"inputs": [{**tensor, "data": data}]})
        assert r.status_code == 200, r.text
        proba = next(o for o in r.json()["outputs"] if o["name"] == "probabilities")["data"]
        np.testing.assert_allclose(np.reshape(proba, (4, 3)), want, rtol=1e-6)
        blob = X.iloc[:4].to_numpy(dtype="<f8").tobytes()  # NaN where missing
        header = orjson.dumps(
            {"inputs": [{**tensor, "parameters": {"binary_data_size": len(blob)}}]}
        )
        r = c.post(
            "/v2/models/mlplatform/infer",
            content=header + blob,
            headers={"inference-header-content-length": str(len(header))},
        )
        assert r.status_code == 200, r.text
        # year may not be missing: named by its place
        data[1][4] = None
        r = c.post("/v2/models/mlplatform/infer", json={"inputs": [{**tensor, "data": data}]})
        assert_error(r, 422, "inputs[input-0].data[9]: missing", "feature 4 may not be missing")
        rows[1]["year"] = None
        r = c.post("/predict", json={"instances": rows})
        assert_error(r, 422, "instances[1].year: missing")


def test_a_log_object_whose_category_column_is_all_missing_is_written(
    penguins: TestClient, penguins_store: Store, penguins_dataset
) -> None:
    # Every row of the object missing its sex: a text column of nulls only, still text.
    rows = rows_of(penguins_dataset, 3)
    for row in rows:
        row["sex"] = None
    answers = penguins.post("/predict", json={"instances": rows}).json()["predictions"]
    log = penguins.app.state.service.log  # type: ignore[attr-defined]
    assert log.flush() == 3 and log.dropped_rows == 0
    logged = datalog.read_predictions(penguins_store)
    assert list(logged["prediction_id"]) == [a["prediction_id"] for a in answers]
    assert logged["sex"].isna().all() and list(logged["island"]) == ["Torgersen"] * 3
