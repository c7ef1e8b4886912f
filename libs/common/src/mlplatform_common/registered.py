"""A model trained elsewhere, as the platform runs it (``mlplatform register``).

The platform's models take encoded rows (``schema.encode``: a float per feature, a category as
its code); a user's model takes the rows as it was fitted on them (category text). A
``RegisteredModel`` decodes the rows back (``schema.decode``) before it calls the user's model,
and carries the drift embedding as its ``embedding`` step, so serving, the reporter and the
retrainer use it as they use a trained pipeline (``predict``, ``predict_proba``,
``named_steps["embedding"]``). It lives here, not in the retrainer, because every service that
unpickles a version imports it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mlplatform_common.errors import InvalidInput
from mlplatform_common.schema import decode, is_category


def raw_rows(X: Any, schema: list[dict[str, Any]]) -> pd.DataFrame:
    """Encoded rows (a frame or a matrix in the schema's order) as the user's model takes
    them: numbers as floats, categories as their text, missing cells as NaN/None."""
    matrix = X.to_numpy(dtype=np.float64) if isinstance(X, pd.DataFrame) else np.asarray(X)
    frame = decode(matrix.astype(np.float64, copy=False), schema)
    for spec in schema:
        if is_category(spec):  # NaN, not None: what imputers and encoders fitted on CSVs saw
            values = frame[spec["name"]].to_numpy(dtype=object)
            values[pd.isna(values)] = np.nan
            frame[spec["name"]] = values
    if isinstance(X, pd.DataFrame):
        frame.index = X.index
    return frame


class ModelTransformEmbedding:
    """PCA over the user's pipeline's own transformed features (its steps before the final
    estimator), fitted on the reference rows."""

    def __init__(self, head: Any, pca: Any, schema: list[dict[str, Any]]) -> None:
        self.head = head
        self.pca = pca
        self.schema = schema

    def transform(self, X: Any) -> np.ndarray:
        Z = self.head.transform(raw_rows(X, self.schema))
        if hasattr(Z, "toarray"):  # a sparse matrix (one-hot encoders' default)
            Z = Z.toarray()
        Z = np.asarray(Z, dtype=np.float64)
        return np.asarray(self.pca.transform(np.nan_to_num(Z)), dtype=np.float64)


class RegisteredModel:
    """The user's fitted model behind the platform's encoded rows, with the drift embedding."""

    def __init__(self, model: Any, schema: list[dict[str, Any]], embedding: Any) -> None:
        self.model = model
        self.schema = schema
        self.steps = [("embedding", embedding), ("model", model)]

    @property
    def named_steps(self) -> dict[str, Any]:
        return dict(self.steps)

    @property
    def classes_(self) -> Any:
        return self.model.classes_

    def predict(self, X: Any) -> Any:
        return self._call("predict", X)

    def predict_proba(self, X: Any) -> Any:
        return self._call("predict_proba", X)

    def _call(self, method: str, X: Any) -> Any:
        rows = raw_rows(X, self.schema)
        try:
            return getattr(self.model, method)(rows)
        except Exception as exc:
            # It predicted every reference row when it was registered: what it refuses now is
            # in the rows (a category value it never saw, with an encoder that says so).
            text = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            raise InvalidInput(f"the registered model refused these rows: {text}") from exc
