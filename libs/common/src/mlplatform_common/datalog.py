"""Production data in the store: the prediction log and the labelled feedback.

Serving writes, the reporter and retrainer read. S3 has no append, so nothing here rewrites a
shared object: predictions are written in batches, one new Parquet object per batch, and each
labelled row is one new JSON object. Object names start with the time in milliseconds, so a
time window is a filter on names before any object is read.

Labels are stored as strings (``"0"``, ``"malignant"``), whatever the model's class type, so
logs from every version line up; ``label_of`` maps them back to a version's classes.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from mlplatform_common import keys
from mlplatform_common.errors import ObjectNotFound
from mlplatform_common.storage import Store, json_bytes

# Columns of every prediction log row besides the raw features and PCA_* embedding columns.
PREDICTION_COLUMNS = [
    "prediction_id",
    "ts",
    "model_version",
    "prediction",
    "probability",
    "proba_json",
    "backup",
]
FEEDBACK_COLUMNS = [
    "feedback_id",
    "prediction_id",
    "ts",
    "model_version",
    "prediction",
    "target",
]


def new_id() -> str:
    """A random 32-hex-digit id (prediction and feedback ids)."""
    return uuid.uuid4().hex


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def _object_name(ts: float, suffix: str) -> str:
    return f"{int(ts * 1000):015d}-{suffix}"


def _ts_of(key: str) -> float:
    """The write time encoded in a log object's name (0 if the name is foreign)."""
    name = key.rsplit("/", 1)[-1]
    head = name.split("-", 1)[0]
    return int(head) / 1000 if head.isdigit() else 0.0


def _keys_between(store: Store, prefix: str, since: float | None, until: float | None) -> list[str]:
    out = []
    for key in store.list_keys(prefix):
        ts = _ts_of(key)
        if (since is None or ts > since) and (until is None or ts <= until):
            out.append(key)
    return out


def write_predictions(store: Store, rows: pd.DataFrame, ts: float | None = None) -> str:
    """Write one batch of the prediction log as a new Parquet object; return its key."""
    ts = time.time() if ts is None else ts
    key = keys.predictions_batch(_day(ts), _object_name(ts, new_id()[:12]))
    buf = io.BytesIO()
    rows.to_parquet(buf, engine="fastparquet", index=False)
    store.put(key, buf.getvalue(), "application/vnd.apache.parquet")
    return key


def read_predictions(
    store: Store, since: float | None = None, until: float | None = None
) -> pd.DataFrame:
    """Every logged prediction whose batch was written in ``(since, until]``, oldest first."""
    frames = [
        pd.read_parquet(io.BytesIO(store.get(k)), engine="fastparquet")
        for k in _keys_between(store, keys.PREDICTIONS, since, until)
    ]
    if not frames:
        return pd.DataFrame(columns=PREDICTION_COLUMNS)
    return pd.concat(frames, ignore_index=True).sort_values("ts", kind="stable")


def write_feedback(store: Store, row: dict[str, Any], ts: float | None = None) -> str:
    """Store one labelled row as its own object; return its key. Durable when this returns."""
    ts = time.time() if ts is None else ts
    feedback_id = row.get("feedback_id") or new_id()
    record = {**row, "feedback_id": feedback_id, "ts": ts}
    key = keys.feedback_row(_day(ts), _object_name(ts, feedback_id))
    store.put(key, json_bytes(record), "application/json")
    return key


def feedback_keys(
    store: Store, since: float | None = None, until: float | None = None
) -> list[str]:
    """Keys of the labelled rows written in ``(since, until]``."""
    return _keys_between(store, keys.FEEDBACK, since, until)


def count_feedback(store: Store, since: float | None = None) -> int:
    """How many labelled rows arrived after ``since`` (a listing; no object is read)."""
    return len(feedback_keys(store, since))


def read_feedback(
    store: Store, since: float | None = None, until: float | None = None
) -> pd.DataFrame:
    """Labelled rows as a frame: the feedback columns, then one column per raw feature."""
    records = []
    for key in feedback_keys(store, since, until):
        try:
            record = store.get_json(key)
        except ObjectNotFound:
            continue  # deleted between list and read
        features = record.pop("features", {}) or {}
        records.append({**{c: record.get(c) for c in FEEDBACK_COLUMNS}, **features})
    if not records:
        return pd.DataFrame(columns=FEEDBACK_COLUMNS)
    return pd.DataFrame.from_records(records).sort_values("ts", kind="stable")


def label_of(value: Any, classes: Iterable[Any]) -> Any:
    """Map a stored label string back to the matching class of a model (or leave it)."""
    for cls in classes:
        if str(cls) == str(value):
            return cls
    return value
