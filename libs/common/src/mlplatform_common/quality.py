"""Quality metrics per task, computed the same way by training, the gate and the reporter."""

from __future__ import annotations

from typing import Any

import numpy as np


def to_builtin(value: Any) -> Any:
    """numpy scalar -> plain Python, so class labels survive JSON."""
    return value.item() if isinstance(value, np.generic) else value


def classification_metrics(
    y_true: Any, y_pred: Any, proba: np.ndarray | None, classes: list[Any]
) -> dict[str, float]:
    """Accuracy, balanced accuracy, precision, recall, F1 and (with probabilities) ROC AUC.

    Binary problems score the second class as positive (scikit-learn's convention for 0/1
    labels); more classes use the macro average.
    """
    from sklearn import metrics as skm  # here, not above: serving imports this module's neighbours

    binary = len(classes) == 2
    avg: dict[str, Any] = (
        {"average": "binary", "pos_label": classes[1]} if binary else {"average": "macro"}
    )
    out = {
        "accuracy": skm.accuracy_score(y_true, y_pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y_true, y_pred),
        "precision": skm.precision_score(y_true, y_pred, zero_division=0, **avg),
        "recall": skm.recall_score(y_true, y_pred, zero_division=0, **avg),
        "f1": skm.f1_score(y_true, y_pred, zero_division=0, **avg),
    }
    if proba is not None and len(np.unique(y_true)) == len(classes):
        if binary:
            out["roc_auc"] = skm.roc_auc_score(y_true, proba[:, 1])
        else:
            out["roc_auc"] = skm.roc_auc_score(y_true, proba, multi_class="ovr", labels=classes)
    return {k: round(float(v), 6) for k, v in out.items()}


def regression_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """MAE, RMSE, R² and (when no true value is 0, where it is undefined) MAPE."""
    from sklearn import metrics as skm

    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    out = {
        "mae": skm.mean_absolute_error(y_true, y_pred),
        "rmse": float(np.sqrt(skm.mean_squared_error(y_true, y_pred))),
        "r2": skm.r2_score(y_true, y_pred) if len(y_true) > 1 else float("nan"),
    }
    if len(y_true) and not (y_true == 0).any():
        out["mape"] = skm.mean_absolute_percentage_error(y_true, y_pred)
    return {k: round(float(v), 6) for k, v in out.items() if np.isfinite(v)}


HIGHER_IS_BETTER = {
    "accuracy": True,
    "balanced_accuracy": True,
    "precision": True,
    "recall": True,
    "f1": True,
    "roc_auc": True,
    "r2": True,
    "mae": False,
    "rmse": False,
    "mape": False,
}
"""Each quality metric's direction: the gate and the triggers compare by it."""

DEFAULT_METRIC = {"classification": "f1", "regression": "rmse"}
"""The metric the gate and the quality trigger use for a task when none is set."""


def better(metric: str, a: float, b: float, tolerance: float = 0.0) -> bool:
    """Whether ``a`` is not worse than ``b`` by more than ``tolerance`` in ``metric``'s
    direction: absolute for scores (0 to 1), relative for errors, which are in the target's
    units (an RMSE of 52.1 against 52.0 with tolerance 0.01 is within 1%)."""
    if HIGHER_IS_BETTER[metric]:
        return a >= b - tolerance
    return a <= b * (1 + tolerance) + 1e-12
