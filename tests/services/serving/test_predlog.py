"""The prediction log writer on its own: objects per model version, its memory bounds."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any

import fastparquet
import numpy as np
import pandas as pd
import pytest

from mlplatform_common import datalog, keys
from mlplatform_common.errors import ModelNotReady, StorageUnavailable
from mlplatform_common.storage import Store
from mlplatform_serving import predlog
from mlplatform_serving.predlog import ENTRY_BYTES, REQUEST_BYTES, PredictionLog
from mlplatform_serving.runtime import BatchResult, make_served


class Doubling:
    """An embedding: the first feature, doubled."""

    def transform(self, X: np.ndarray) -> np.ndarray:
        return X[:, :1] * 2.0


def _served(version: str, classes: list[Any]) -> Any:
    return SimpleNamespace(
        version=version,
        classes=classes,
        class_keys=[str(c) for c in classes],
        features=["a", "b"],
        embedding=Doubling(),
        regression=False,
        category_text={},
    )


def _result(served: Any, n: int, seed: int = 0) -> BatchResult:
    rng = np.random.default_rng(seed)
    proba = rng.dirichlet(np.ones(len(served.classes)), size=n)
    return BatchResult(served, rng.normal(size=(n, 2)), proba, proba.argmax(axis=1), False)


class Clock:
    """predlog's ``time.monotonic``, moved on by the test: no window for a slow machine."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(predlog, "time", fake)
    return fake


def _log(store: Store, **kw: Any) -> PredictionLog:
    settings: dict[str, Any] = {
        "flush_rows": 10_000,
        "flush_seconds": 3600.0,
        "max_rows": 10_000,
        "cache_rows": 10_000,
    }
    return PredictionLog(store, **{**settings, **kw})


def test_a_flush_across_a_model_swap_writes_one_object_per_version(local_store: Store) -> None:
    # A retrain may change the classes: each object holds one version's classes, so a row's
    # probabilities read back with its own version's length.
    log = _log(local_store)
    v1, v2 = _served("v1", [0, 1]), _served("v2", ["a", "b", "c"])
    sent = [(v1, 3), (v1, 2), (v2, 4), (v1, 1)]
    ids = []
    for i, (served, n) in enumerate(sent):
        ids.append(datalog.new_prediction_ids(n, 1000.0 + i))
        log.add(_result(served, n, seed=i), [ids[-1]], 1000.0 + i)
    assert log.flush() == 10
    objects = local_store.list_keys(keys.PREDICTIONS)
    assert len(objects) == 3  # v1, then v2, then v1 again: runs of one version each
    for key in objects:
        raw = pd.read_parquet(io.BytesIO(local_store.get(key)), engine="fastparquet")
        assert [c for c in raw.columns if raw[c].dtype == object] == []
        # Uncompressed: snappy cost the writer 0.4 µs a row for ~1.5x on real rows.
        meta = fastparquet.ParquetFile(io.BytesIO(local_store.get(key))).fmd
        assert {c.meta_data.codec for g in meta.row_groups for c in g.columns} == {0}
    logged = datalog.read_predictions(local_store)
    widths = {
        v: {len(json.loads(p)) for p in group["proba_json"]}
        for v, group in logged.groupby("model_version")
    }
    assert widths == {"v1": {2}, "v2": {3}}
    assert sorted(logged["prediction_id"]) == sorted(i for batch in ids for i in batch)


