"""What the pages read from a model card (``GET /model``, a manifest): the task, the typed
feature schema, the form's values as a row for the API, an answer, and the metrics of the task.

Plain logic (no Streamlit), so every page shows both tasks the same way and tests call it
directly.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from mlplatform_common.schema import CATEGORY, NUMBER, is_category, nullable

CLASSIFICATION, REGRESSION = "classification", "regression"
EMPTY = "(empty)"
"""The choice of a nullable category that sends a missing value (``null``)."""

METRICS = {
    CLASSIFICATION: ["f1", "accuracy", "balanced_accuracy", "precision", "recall", "roc_auc"],
    REGRESSION: ["mae", "rmse", "r2", "mape"],
}
LABELS = {"mae": "MAE", "rmse": "RMSE", "r2": "R²", "mape": "MAPE", "roc_auc": "ROC AUC"}
SCORES_0_1 = {"f1", "accuracy", "balanced_accuracy", "precision", "recall", "roc_auc"}
"""Metrics that share a 0–1 axis; error metrics are in the target's units (or a ratio) and
R² may be negative, so each of those gets its own axis."""
HEADLINE = {CLASSIFICATION: "f1", REGRESSION: "rmse"}


def task(card: dict[str, Any]) -> str:
    """The card's task; a card from before tasks existed is classification."""
    return REGRESSION if card.get("task") == REGRESSION else CLASSIFICATION


def is_regression(card: dict[str, Any]) -> bool:
    return task(card) == REGRESSION


def schema(card: dict[str, Any]) -> list[dict[str, Any]]:
    """The typed feature schema; a spec without a type (an older manifest) is a number."""
    return [
        {**f, "dtype": f.get("dtype") or NUMBER}
        for f in card.get("feature_schema") or []
        if isinstance(f, dict) and "name" in f
    ]


def metric_label(metric: str) -> str:
    return LABELS.get(metric, metric.replace("_", " ").capitalize())


def format_metric(metric: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "–"
    if metric == "mape":
        return f"{value:.1%}"
    return f"{value:.3f}" if metric in SCORES_0_1 or metric == "r2" else f"{value:.4g}"


def headline(card: dict[str, Any]) -> tuple[str, str]:
    """The Model page's one test metric: F1 for classification, RMSE for regression."""
    metric = HEADLINE[task(card)]
    test = (card.get("metrics") or {}).get("test") or {}
    return f"Test {metric_label(metric)}", format_metric(metric, test.get(metric))


def default_value(spec: dict[str, Any]) -> Any:
    """A form's first value: a category's most common value, a number's reference median."""
    if is_category(spec):
        categories = list(spec.get("categories") or [])
        shares = list(spec.get("shares") or [])
        if not categories:
            return EMPTY
        if len(shares) == len(categories):
            return categories[max(range(len(shares)), key=shares.__getitem__)]
        return categories[0]
    return float(spec.get("median", spec.get("mean", 0.0)))


def choices(spec: dict[str, Any]) -> list[str]:
    """A category's select box options: its values, and ``EMPTY`` when it may be missing."""
    values = [str(c) for c in spec.get("categories") or []]
    return [*values, EMPTY] if nullable(spec) or not values else values


def row_features(schema: list[dict[str, Any]], values: dict[str, Any]) -> dict[str, Any]:
    """The form's values as the API's JSON row: a category as its text, a number as a float,
    ``EMPTY`` or an empty number field as ``null`` (the API names it if it may not be missing).
    """
    out: dict[str, Any] = {}
    for spec in schema:
        value = values.get(spec["name"])
        if value is None or value == EMPTY:
            out[spec["name"]] = None
        elif is_category(spec):
            out[spec["name"]] = str(value)
        else:
            out[spec["name"]] = float(value)
    return out


def schema_table(schema: list[dict[str, Any]]) -> pd.DataFrame:
    """One line per feature: its type, whether it may be missing, and its values or range."""
    rows = []
    for spec in schema:
        if is_category(spec):
            categories = [str(c) for c in spec.get("categories") or []]
            shares = list(spec.get("shares") or [])
            if len(shares) == len(categories):
                values = ", ".join(
                    f"{c} ({s:.0%})" for c, s in zip(categories, shares, strict=True)
                )
            else:
                values = ", ".join(categories)
            kind = CATEGORY
        else:
            values = (
                f"{spec.get('min', '?'):.4g} … {spec.get('max', '?'):.4g}, "
                f"median {spec.get('median', '?'):.4g}"
                if all(isinstance(spec.get(k), int | float) for k in ("min", "max", "median"))
                else ""
            )
            kind = "number"
        rows.append(
            {
                "feature": spec["name"],
                "type": kind,
                "may be missing": nullable(spec),
                "values": values,
            }
        )
    return pd.DataFrame(rows, columns=["feature", "type", "may be missing", "values"])


def class_labels(card: dict[str, Any]) -> dict[str, Any]:
    """Readable name -> class value, in the model's class order (empty for regression)."""
    classes = list(card.get("classes") or [])
    names = list(card.get("class_names") or [])
    return {(str(names[i]) if i < len(names) else str(c)): c for i, c in enumerate(classes)}


def class_name(card: dict[str, Any], value: Any) -> str:
    """The readable name of a class value (as the API spells it, e.g. ``"1"``)."""
    for name, cls in class_labels(card).items():
        if str(cls) == str(value):
            return name
    return str(value)


def predicted_value(answer: dict[str, Any]) -> float | None:
    """A regression answer's value (None when the answer has none)."""
    value = answer.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def format_value(value: float | None) -> str:
    """A predicted or true value for display: four significant digits is plenty for a page."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.4e}"


def history_entry(card: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """A prediction as the Label page lists it."""
    entry: dict[str, Any] = {"prediction_id": answer.get("prediction_id")}
    if is_regression(card):
        entry["value"] = predicted_value(answer)
    else:
        entry["label_name"] = answer.get("label_name", answer.get("label"))
        entry["probability"] = answer.get("probability")
    return entry


def metrics_frame(card: dict[str, Any]) -> pd.DataFrame:
    """The card's metrics (splits as rows) restricted to the task's metrics, labelled."""
    metrics = card.get("metrics") or {}
    names = METRICS[task(card)]
    rows = {
        split: {metric_label(m): values[m] for m in names if m in values}
        for split, values in metrics.items()
        if isinstance(values, dict)
    }
    frame = pd.DataFrame(rows).T
    return frame[[metric_label(m) for m in names if metric_label(m) in frame.columns]]
