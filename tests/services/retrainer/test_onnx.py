"""ONNX conversion at publish time: checked against scikit-learn, or not published."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import helper, numpy_helper
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from mlplatform_common.schema import embed
from mlplatform_retrainer import onnx_export
from mlplatform_retrainer.train import TrainConfig, train


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
