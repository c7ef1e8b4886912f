"""Models a user might bring that the platform must refuse. Importable by the separate
process that loads a model file (it runs from the repository, as ``mlplatform`` does)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin


class _Fitted(ClassifierMixin, BaseEstimator):
    def fit(self, X: Any, y: Any) -> _Fitted:
        self.classes_ = np.unique(y)
        self.n_features_in_ = X.shape[1]
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        return np.tile(np.full(len(self.classes_), 1 / len(self.classes_)), (len(X), 1))


class RaisesOnPredict(_Fitted):
    def predict(self, X: Any) -> np.ndarray:
        raise ValueError("this model cannot predict these rows")


class Hangs(_Fitted):
    def predict(self, X: Any) -> np.ndarray:
        time.sleep(3600)
        raise AssertionError("unreachable")


class Crashes(_Fitted):
    def predict(self, X: Any) -> np.ndarray:
        os.kill(os.getpid(), signal.SIGSEGV)
        raise AssertionError("unreachable")


class _Threshold:
    """A classifier fitted elsewhere (``trained``): the first column above its median."""

    classes_: np.ndarray
    threshold_: float
    n_features_in_: int

    def fit(self, X: Any, y: Any) -> _Threshold:
        raise RuntimeError("only its vendor can train this model")

    @classmethod
    def trained(cls, X: Any, y: Any) -> Any:
        model = cls()
        model.classes_ = np.unique(y)
        model.n_features_in_ = X.shape[1]
        model.threshold_ = float(np.median(np.asarray(X)[:, 0]))
        return model

    def predict(self, X: Any) -> np.ndarray:
        return np.asarray(self.classes_)[(np.asarray(X)[:, 0] > self.threshold_).astype(int)]

    def predict_proba(self, X: Any) -> np.ndarray:
        high = (np.asarray(X)[:, 0] > self.threshold_).astype(float)
        return np.column_stack([1 - high, high])


class RefusesRefit(_Threshold, ClassifierMixin, BaseEstimator):
    """It registers, predicts and clones, but its ``fit`` raises: a retrain cannot refit it."""


class NotCloneable(_Threshold):
    """Not a scikit-learn estimator (no ``get_params``): ``sklearn.base.clone`` refuses it."""
