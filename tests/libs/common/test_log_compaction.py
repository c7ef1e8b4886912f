"""Compaction of the prediction log's closed days (issue 25, item 4), on both backends."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from mlplatform_common import datalog, keys
from mlplatform_common.storage import LocalStore, Store

DAY = 86_400.0
NOW = 12 * DAY + 7_200.0  # 02:00 UTC on day 12: days 10 and 11 are closed, day 12 is open


def _served(ts: float, n: int, *, regression: bool = False, seed: int = 0) -> pd.DataFrame:
    """A batch as the serving writes it (``predlog.to_frame``): compact ids, categories as
    codes, a text category with missing cells, NaN in numbers and in the embedding."""
    rng = np.random.default_rng(seed)
    ids = datalog.new_prediction_ids(n, ts)
    bill = rng.normal(40, 5, n)
    bill[::3] = np.nan
    island = np.array(["Biscoe", "Dream", None], dtype=object)[rng.integers(0, 3, n)]
    columns: dict[str, object] = {
        "request_id": pd.Categorical.from_codes(np.zeros(n, dtype=np.int32), [ids.batch]),
        "request_row": np.arange(n, dtype=np.int32),
        "ts": ts - 0.5 + np.arange(n) * 1e-6,
        "model_version": pd.Categorical.from_codes(
            np.zeros(n, dtype=np.int8), ["v2" if regression else "v1"]
        ),
    }
    if regression:
        columns["prediction"] = rng.normal(150, 40, n)
    else:
        p = rng.uniform(0, 1, n)
        labels = (p > 0.5).astype(np.int8)
        columns["prediction"] = pd.Categorical.from_codes(labels, ["Adelie", "Gentoo"])
        columns["probability"] = np.maximum(p, 1 - p)
        columns["proba_0"], columns["proba_1"] = 1 - p, p
    embedding = rng.normal(0, 1, (2, n))
    embedding[:, ::4] = np.nan
    columns |= {
        "backup": np.zeros(n, dtype=bool),
        "bill_length_mm": bill,
        "island": island,
        "PCA_1": embedding[0],
        "PCA_2": embedding[1],
    }
    return pd.DataFrame(columns)


def _fill(store: Store) -> list[str]:
    """Days 10 and 11 (closed) and 12 (today): classification and regression batches, and a
    batch in the old format (string ids); returns today's keys."""
    seed = 0
    for day in (10, 11):
        for hour in range(0, 24, 3):
            seed += 1
            ts = day * DAY + hour * 3_600 + 17.25
            datalog.write_predictions(store, _served(ts, 40 + seed, seed=seed), ts=ts)
            ts += 60
            datalog.write_predictions(store, _served(ts, 7, regression=True, seed=seed), ts=ts)
    old = pd.DataFrame(
        {
            "prediction_id": ["legacy-1", "legacy-2"],
            "ts": [10 * DAY + 5.0, 10 * DAY + 5.0],
            "model_version": "v0",
            "prediction": ["1", "0"],
            "probability": [0.9, 0.6],
            "proba_json": ["[0.1, 0.9]", "[0.6, 0.4]"],
            "backup": [False, True],
            "bill_length_mm": [41.0, np.nan],
        }
    )
    datalog.write_predictions(store, old, ts=10 * DAY + 6.0)
    return [
        datalog.write_predictions(store, _served(ts, 9, seed=99), ts=ts)
        for ts in (NOW - 3_000.0, NOW - 60.0)
    ]


# Windows as the reporter reads them, edges inside the closed days' batches.
WINDOWS = [(None, None), (10 * DAY + 7 * 3_600, 11 * DAY + 4 * 3_600), (11 * DAY + 30, None)]


def _reads(store: Store) -> list[pd.DataFrame]:
    return [
        datalog.read_predictions(store, since, until).reset_index(drop=True)
        for since, until in WINDOWS
    ]


def _assert_same(before: list[pd.DataFrame], after: list[pd.DataFrame]) -> None:
    for b, a in zip(before, after, strict=True):
        assert set(a.columns) == set(b.columns)
        assert len(b) > 0
        pd.testing.assert_frame_equal(a[b.columns], b)


def _bytes(store: Store, prefix: str) -> int:
    return sum(len(store.get(k)) for k in store.list_keys(prefix))


def test_closed_days_read_back_equal_after_compaction_and_today_is_left(store: Store) -> None:
    today = _fill(store)
    before = _reads(store)
    some = before[0]["prediction_id"].iloc[[5, 70, -3]].tolist()
    found = [datalog.find_prediction(store, i, now=NOW) for i in some]
    size = _bytes(store, keys.predictions_day(10 * DAY))

    done = datalog.compact_predictions(store, NOW, max_rows=200)
    assert done["days"] == 2 and done["batches"] == 2 * 16 + 1 and done["leftovers"] == 0
    for day in (10, 11):
        left = store.list_keys(keys.predictions_day(day * DAY))
        assert left and all(keys.is_compacted(k) for k in left)
        rows = [len(pd.read_parquet(io.BytesIO(store.get(k)), engine="fastparquet")) for k in left]
        assert max(rows) <= 200
    assert [k for k in store.list_keys(keys.predictions_day(NOW))] == today  # open day as is
    assert _bytes(store, keys.predictions_day(10 * DAY)) < size

    _assert_same(before, _reads(store))
    for i, was in zip(some, found, strict=True):  # NaN too: compared as Series
        now = datalog.find_prediction(store, i, now=NOW)
        assert now is not None and was is not None
        pd.testing.assert_series_equal(pd.Series(now), pd.Series(was))
    assert datalog.compact_predictions(store, NOW)["days"] == 0  # nothing left to do