@pytest.mark.parametrize(
    ("lengths", "objects"),
    [
        ([10, 10, 10, 10, 10], [20, 20, 10]),
        ([40, 1, 1], [40, 2]),  # longer than the limit: an object of its own
        ([1] * 4, [4]),
    ],
)
def test_a_flush_writes_whole_requests_up_to_the_object_limit_and_holds_the_rest_until_then(
    local_store: Store, monkeypatch: pytest.MonkeyPatch, lengths: list[int], objects: list[int]
) -> None:
    # The rows not yet written stay in the buffer, where the backpressure counts them: a
    # flush that took the whole buffer at once held it twice over while new rows came in.
    log = _log(local_store, write_max_rows=25)
    served = _served("v1", [0, 1])
    for i, n in enumerate(lengths):
        log.add(_result(served, n, seed=i), [datalog.new_prediction_ids(n, 1000.0 + i)], 1000.0)
    waiting_at_each_write = []
    put = local_store.put

    def counting_put(key: str, data: bytes, content_type: str = "") -> None:
        waiting_at_each_write.append(log.pending_rows)
        put(key, data, content_type)

    monkeypatch.setattr(local_store, "put", counting_put)
    assert log.flush() == sum(lengths)
    keys_ = local_store.list_keys(keys.PREDICTIONS)
    written = [len(pd.read_parquet(io.BytesIO(local_store.get(k)))) for k in keys_]
    assert sorted(written) == sorted(objects)
    assert waiting_at_each_write == [sum(objects[i + 1 :]) for i in range(len(objects))]
    assert log.pending_rows == 0


