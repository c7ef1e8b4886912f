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
