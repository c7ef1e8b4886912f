"""The numbers of a report's ``summary.json``, read defensively.

The reporter owns that format; this module looks for well-known keys at a few likely places
(top level, ``drift.embedding``, ``quality``, ``metrics``) and then anywhere in the document, and
shows only what it finds.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

# label, keys the value may have, places to look first (paths of nested dicts)
FIELDS: list[tuple[str, tuple[str, ...], tuple[tuple[str, ...], ...]]] = [
    (
        "Drift share",
        ("drift_share", "share", "share_of_drifted_columns"),
        ((), ("drift", "embedding"), ("drift",), ("data_drift",)),
    ),
    (
        "Drifted features",
        ("drifted_columns", "number_of_drifted_columns", "n_drifted_columns", "drifted_features"),
        ((), ("drift", "embedding"), ("drift",), ("data_drift",)),
    ),
    ("F1", ("f1", "f1_score"), ((), ("quality",), ("classification",), ("metrics",))),
    ("Precision", ("precision",), ((), ("quality",), ("classification",), ("metrics",))),
    ("Recall", ("recall",), ((), ("quality",), ("classification",), ("metrics",))),
    (
        "Balanced accuracy",
        ("balanced_accuracy",),
        ((), ("quality",), ("classification",), ("metrics",)),
    ),
    ("Accuracy", ("accuracy",), ((), ("quality",), ("classification",), ("metrics",))),
    ("ROC AUC", ("roc_auc",), ((), ("quality",), ("classification",), ("metrics",))),
    # a regression's quality (the reporter's names, as quality.regression_metrics has them)
    ("MAE", ("mae",), ((), ("quality",), ("regression",), ("metrics",))),
    ("RMSE", ("rmse",), ((), ("quality",), ("regression",), ("metrics",))),
    ("R²", ("r2",), ((), ("quality",), ("regression",), ("metrics",))),
    ("MAPE", ("mape",), ((), ("quality",), ("regression",), ("metrics",))),
]
LOWER_IS_BETTER = {"MAE", "RMSE", "MAPE"}
"""Labels whose rise is bad news (shown red), as drift's is."""


def _at(doc: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def _as_number(value: Any) -> float | None:
    if isinstance(value, list | tuple):
        return float(len(value))  # a list of drifted column names
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _anywhere(doc: Any, keys: tuple[str, ...]) -> float | None:
    queue: deque[Any] = deque([doc])
    while queue:
        item = queue.popleft()
        if isinstance(item, dict):
            for key in keys:
                number = _as_number(item.get(key))
                if number is not None:
                    return number
            queue.extend(v for v in item.values() if isinstance(v, dict))
    return None


def numbers(summary: Any) -> dict[str, float]:
    """Label -> value for every well-known number the summary has, in display order."""
    out: dict[str, float] = {}
    if not isinstance(summary, dict):
        return out
    for label, keys, places in FIELDS:
        value = None
        for place in places:
            node = _at(summary, place)
            if isinstance(node, dict):
                value = next(
                    (n for n in (_as_number(node.get(k)) for k in keys) if n is not None), None
                )
            if value is not None:
                break
        if value is None:
            value = _anywhere(summary, keys)
        if value is not None:
            out[label] = value
    # The raw features' drift, next to the embedding's: only where the reporter puts it (a
    # search elsewhere would find the embedding's numbers again).
    for label, key in (("Drift share (raw)", "share"), ("Drifted raw features", "drifted_columns")):
        number = _as_number(_at(summary, ("drift", "raw", key)))
        if number is not None:
            out[label] = number
    rows = summary.get("rows")
    if isinstance(rows, dict):
        for name in ("production", "current", "labelled", "reference"):
            number = _as_number(rows.get(name))
            if number is not None:
                out[f"{name.capitalize()} rows"] = number
    else:
        number = _as_number(rows)
        if number is not None:
            out["Rows"] = number
    return out


def quality_line(summary: Any) -> str | None:
    """One line on why the quality numbers are partial or missing, or None when they are all
    there (or the summary predates ``quality_status``)."""
    if not isinstance(summary, dict):
        return None
    status, note = summary.get("quality_status"), summary.get("quality_note")
    if status not in ("partial", "empty") and not note:
        return None
    if not note:
        return f"Quality {status}."
    text = str(note)  # the reporter's note says the status itself
    return text[:1].upper() + text[1:]


def notes(summary: Any) -> list[str]:
    """The summary's free-text notes, if any, less the one ``quality_line`` already shows."""
    if not isinstance(summary, dict):
        return []
    found, shown = summary.get("notes"), summary.get("quality_note")
    return [str(n) for n in found if n != shown] if isinstance(found, list) else []


def when(report_id: str, summary: Any) -> str:
    """A label for the report picker: its id and, when known, the model version."""
    version = summary.get("model_version") if isinstance(summary, dict) else None
    return f"{report_id} (model {version})" if version else report_id