def test_a_day_just_ended_is_not_compacted(local_store: Store) -> None:
    datalog.write_predictions(local_store, _served(11 * DAY + 60, 5), ts=11 * DAY + 60)
    assert datalog.compact_predictions(local_store, 12 * DAY + 1_800.0)["days"] == 0
    assert datalog.compact_predictions(local_store, 12 * DAY + 3_601.0)["days"] == 1


class StopsBeforeDeleting(Store):
    """The real store, but the process stops (an exception) at the first delete: a
    compaction that wrote its object and never got to deleting the batches in it."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def put(self, key, data, content_type="application/octet-stream"):  # type: ignore[no-untyped-def]
        return self.inner.put(key, data, content_type)

    def put_if_absent(self, key, data, content_type="application/octet-stream"):  # type: ignore[no-untyped-def]
        return self.inner.put_if_absent(key, data, content_type)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list_keys(self, prefix: str = "", start_after: str | None = None) -> list[str]:
        return self.inner.list_keys(prefix, start_after)

    def delete(self, key: str) -> None:
        raise KeyboardInterrupt("stopped between the write and the delete")


def test_a_compaction_stopped_before_deleting_leaves_no_duplicate_rows(store: Store) -> None:
    _fill(store)
    before = _reads(store)
    with pytest.raises(KeyboardInterrupt):
        datalog.compact_predictions(StopsBeforeDeleting(store), NOW, max_rows=200)
    day = store.list_keys(keys.predictions_day(10 * DAY))
    assert sum(keys.is_compacted(k) for k in day) == 1 and len(day) > 1  # both are there
    _assert_same(before, _reads(store))

    again = datalog.compact_predictions(store, NOW, max_rows=200)
    assert again["leftovers"] > 0  # the batches already compacted: deleted, not compacted again
    _assert_same(before, _reads(store))
    everything = datalog.read_predictions(store)
    assert not everything["prediction_id"].duplicated().any()


def test_a_reader_whose_batches_were_compacted_after_its_listing_lists_again(
    local_store: Store,
) -> None:
    _fill(local_store)
    before = _reads(local_store)

    class CompactsDuringTheRead(LocalStore):
        """Compacts the closed days right after the reader's first listing."""

        listings = 0

        def list_keys(self, prefix: str = "", start_after: str | None = None) -> list[str]:
            listed = super().list_keys(prefix, start_after)
            CompactsDuringTheRead.listings += 1
            if CompactsDuringTheRead.listings == 1:
                datalog.compact_predictions(LocalStore(self.root), NOW, max_rows=200)
            return listed

    racing = CompactsDuringTheRead(local_store.root)  # type: ignore[attr-defined]
    after = datalog.read_predictions(racing).reset_index(drop=True)
    assert CompactsDuringTheRead.listings > 1
    _assert_same(before[:1], [after])


def test_retention_deletes_compacted_days(store: Store) -> None:
    today = _fill(store)
    datalog.compact_predictions(store, NOW)
    dropped = datalog.drop_expired_predictions(store, keep_days=0.01, now=NOW)
    assert dropped["partitions"] == 2
    assert store.list_keys(keys.PREDICTIONS) == today


def test_a_compacted_key_spans_its_batches_and_a_batch_key_is_never_taken_for_one() -> None:
    prefix = keys.predictions_day(10 * DAY)
    key = keys.compacted_batch(prefix, 864_000_123, 864_090_456, "abc")
    assert key.startswith(prefix) and keys.is_compacted(key)
    assert keys.written_span(key) == (864_000.123, 864_090.456)
    assert keys.written_at(key) == 864_090.456  # listed from any of its batches' times on
    batch = keys.predictions_batch(10 * DAY + 5, "c12345678901")  # a hex id that starts with c
    assert not keys.is_compacted(batch)
    assert keys.written_span(batch) == (10 * DAY + 5, 10 * DAY + 5)


def test_batch_flagged_batches_compact_apart_and_keep_their_flag(store: Store) -> None:
    """A batch job's objects (``log_source`` = batch) beside the serving's (no column): the
    flag survives compaction, and unflagged rows read as online before and after."""
    online = datalog.write_predictions(
        store, _served(10 * DAY + 100.0, 30, seed=1), ts=10 * DAY + 100.0
    )
    flagged = _served(10 * DAY + 200.0, 20, seed=2)
    flagged[datalog.SOURCE_COLUMN] = pd.Categorical.from_codes(
        np.zeros(20, dtype=np.int8), [datalog.BATCH]
    )
    batch = datalog.write_predictions(store, flagged, ts=10 * DAY + 200.0)
    before = datalog.read_predictions(store)
    assert before[datalog.SOURCE_COLUMN].value_counts().to_dict() == {"online": 30, "batch": 20}
    out = datalog.compact_predictions(store, NOW)
    assert out["batches"] == 2 and out["objects"] == 2  # two schemas, two objects
    assert online not in store.list_keys() and batch not in store.list_keys()
    after = datalog.read_predictions(store)
    pd.testing.assert_frame_equal(
        after.sort_values("prediction_id").reset_index(drop=True)[list(before.columns)],
        before.sort_values("prediction_id").reset_index(drop=True),
    )
    # a reader of one id (/feedback) gets the flag too
    pid = after.loc[after[datalog.SOURCE_COLUMN] == "batch", "prediction_id"].iloc[0]
    assert datalog.find_prediction(store, pid, now=NOW)[datalog.SOURCE_COLUMN] == "batch"  # type: ignore[index]