def test_rows_that_arrive_during_a_flush_wait_their_own_flush_interval(
    local_store: Store, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    # They are the buffer's oldest rows now: judged by the flush's start, not by the rows
    # the flush wrote, or the writer would write an object at every wake under steady load.
    log = _log(local_store, flush_seconds=0.5, write_max_rows=3)
    served = _served("v1", [0, 1])
    for i in range(2):  # two objects
        log.add(_result(served, 3, seed=i), [datalog.new_prediction_ids(3, 1000.0)], 1000.0)
    assert not log._due()
    clock.now += 0.6
    assert log._due()
    put = local_store.put
    puts = []

    def put_while_a_request_arrives(key: str, data: bytes, content_type: str = "") -> None:
        puts.append(key)
        if len(puts) == 1:  # while the second object still waits in the buffer
            log.add(_result(served, 2, seed=5), [datalog.new_prediction_ids(2, 1001.0)], 1001.0)
        put(key, data, content_type)

    monkeypatch.setattr(local_store, "put", put_while_a_request_arrives)
    assert log.flush() == 6
    assert log.pending_rows == 2
    assert not log._due()


def test_compact_batches_of_two_versions_read_together_keep_each_rows_classes() -> None:
    # Objects written before the one-version runs could hold two versions: NaN-padded.
    frame = pd.DataFrame({"proba_0": [0.25, 0.2], "proba_1": [0.75, 0.3], "proba_2": [np.nan, 0.5]})
    assert list(datalog.expand_compact(frame)["proba_json"]) == ["[0.25,0.75]", "[0.2,0.3,0.5]"]
    assert "proba_json" not in frame.columns  # the caller's frame is left as it was


def test_wide_rows_wake_the_writer_before_the_row_count_does(local_store: Store) -> None:
    one = ENTRY_BYTES + REQUEST_BYTES + 100 * (2 * 8 + 2 * 8 + 8 + 8)
    log = _log(local_store, max_bytes=8 * one)
    served = _served("v1", [0, 1])
    log.add(_result(served, 100), [datalog.new_prediction_ids(100, time.time())], time.time())
    assert not log._due()  # 100 rows, a quarter of nothing yet
    log.add(_result(served, 100), [datalog.new_prediction_ids(100, time.time())], time.time())
    assert log._due() and log._wake.is_set()  # 2 of 8: a quarter of the memory bound
    assert log.dropped_rows == 0


def test_the_buffer_of_a_store_that_is_down_is_bounded_by_memory_too(
    local_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 200,000 buffered one-row requests would hold ~500 MB: the oldest go first past the bound.
    one_row = ENTRY_BYTES + REQUEST_BYTES + 2 * 8 + 2 * 8 + 8 + 8
    dropped: list[int] = []
    log = _log(local_store, max_bytes=int(4.5 * one_row), on_drop=dropped.append)

    def down(*args: object, **kwargs: object) -> None:
        raise StorageUnavailable("store down (test)")

    monkeypatch.setattr(local_store, "put", down)
    served = _served("v1", [0, 1])
    log.add(_result(served, 1), [datalog.new_prediction_ids(1, time.time())], time.time())
    assert log.flush() == 0 and not log.store_ok
    for i in range(9):
        log.add(_result(served, 1, seed=i), [datalog.new_prediction_ids(1, time.time())], 1.0)
        assert not log.backlogged()  # the store is down: requests do not wait for it
    assert log.pending_rows == 4 and log.dropped_rows == 6 and sum(dropped) == 6


def test_a_store_that_is_down_is_retried_once_per_flush_interval(
    local_store: Store, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    # Not at every request: each try builds the frame of what is buffered.
    log = _log(local_store, flush_rows=1, flush_seconds=0.2)
    tries: list[str] = []

    def down(key: str, *args: object, **kwargs: object) -> None:
        tries.append(key)
        raise StorageUnavailable("store down (test)")

    monkeypatch.setattr(local_store, "put", down)
    served = _served("v1", [0, 1])
    log.add(_result(served, 5), [datalog.new_prediction_ids(5, time.time())], time.time())
    assert log._due()  # full: 5 rows of flush_rows=1
    assert log.flush() == 0 and len(tries) == 1
    log.add(_result(served, 5), [datalog.new_prediction_ids(5, time.time())], time.time())
    assert not log._due()  # still full, but the store failed just now
    clock.now += 0.19
    assert not log._due()
    clock.now += 0.02
    assert log._due()


def test_the_newest_request_is_kept_even_past_the_memory_bound(local_store: Store) -> None:
    log = _log(local_store, max_bytes=1000)
    served = _served("v1", [0, 1])
    for _ in range(3):
        log.add(_result(served, 50), [datalog.new_prediction_ids(50, time.time())], time.time())
    assert log.pending_rows == 50 and log.dropped_rows == 100
    assert log.flush() == 50


@pytest.mark.parametrize("name", ["ts", "request_row", "proba_0", "PCA_1", "prediction_id"])
def test_a_version_whose_feature_has_a_log_column_name_is_not_served(name: str) -> None:
    # Training refuses such names; a version published before the check must not corrupt
    # the log (its feature would overwrite the log's column).
    model = SimpleNamespace(version="v9", features=["x", name], manifest={})
    with pytest.raises(ModelNotReady, match=f"feature '{name}' has the name of a column"):
        make_served(model)  # type: ignore[arg-type]


FAULTS = """
import io, resource, sys, threading
import numpy as np
from mlplatform_serving.process import keep_freed_memory

if sys.argv[1] == "kept":
    assert keep_freed_memory()

def write_objects():  # what the log writer does per object: a frame, then its bytes
    for _ in range(20):
        columns = np.ones((40, 50_000))
        buf = io.BytesIO()
        for column in columns:
            buf.write(column.tobytes())


def writer():  # one long-lived thread, as the log writer is; rounds 3 to 6 are counted
    for i in range(6):
        if i == 2:
            counted.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
        write_objects()
    counted.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)


counted = []
thread = threading.Thread(target=writer)
thread.start()
thread.join()
print(counted[1] - counted[0])
"""


def test_the_writer_reuses_freed_memory_instead_of_faulting_it_in_again() -> None:
    # glibc's defaults give blocks of over 128 kB back when freed: each object's frame and
    # buffer (16 MB here) were faulted in page by page again, a fifth of the writer's time.
    def faults(mode: str) -> int:
        run = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        return int(run.stdout)

    default, kept = faults("default"), faults("kept")
    assert default > 4_000  # the premise: every later round still faults its memory in
    assert kept * 10 < default


def test_a_buffer_bound_under_twice_the_flush_rows_wakes_the_writer_before_requests_wait(
    local_store: Store,
) -> None:
    # requests wait past half the bound (30 rows); the writer must not wait for 50
    log = _log(local_store, flush_rows=50, max_rows=60)
    served = _served("v1", [0, 1])
    log.add(_result(served, 20), [datalog.new_prediction_ids(20, time.time())], time.time())
    assert not log._due() and not log.backlogged()
    log.add(_result(served, 10), [datalog.new_prediction_ids(10, time.time())], time.time())
    assert log._due() and log._wake.is_set()  # 30 rows: half the bound, under flush_rows
    log.flush()
    assert not log.backlogged() and log._pending_rows == 0
