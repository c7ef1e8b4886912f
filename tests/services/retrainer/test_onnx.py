"""ONNX conversion at publish time: checked against scikit-learn, or not published."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from mlplatform_retrainer import onnx_export
from mlplatform_retrainer.train import TrainConfig, train


def test_the_pipeline_converts_and_matches_sklearn(trained, shipped_dataset) -> None:
    data, info = onnx_export.convert(trained.pipeline, shipped_dataset.X)
    assert data is not None
    assert info["checked_rows"] == 569 and info["max_abs_diff"] <= 1e-12
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {"input": shipped_dataset.X.to_numpy()})[0]
    np.testing.assert_allclose(got, trained.pipeline.predict_proba(shipped_dataset.X), atol=1e-12)


def test_random_forest_converts_too(shipped_dataset) -> None:
    result = train(shipped_dataset.X, shipped_dataset.y, TrainConfig(estimator="random_forest"))
    data, info = onnx_export.convert(result.pipeline, shipped_dataset.X)
    assert data is not None, info
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
    data, info = onnx_export.convert(pipeline, shipped_dataset.X)
    assert data is None
    assert "Unconvertible" in info["error"] or "converter" in info["error"].lower()
