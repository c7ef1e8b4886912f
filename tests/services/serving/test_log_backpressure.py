"""The prediction log's back-pressure is bounded and measured (issue 25, item 3): with a store
whose writes are slow, requests wait for room at most ``log_wait_max_seconds``, each wait is
observed, and past the bound the request is answered."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from mlplatform_common import datalog, keys
from mlplatform_common.storage import LocalStore, Store
from mlplatform_serving.app import create_app
from mlplatform_serving.predlog import PredictionLog
from tests.services.serving.conftest import serving_settings
from tests.services.serving.test_predlog import _result, _served


class SlowLogStore(LocalStore):
    """A local store whose prediction log writes take ``delay`` seconds (a store that is slow,
    not down: every write succeeds)."""

    def __init__(self, root: Any, delay: float) -> None:
        super().__init__(root)
        self.delay = delay
        self.writing = threading.Event()

    def put(self, key, data, content_type="application/octet-stream"):  # type: ignore[no-untyped-def]
        if key.startswith(keys.PREDICTIONS):
            self.writing.set()
            time.sleep(self.delay)
        return super().put(key, data, content_type)


def test_a_request_waits_for_a_slow_store_at_most_the_bound_and_the_wait_is_counted(
    tmp_path: Any,
) -> None:
    store = SlowLogStore(tmp_path / "store", delay=1.5)
    store.ensure()
    waits: list[tuple[float, bool]] = []
    dropped: list[int] = []
    log = PredictionLog(
        store,
        flush_rows=20,
        flush_seconds=3600.0,
        write_max_rows=10,
        max_rows=40,
        cache_rows=100,
        max_wait=0.2,
        on_wait=lambda s, limit: waits.append((s, limit)),
        on_drop=dropped.append,
    )
    v1 = _served("v1", [0, 1])
    log.start()
    try:
        for i in range(4):  # 40 rows: the writer takes 10 and is held by the store
            log.add(_result(v1, 10, seed=i), [datalog.new_prediction_ids(10, 1000.0 + i)], 1000.0)
        assert store.writing.wait(10)
        assert log.backlogged() and log.store_ok
        waited = asyncio.run(log.make_room())
        assert waits == [(waited, True)]  # the whole bound, then on
        assert 0.2 <= waited < 0.2 + 1.0  # not until the store's write ends (1.5 s)
        log.add(_result(v1, 20, seed=9), [datalog.new_prediction_ids(20, 1009.0)], 1009.0)
        assert dropped == [10] and log.dropped_rows == 10  # past the bound: counted
    finally:
        log.stop()
    assert log.written_rows == 50  # what stayed buffered was written, the newest kept


def _metric(text: str, name: str) -> float:
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_requests_to_a_serving_whose_store_is_slow_are_answered_within_the_bound(
    model_store: Store, rows: list[dict[str, float]]
) -> None:
    slow = SlowLogStore(model_store.root, delay=2.0)  # type: ignore[attr-defined]
    settings = serving_settings(
        log_flush_seconds=3600,
        log_flush_rows=20,
        log_write_max_rows=10,
        log_buffer_max_rows=40,
        log_wait_max_seconds=0.3,
    )
    with TestClient(create_app(settings, slow)) as c:
        log = c.app.state.service.log  # type: ignore[attr-defined]
        before = c.get("/metrics").text
        for start in range(0, 40, 8):  # 40 rows in five requests: the writer takes 8, held
            assert (
                c.post("/predict", json={"instances": rows[start : start + 8]}).status_code == 200
            )
        assert slow.writing.wait(10) and log.backlogged()
        took = []
        for start in range(0, 16, 8):
            started = time.monotonic()
            r = c.post("/predict", json={"instances": rows[start : start + 8]})
            took.append(time.monotonic() - started)
            assert r.status_code == 200 and len(r.json()["predictions"]) == 8
        after = c.get("/metrics").text
    # Each waited the bound, not the store's 2 s write, plus its own processing.
    assert all(0.3 <= t < 0.3 + 1.5 for t in took), took
    count = "mlplatform_prediction_log_wait_seconds_count"
    limit = "mlplatform_prediction_log_wait_limit_reached_total"
    assert _metric(after, count) - _metric(before, count) >= 2
    assert _metric(after, limit) - _metric(before, limit) >= 2
    assert 'mlplatform_prediction_log_wait_seconds_bucket{le="0.25"}' in after
    assert np.isfinite(_metric(after, "mlplatform_prediction_log_wait_seconds_sum"))
