"""The data plane (``dataplane``): limits, back-pressure, micro-batching across one
event-loop turn, the model call (and its backup), ids, the log and the metrics."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from mlplatform_common import datalog
from mlplatform_common.errors import InvalidInput, StorageUnavailable
from mlplatform_common.storage import Store
from mlplatform_serving.app import create_app
from mlplatform_serving.codecs.json_rows import RowsCodec
from mlplatform_serving.dataplane import BATCH_MAX_ROWS, check_batch
from mlplatform_serving.service import Service
from tests.services.serving.conftest import serving_settings


async def _with_service(store: Store, body: Any) -> Any:
    app = create_app(serving_settings(log_flush_seconds=3600), store)
    async with app.router.lifespan_context(app):
        return await body(app.state.service)


def _matrix(service: Service, rows: list[dict[str, float]]) -> np.ndarray:
    return RowsCodec.of(service.runtime.served).validate(rows)


def test_requests_of_one_loop_turn_share_one_model_call_and_keep_their_own_answers(
    model_store: Store, rows: list[dict[str, float]]
) -> None:
    sizes = [1, 3, 1, 5, BATCH_MAX_ROWS]

    async def body(service: Service) -> None:
        requests, start = [], 0
        for n in sizes:
            requests.append(_matrix(service, rows[start : start + n]))
            start += n
        alone = [service.runtime.predict(X) for X in requests]
        calls: list[int] = []
        real_predict = service.runtime.predict

        def predict(X: np.ndarray) -> Any:
            calls.append(len(X))
            return real_predict(X)

        service.runtime.predict = predict  # type: ignore[method-assign]
        answers = await asyncio.gather(*(service.plane.predict_batched(X) for X in requests))
        assert calls == [sum(sizes)]  # one model call for the five requests
        for X, own, (result, ids) in zip(requests, alone, answers, strict=True):
            np.testing.assert_array_equal(result.X, X)
            np.testing.assert_allclose(result.proba, own.proba, rtol=0, atol=1e-12)
            np.testing.assert_array_equal(result.label_index, own.label_index)
            np.testing.assert_array_equal(result.top, own.proba.max(axis=1))
            assert len(ids) == len(X) == len(set(ids))
        # Each request has ids of its own (another request's cannot be guessed from them),
        # and each id finds its own row among the recent predictions.
        parts = [datalog.prediction_batch(ids[0])[0] for _, ids in answers]  # type: ignore[index]
        assert len(set(parts)) == len(sizes)
        for X, (_, ids) in zip(requests, answers, strict=True):
            for i, pid in enumerate(ids):
                row = service.log.lookup(pid)
                assert row is not None and row["prediction_id"] == pid
                assert [row[f] for f in service.runtime.served.features] == X[i].tolist()
        # A bigger request is predicted on its own, at once.
        big = np.repeat(requests[0], BATCH_MAX_ROWS + 1, axis=0)
        await asyncio.gather(
            service.plane.predict_batched(big), service.plane.predict_batched(requests[0])
        )
        assert calls[1:] == [BATCH_MAX_ROWS + 1, 1]
        # The log holds every row once.
        assert service.log.flush() == sum(sizes) + BATCH_MAX_ROWS + 2
        logged = datalog.read_predictions(service.store)["prediction_id"].tolist()
        expected = [pid for _, ids in answers for pid in ids]
        assert set(expected) <= set(logged)
        assert len(logged) == len(set(logged)) == sum(sizes) + BATCH_MAX_ROWS + 2

    asyncio.run(_with_service(model_store, body))


def test_a_request_the_model_refuses_fails_alone(
    model_store: Store, rows: list[dict[str, float]]
) -> None:
    async def body(service: Service) -> None:
        good = _matrix(service, rows[:2])
        huge = np.full((2, len(service.runtime.served.features)), 1e308)
        huge[0] = good[0]
        with pytest.raises(InvalidInput, match="row 1: values too large"):
            service.runtime.predict(huge)  # the premise: the model refuses row 1
        answers = await asyncio.gather(
            service.plane.predict_batched(good),
            service.plane.predict_batched(huge),
            service.plane.predict_batched(good[:1]),
            return_exceptions=True,
        )
        assert isinstance(answers[1], InvalidInput) and answers[1].message.startswith("row 1:")
        for X, answer in ((good, answers[0]), (good[:1], answers[2])):
            assert not isinstance(answer, BaseException)
            np.testing.assert_array_equal(answer[0].X, X)
        assert service.log.flush() == 3  # the refused request logged nothing

    asyncio.run(_with_service(model_store, body))


class Broken:
    """A primary engine that raises: the backup answers."""

    name = "onnxruntime"

    def run(self, X):  # type: ignore[no-untyped-def]
        raise RuntimeError("primary is broken")


def test_backup_answers_when_the_primary_raises(client: TestClient, rows, trained) -> None:
    runtime = client.app.state.service.runtime  # type: ignore[attr-defined]

    runtime.served.engine = Broken()
    body = client.post("/predict", json={"instances": rows[:3]}).json()
    assert body["backup"] is True
    assert all(p["backup"] for p in body["predictions"])
    assert [p["label"] for p in body["predictions"]] == trained.backup.predict(
        pd.DataFrame(rows[:3])
    ).tolist()
    assert "mlplatform_backup_predictions_total" in client.get("/metrics").text


def test_requests_wait_for_a_writer_that_is_behind_but_not_for_a_store_that_is_down(
    model_store: Store, rows, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Backpressure instead of dropping rows when the writer (not the store) is behind.
    settings = serving_settings(log_flush_seconds=3600, log_buffer_max_rows=40)
    with TestClient(create_app(settings, model_store)) as c:
        log = c.app.state.service.log
        waits: list[tuple[float, bool]] = []  # (seconds, whether it reached the bound)
        log.on_wait = lambda seconds, limit: waits.append((seconds, limit))
        log._flush_lock.acquire()  # the writer is busy with an earlier object: behind
        c.post("/predict", json={"instances": rows[:30]})
        assert log.backlogged()  # 30 of 40 waiting, the store fine
        flusher = threading.Timer(0.3, log._flush_lock.release)  # the writer then takes them
        flusher.start()
        r = c.post("/predict", json={"instances": rows[:5]})
        flusher.join()
        assert r.status_code == 200
        # held until the writer caught up, not until the bound
        assert len(waits) == 1 and waits[0][0] > 0 and not waits[0][1], waits
        assert log.dropped_rows == 0 and log.pending_rows == 5

        def down(*args: object, **kwargs: object) -> None:
            raise StorageUnavailable("store down (test)")

        monkeypatch.setattr(model_store, "put", down)
        c.post("/predict", json={"instances": rows[:30]})
        assert log.flush() == 0 and not log.store_ok  # rows kept, and no waiting for them
        assert not log.backlogged()
        assert c.post("/predict", json={"instances": rows[:5]}).status_code == 200
        assert len(waits) == 1, waits  # not held: a store that is down does not catch up


@pytest.mark.parametrize(
    ("n", "message"),
    [
        (0, "csv: empty batch; send at least one row"),
        (11, "csv: 11 rows is over the limit of 10 per request"),
    ],
)
def test_the_batch_limits_name_where_the_rows_came_from(n: int, message: str) -> None:
    check_batch(1, "csv", 10)
    check_batch(10, "csv", 10)
    with pytest.raises(InvalidInput) as refused:
        check_batch(n, "csv", 10)
    assert refused.value.message == message
