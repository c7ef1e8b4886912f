"""The prediction log and feedback objects, on both backends."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pandas as pd
import pytest

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


def test_a_prediction_labelled_twice_is_read_once_with_its_latest_label(store: Store) -> None:
    rows = [("p1", "0", 100.0), ("p2", "1", 150.0), ("p1", "1", 200.0), (None, "0", 250.0)]
    rows.append((None, "0", 260.0))  # rows given with their features have no id: both kept
    for pid, target, ts in rows:
        row = {"prediction_id": pid, "prediction": "0", "target": target, "features": {"a": 1.0}}
        datalog.write_feedback(store, {"model_version": "v1", **row}, ts=ts)
    assert len(datalog.read_feedback(store)) == 5  # every stored row, for audits
    frame = datalog.read_feedback(store, one_per_prediction=True)  # what the jobs read
    assert frame["prediction_id"].tolist() == ["p2", "p1", None, None]
    assert frame["target"].tolist() == ["1", "1", "0", "0"]
    assert datalog.count_feedback(store) == 5  # every stored row still counts


def test_label_of_maps_strings_back_to_classes() -> None:
    assert datalog.label_of("1", [0, 1]) == 1
    assert datalog.label_of("benign", ["benign", "malignant"]) == "benign"
    assert datalog.label_of("7", [0, 1]) == "7"


def test_feedback_counter_counts_each_row_once_including_late_writes(store: Store) -> None:
    def write(ts: float) -> None:
        datalog.write_feedback(store, {"target": "1", "features": {}}, ts=ts)

    base = time.time() - 2 * 86_400  # the counter walks day partitions up to now
    counter = datalog.FeedbackCounter(store, since=base, margin=60)
    write(base - 5)  # before training: never counted
    assert counter.count() == 0
    write(base + 10)
    write(base + 20)
    assert counter.count() == 2
    assert counter.count() == 2  # listing again counts nothing twice
    write(base + 15)  # finished late, sorts before the newest key seen
    write(base + 30)
    assert counter.count() == 4
    write(base + 86_400)  # the next day's partition
    assert counter.count() == 5
    assert counter.count() == datalog.count_feedback(store, since=base)


def test_list_keys_start_after(store: Store) -> None:
    for k in ("p/a", "p/b", "p/c"):
        store.put(k, b"")
    assert store.list_keys("p/", start_after="p/a") == ["p/b", "p/c"]
    assert store.list_keys("p/", start_after="p/") == ["p/a", "p/b", "p/c"]


def test_feedback_counter_notes_own_writes_without_listing(store: Store) -> None:
    base = time.time() - 60
    counter = datalog.FeedbackCounter(store, since=base)
    assert counter.count() == 0
    own = datalog.write_feedback(store, {"target": "1"}, ts=base + 1)
    counter.note(own)
    datalog.write_feedback(store, {"target": "0"}, ts=base + 2)  # another replica's row
    assert counter.count(max_age=3600) == 1  # no listing: only its own write so far
    assert counter.count() == 2  # a listing finds the other one, and not its own twice


def test_prediction_ids_carry_their_time_and_are_unique() -> None:
    ids = datalog.new_prediction_ids(1000, 1_800_000_000.123)
    assert len(set(ids)) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert datalog.prediction_time(ids[0]) == 1_800_000_000.123
    assert datalog.prediction_time("not-an-id") is None


def test_prediction_ids_of_a_batch_share_one_key_and_number_their_rows() -> None:
    ts = 1_800_000_000.5
    first, second = datalog.new_prediction_ids(3, ts), datalog.new_prediction_ids(2000, ts)
    key = first[0][:26]
    assert [datalog.prediction_batch(i) for i in first] == [(key, 0), (key, 1), (key, 2)]
    assert datalog.prediction_batch(second[1999]) == (second[0][:26], 1999)
    # the same millisecond, another batch: another random key, no shared id
    assert second[0][:26] != first[0][:26] and not set(first) & set(second)
    assert datalog.prediction_batch("f" * 31 + "g") is None
    assert datalog.prediction_batch("short") is None


def test_find_prediction_reads_only_batches_from_its_time_on(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    old_id = datalog.new_prediction_ids(1, now - 3600)[0]
    new_id = datalog.new_prediction_ids(1, now - 10)[0]
    for i in range(5):  # an hour of older batches that must not be read
        datalog.write_predictions(store, _batch([f"x{i}"], now - 3600), ts=now - 3500 + i)
    datalog.write_predictions(store, _batch([old_id], now - 3600), ts=now - 3599)
    datalog.write_predictions(store, _batch([new_id], now - 10), ts=now - 9)
    reads: list[str] = []
    real_get = store.get
    monkeypatch.setattr(store, "get", lambda key: reads.append(key) or real_get(key))
    for i in range(5):  # batches of the seconds before it (inside the clock-skew margin)
        datalog.write_predictions(store, _batch([f"y{i}"], now - 40), ts=now - 40 + i)
    assert datalog.find_prediction(store, new_id, now=now)["prediction_id"] == new_id
    assert len(reads) == 1
    assert datalog.find_prediction(store, old_id, now=now)["prediction_id"] == old_id
    assert datalog.find_prediction(store, "legacy-id-without-time", now=now) is None


def test_prediction_ids_are_made_without_a_string_per_row_and_read_like_a_list() -> None:
    ids = datalog.new_prediction_ids(1000, 1_800_000_000.0)
    as_list = [ids.batch + f"{i:06x}" for i in range(1000)]
    assert list(ids) == as_list and len(ids) == 1000
    assert ids[0] == as_list[0] and ids[-1] == as_list[-1] and ids[10:13] == as_list[10:13]
    with pytest.raises(IndexError):
        ids[1000]
    assert ids.json() == orjson.dumps(as_list)
    assert datalog.new_prediction_ids(0, 1.0).json() == b"[]"
    assert datalog.prediction_id(ids.batch, 999) == as_list[999]


def _compact_batch(ids: datalog.PredictionIds, proba: np.ndarray) -> pd.DataFrame:
    """A batch as the serving writes it (``predlog.to_frame``): no string per row."""
    return pd.DataFrame(
        {
            "request_id": pd.Categorical.from_codes(np.zeros(len(ids), dtype=int), [ids.batch]),
            "request_row": np.arange(len(ids), dtype=np.int32),
            "ts": 1000.0,
            "model_version": pd.Categorical.from_codes(np.zeros(len(ids), dtype=int), ["v1"]),
            "prediction": ["1"] * len(ids),
            "probability": proba.max(axis=1),
            **{f"proba_{j}": proba[:, j] for j in range(proba.shape[1])},
            "backup": False,
            "mean_radius": np.arange(len(ids), dtype=float),
        }
    )


def test_compact_batches_read_back_with_prediction_ids_and_probabilities(store: Store) -> None:
    ids = datalog.new_prediction_ids(3, 1000.0)
    proba = np.array([[0.1, 0.9], [0.25, 0.75], [1 / 3, 2 / 3]])
    datalog.write_predictions(store, _batch(["legacy"], 999.0), ts=999.0)
    datalog.write_predictions(store, _compact_batch(ids, proba), ts=1000.0)
    logged = datalog.read_predictions(store)
    assert list(logged["prediction_id"]) == ["legacy", *ids]
    assert list(logged["proba_json"]) == [
        "[0.1, 0.9]",
        "[0.1,0.9]",
        "[0.25,0.75]",
        "[0.333333,0.666667]",
    ]
    assert not {"request_id", "request_row", "proba_0", "proba_1"} & set(logged.columns)
    assert logged["model_version"].tolist() == ["v1"] * 4
    found = datalog.find_prediction(store, ids[2], now=1001.0)
    assert found["prediction_id"] == ids[2] and found["mean_radius"] == 2.0
    assert found["proba_json"] == "[0.333333,0.666667]"
    assert datalog.find_prediction(store, ids.batch + "000003", now=1001.0) is None  # no row 3


DAY = 86_400.0


def test_retention_deletes_only_whole_days_older_than_the_window(store: Store) -> None:
    now = 40 * DAY + 3_600.0  # 01:00 UTC on day 40
    for day, ids in [(30, ["old"]), (31, ["edge"]), (32, ["kept"]), (40, ["today"])]:
        datalog.write_predictions(store, _batch(ids, day * DAY + 60), ts=day * DAY + 60)
    datalog.write_feedback(store, {"prediction_id": "old", "target": "1"}, ts=30 * DAY + 90)
    # keep 8 days: rows from 32 * DAY + 3,600 on must stay, so day 32 (and 40) stays; day 31
    # ended at 32 * DAY, before that, and goes with day 30
    dropped = datalog.drop_expired_predictions(store, keep_days=8, now=now)
    assert dropped == {"partitions": 2, "objects": 2}
    assert sorted(datalog.read_predictions(store)["prediction_id"]) == ["kept", "today"]
    assert list(datalog.read_feedback(store)["prediction_id"]) == ["old"]  # labels stay
    assert datalog.drop_expired_predictions(store, keep_days=8, now=now)["partitions"] == 0


def test_retention_never_deletes_the_current_day(store: Store) -> None:
    now = 40 * DAY + 60.0
    datalog.write_predictions(store, _batch(["a"], now - 30), ts=now - 30)
    datalog.write_predictions(store, _batch(["b"], now - 120), ts=now - 120)  # yesterday
    assert datalog.drop_expired_predictions(store, keep_days=0.0001, now=now)["partitions"] == 1
    assert list(datalog.read_predictions(store)["prediction_id"]) == ["a"]


def test_retention_leaves_foreign_names_under_the_log_alone(local_store: Store) -> None:
    local_store.put("production/predictions/README", b"not a partition")
    local_store.put("production/predictions/dt=garbage/x.parquet", b"not a day")
    assert datalog.drop_expired_predictions(local_store, keep_days=1, now=40 * DAY) == {
        "partitions": 0,
        "objects": 0,
    }
    assert local_store.exists("production/predictions/dt=garbage/x.parquet")


def test_the_log_is_read_alike_by_pyarrow_so_by_duckdb_and_spark(store: Store) -> None:
    """Users read the log with their own tools: a text column with a missing cell (a category
    feature) and a missing number must come back as written, not shifted, batch and compacted."""
    import io

    import pyarrow.parquet as pq

    batch = _batch(["a", "b", "c"], 1000.0)
    batch["colour"] = ["red", None, "blue"]
    batch.loc[1, "mean_radius"] = np.nan
    datalog.write_predictions(store, batch, ts=1000.0)
    datalog.compact_predictions(store, now=1000.0 + 3 * DAY)
    (key,) = store.list_keys(datalog.keys.PREDICTIONS)
    assert datalog.keys.is_compacted(key)
    for blob in (bytes(datalog.parquet_bytes(batch, datalog.LOG_COMPRESSION)), store.get(key)):
        theirs = pq.read_table(io.BytesIO(blob)).to_pandas()
        assert theirs["colour"].tolist() == ["red", None, "blue"]
        assert theirs["prediction_id"].tolist() == ["a", "b", "c"]
        ours = pd.read_parquet(io.BytesIO(blob), engine="fastparquet")
        pd.testing.assert_frame_equal(
            theirs[ours.columns].astype(object), ours.astype(object), check_dtype=False
        )
