"""The prediction log and feedback objects, on both backends."""

from __future__ import annotations

import pandas as pd

from mlplatform_common import datalog
from mlplatform_common.storage import Store


def _batch(ids: list[str], ts: float) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prediction_id": ids,
            "ts": [ts] * len(ids),
            "model_version": "v1",
            "prediction": ["1"] * len(ids),
            "probability": [0.9] * len(ids),
            "proba_json": ["[0.1, 0.9]"] * len(ids),
            "backup": [False] * len(ids),
            "mean_radius": [10.0 + i for i in range(len(ids))],
            "PCA_1": [0.5] * len(ids),
        }
    )


def test_prediction_batches_are_new_objects_read_back_by_window(store: Store) -> None:
    k1 = datalog.write_predictions(store, _batch(["a", "b"], 1000.0), ts=1000.0)
    k2 = datalog.write_predictions(store, _batch(["c"], 2000.0), ts=2000.0)
    assert k1 != k2
    assert k1.startswith("production/predictions/dt=1970-01-01/") and k1.endswith(".parquet")
    everything = datalog.read_predictions(store)
    assert list(everything["prediction_id"]) == ["a", "b", "c"]
    assert list(everything["mean_radius"]) == [10.0, 11.0, 10.0]
    assert list(datalog.read_predictions(store, since=1500.0)["prediction_id"]) == ["c"]
    assert list(datalog.read_predictions(store, until=1500.0)["prediction_id"]) == ["a", "b"]


def test_empty_log_has_the_documented_columns(store: Store) -> None:
    assert list(datalog.read_predictions(store).columns) == datalog.PREDICTION_COLUMNS
    assert list(datalog.read_feedback(store).columns) == datalog.FEEDBACK_COLUMNS
    assert datalog.count_feedback(store) == 0


def test_feedback_is_one_object_per_row_and_counted_by_time(store: Store) -> None:
    for i, ts in enumerate([100.0, 200.0, 300.0]):
        key = datalog.write_feedback(
            store,
            {
                "prediction_id": f"p{i}",
                "model_version": "v1",
                "prediction": "1",
                "target": str(i % 2),
                "features": {"mean_radius": float(i)},
            },
            ts=ts,
        )
        assert key.startswith("production/feedback/dt=1970-01-01/") and key.endswith(".json")
    assert datalog.count_feedback(store) == 3
    assert datalog.count_feedback(store, since=150.0) == 2
    frame = datalog.read_feedback(store, since=150.0)
    assert list(frame["prediction_id"]) == ["p1", "p2"]
    assert list(frame["target"]) == ["1", "0"]
    assert list(frame["mean_radius"]) == [1.0, 2.0]
    assert frame["feedback_id"].str.len().eq(32).all()


def test_label_of_maps_strings_back_to_classes() -> None:
    assert datalog.label_of("1", [0, 1]) == 1
    assert datalog.label_of("benign", ["benign", "malignant"]) == "benign"
    assert datalog.label_of("7", [0, 1]) == "7"
