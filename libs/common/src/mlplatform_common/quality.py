"""Classification quality, computed the same way by training, the gate and the reporter."""

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
