"""ONNX conversion at publish time: checked against scikit-learn, or not published."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from onnx import helper, numpy_helper
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from mlplatform_common.schema import embed, encoded_frame, feature_schema, load_dataset
from mlplatform_retrainer import onnx_export
from mlplatform_retrainer.train import (
    DEFAULT_ESTIMATOR,
    TrainConfig,
    build_pipeline,
    embedding_rank,
    train,
)
from tests.conftest import DATA


def test_the_pipeline_converts_and_matches_sklearn(trained, shipped_dataset) -> None:
    files, info = onnx_export.convert(trained.pipeline, shipped_dataset.X)
    assert info["checked_rows"] == 569 and info["max_abs_diff"] <= 1e-12
    session = ort.InferenceSession(files["model.onnx"], providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {"input": shipped_dataset.X.to_numpy()})[0]
    np.testing.assert_allclose(got, trained.pipeline.predict_proba(shipped_dataset.X), atol=1e-12)


def test_the_model_graph_returns_the_embedding_of_the_same_run(trained, shipped_dataset) -> None:
    # serving logs this embedding instead of computing it again (bench/BENCHMARKS.md)
    files, info = onnx_export.convert(trained.pipeline, shipped_dataset.X)
    assert info["embedding_output"] == "embedding" and info["embedding_max_abs_diff"] <= 1e-9
    session = ort.InferenceSession(files["model.onnx"], providers=["CPUExecutionProvider"])
    assert {o.name for o in session.get_outputs()} == {"probabilities", "embedding"}  # no label
    proba, Z = session.run(["probabilities", "embedding"], {"input": shipped_dataset.X.to_numpy()})
    np.testing.assert_allclose(proba, trained.pipeline.predict_proba(shipped_dataset.X), atol=1e-12)
    np.testing.assert_allclose(Z, embed(trained.pipeline, shipped_dataset.X).to_numpy(), atol=1e-9)


def test_a_joined_graph_whose_embedding_does_not_match_is_not_published(
    trained, shipped_dataset, monkeypatch
) -> None:
    real = onnx_export._joined

    def shifted(*args):  # type: ignore[no-untyped-def]
        """The joined graph, with 1e-3 added to its embedding output only."""
        model = real(*args)
        graph = model.graph
        for node in graph.node:
            node.output[:] = ["exact" if o == "embedding" else o for o in node.output]
            node.input[:] = ["exact" if i == "embedding" else i for i in node.input]
        graph.initializer.append(numpy_helper.from_array(np.array(1e-3), "shift"))
        graph.node.append(helper.make_node("Add", ["exact", "shift"], ["embedding"]))
        return model

    monkeypatch.setattr(onnx_export, "_joined", shifted)
    files, info = onnx_export.convert(trained.pipeline, shipped_dataset.X)
    # the whole pipeline's graph instead, without the embedding output; embedding.onnx stays
    assert set(files) == {"model.onnx", "embedding.onnx"} and "error" not in info
    assert "embedding_output" not in info and info["max_abs_diff"] <= 1e-12
    assert info["embedding_output_error"].startswith("embedding: max abs difference 0.001")
    session = ort.InferenceSession(files["model.onnx"], providers=["CPUExecutionProvider"])
    assert "embedding" not in {o.name for o in session.get_outputs()}


def test_a_join_that_fails_falls_back_to_the_whole_pipelines_graph(
    trained, shipped_dataset, monkeypatch
) -> None:
    def broken(*args):  # type: ignore[no-untyped-def]
        raise ValueError("cannot merge")

    monkeypatch.setattr(onnx_export, "_joined", broken)
    files, info = onnx_export.convert(trained.pipeline, shipped_dataset.X)
    assert set(files) == {"model.onnx", "embedding.onnx"} and "error" not in info
    assert info["embedding_output_error"] == "ValueError: cannot merge"
    assert "embedding_output" not in info and info["embedding"]["file"] == "embedding.onnx"


def test_the_embedding_converts_and_matches_sklearn(trained, shipped_dataset) -> None:
    """serving writes PCA_1..PCA_n into the prediction log from this graph, without sklearn."""
    files, info = onnx_export.convert(trained.pipeline, shipped_dataset.X)
    check = info["embedding"]
    assert check["file"] == "embedding.onnx" and check["max_abs_diff"] <= 1e-9, check
    session = ort.InferenceSession(files["embedding.onnx"], providers=["CPUExecutionProvider"])
    got = session.run([check["output"]], {"input": shipped_dataset.X.to_numpy()})[0]
    expected = embed(trained.pipeline, shipped_dataset.X).to_numpy()
    assert got.shape == expected.shape == (569, trained.n_components)
    np.testing.assert_allclose(got, expected, atol=1e-9)


def test_random_forest_converts_too(shipped_dataset) -> None:
    result = train(shipped_dataset.X, shipped_dataset.y, TrainConfig(estimator="random_forest"))
    files, info = onnx_export.convert(result.pipeline, shipped_dataset.X)
    assert set(files) == {"model.onnx", "embedding.onnx"}, info
    assert info["max_abs_diff"] <= 1e-6


class Unconvertible(ClassifierMixin, BaseEstimator):
    """An estimator skl2onnx has no converter for."""

    def fit(self, X, y):  # type: ignore[no-untyped-def]
        self.classes_ = np.unique(y)
        return self

    def predict_proba(self, X):  # type: ignore[no-untyped-def]
        return np.full((len(X), len(self.classes_)), 1 / len(self.classes_))


def test_a_pipeline_that_does_not_convert_is_published_without_onnx(shipped_dataset) -> None:
    pipeline = Pipeline([("scaler", StandardScaler()), ("classifier", Unconvertible())])
    pipeline.fit(shipped_dataset.X, shipped_dataset.y)
    files, info = onnx_export.convert(pipeline, shipped_dataset.X)
    assert files == {}
    assert "Unconvertible" in info["error"] or "converter" in info["error"].lower()


def test_a_pipeline_without_an_embedding_step_gets_no_embedding_graph(shipped_dataset) -> None:
    plain = Pipeline([("scaler", StandardScaler()), ("classifier", LogisticRegression())])
    plain.fit(shipped_dataset.X, shipped_dataset.y)
    files, info = onnx_export.convert(plain, shipped_dataset.X)
    assert set(files) == {"model.onnx"} and "embedding_output" not in info
    assert info["embedding"] == {"error": "the pipeline has no 'embedding' step"}


@pytest.mark.parametrize("data", ["breast_cancer", "diabetes", "penguins"])
@pytest.mark.parametrize("estimator", ["default", "random_forest", "hist_gradient_boosting"])
def test_every_shipped_data_set_and_estimator_converts(data, estimator) -> None:
    dataset = load_dataset(DATA.parent / f"{data}.csv")
    name = DEFAULT_ESTIMATOR[dataset.task] if estimator == "default" else estimator
    result = train(dataset.X, dataset.y, TrainConfig(estimator=name), task=dataset.task)
    X = encoded_frame(dataset.X, result.schema)
    files, info = onnx_export.convert(result.pipeline, X, dataset.task)
    # Every one converts (tree ensembles on float32 between casts); a graph that does not
    # match falls back with the reason (test_..._falls_back_with_the_reason).
    assert set(files) == {"model.onnx", "embedding.onnx"}, info
    session = ort.InferenceSession(files["model.onnx"], providers=["CPUExecutionProvider"])
    got = session.run([info["output"]], {"input": X.to_numpy()})[0]
    assert info["checked_rows"] == len(X)
    if dataset.task == "regression":
        assert info["output"] == "value" and got.dtype == np.float64  # the contract with serving
        expected = result.pipeline.predict(X)
        # the tolerance is relative to the predictions' scale (the target's units)
        assert info["tolerance"] == pytest.approx(1e-6 * max(1.0, np.abs(expected).max()))
        np.testing.assert_allclose(got.ravel(), expected, rtol=0, atol=info["tolerance"])
    else:
        assert info["output"] == "probabilities"
        np.testing.assert_allclose(got, result.pipeline.predict_proba(X), atol=1e-6)
        assert (got.argmax(1) == result.pipeline.predict_proba(X).argmax(1)).all()


def test_nullable_numbers_and_categories_convert_unseen_values_and_missing_cells_too(
    penguins_trained, penguins_dataset
) -> None:
    # ONNX Runtime's Imputer has no float64 kernel: the retrainer's own converter imputes.
    X = encoded_frame(penguins_dataset.X, penguins_trained.schema)
    files, info = onnx_export.convert(penguins_trained.pipeline, X, "classification")
    assert set(files) == {"model.onnx", "embedding.onnx"} and info["max_abs_diff"] <= 1e-12
    odd = X.head(8).copy()
    for j, spec in enumerate(penguins_trained.schema):
        if spec["dtype"] == "category":
            odd.iloc[0, j] = len(spec["categories"])  # a value training never saw: zeros
            odd.iloc[1, j] = np.nan
        elif spec["nullable"]:
            odd.iloc[2, j] = np.nan
    assert odd.isna().any().any() and (odd["island"] == 3).any()
    session = ort.InferenceSession(files["model.onnx"], providers=["CPUExecutionProvider"])
    proba, Z = session.run(["probabilities", "embedding"], {"input": odd.to_numpy()})
    np.testing.assert_allclose(proba, penguins_trained.pipeline.predict_proba(odd), atol=1e-12)
    np.testing.assert_allclose(Z, embed(penguins_trained.pipeline, odd).to_numpy(), atol=1e-9)
    embedding = ort.InferenceSession(files["embedding.onnx"], providers=["CPUExecutionProvider"])
    alone = embedding.run(["embedding"], {"input": odd.to_numpy()})[0]
    np.testing.assert_allclose(alone, Z, atol=1e-12)


def test_a_regression_graph_returns_values_and_the_embedding(
    diabetes_trained, diabetes_dataset
) -> None:
    X = encoded_frame(diabetes_dataset.X, diabetes_trained.schema)
    files, info = onnx_export.convert(diabetes_trained.pipeline, X, "regression")
    assert info["output"] == "value" and info["embedding_output"] == "embedding"
    session = ort.InferenceSession(files["model.onnx"], providers=["CPUExecutionProvider"])
    assert {o.name for o in session.get_outputs()} == {"value", "embedding"}
    value, Z = session.run(["value", "embedding"], {"input": X.to_numpy()})
    assert value.shape == (len(X), 1) and value.dtype == np.float64
    np.testing.assert_allclose(value.ravel(), diabetes_trained.pipeline.predict(X), atol=1e-9)
    np.testing.assert_allclose(Z, embed(diabetes_trained.pipeline, X).to_numpy(), atol=1e-9)


def test_hist_gradient_boosting_that_does_not_match_falls_back_with_the_reason(
    penguins_dataset,
) -> None:
    # ONNX Runtime runs its trees in float32 only. An embedding wider than the data's rank
    # (training caps it: train.embedding_rank) has components of rounding noise the trees split
    # on, so rows land on the other side: the graph is refused, scikit-learn serves.
    config = TrainConfig(estimator="hist_gradient_boosting")
    schema = feature_schema(penguins_dataset.X)
    assert embedding_rank(schema) == 8
    pipeline = build_pipeline(config, 10, schema, "classification")
    X = encoded_frame(penguins_dataset.X, schema)
    pipeline.fit(X, penguins_dataset.y)
    files, info = onnx_export.convert(pipeline, X, "classification")
    assert files == {}
    joined = info["embedding_output_error"]
    assert "trees on float32: probabilities: max abs difference" in joined, info
    assert "tensor(double)" in info["error"]  # why the float64 graph did not do


def test_a_registered_lightgbm_graph_answers_rows_beyond_the_reference_as_lightgbm() -> None:
    """LightGBM compares in float64 (bmi 33.1 <= 33.10000000000001 goes left); the converter
    kept that threshold as the float32 33.0999985, so a later row with bmi 33.1 (no reference
    row has it, so the check on the reference rows passed) was answered 12 % off."""
    from lightgbm import LGBMRegressor
    from sklearn.decomposition import PCA

    data = pd.read_csv(DATA.parent / "diabetes.csv").sample(frac=1.0, random_state=0)
    X, y = data.drop(columns=["progression"]), data["progression"]
    reference = X.iloc[:300]
    model = LGBMRegressor(n_estimators=60, learning_rate=0.05, random_state=0, verbose=-1)
    model.fit(reference, y.iloc[:300])
    assert not (reference["bmi"] == 33.1).any() and (X["bmi"] == 33.1).any()
    embedding = PCA(n_components=2).fit(reference.to_numpy())

    files, info = onnx_export.convert_registered(model, embedding, reference, "regression")
    assert "error" not in info, info
    session = ort.InferenceSession(files[onnx_export.MODEL_FILE])
    (got,) = session.run([info["output"]], {info["input"]: X.to_numpy(dtype=np.float64)})
    np.testing.assert_allclose(got.ravel(), model.predict(X), rtol=1e-5)
