"""The prediction hot path: requests batched across one event-loop turn, and the prediction
routes answered ahead of FastAPI's router (``hotpath.HotRoutes``)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from mlplatform_common import datalog
from mlplatform_common.errors import InvalidInput
from mlplatform_common.storage import Store
from mlplatform_serving.app import create_app
from mlplatform_serving.hotpath import HotRoutes
from mlplatform_serving.service import BATCH_MAX_ROWS, Service
from tests.services.serving.conftest import serving_settings


async def _with_service(store: Store, body: Any) -> Any:
    app = create_app(serving_settings(log_flush_seconds=3600), store)
    async with app.router.lifespan_context(app):
        return await body(app.state.service)


def _matrix(service: Service, rows: list[dict[str, float]]) -> np.ndarray:
    return service.runtime.validate_rows(rows)


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
        answers = await asyncio.gather(*(service.predict_batched(X) for X in requests))
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
        await asyncio.gather(service.predict_batched(big), service.predict_batched(requests[0]))
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
            service.predict_batched(good),
            service.predict_batched(huge),
            service.predict_batched(good[:1]),
            return_exceptions=True,
        )
        assert isinstance(answers[1], InvalidInput) and answers[1].message.startswith("row 1:")
        for X, answer in ((good, answers[0]), (good[:1], answers[2])):
            assert not isinstance(answer, BaseException)
            np.testing.assert_array_equal(answer[0].X, X)
        assert service.log.flush() == 3  # the refused request logged nothing

    asyncio.run(_with_service(model_store, body))


def _anonymous(text: str) -> str:
    return re.sub(r'"[0-9a-f]{32}"', '"<id>"', text)


def test_the_hot_routes_answer_exactly_as_the_fastapi_routes(
    model_store: Store, rows: list[dict[str, float]]
) -> None:
    features = list(rows[0])
    csv = ",".join(features) + "\n" + ",".join(str(rows[0][f]) for f in features) + "\n"
    binary = np.array([[rows[0][f] for f in features]], dtype="<f8").tobytes()
    head = (
        b'{"inputs": [{"name": "x", "shape": [1, %d], "datatype": "FP64", '
        b'"parameters": {"binary_data_size": %d}}]}' % (len(features), len(binary))
    )
    v2_json = {"inputs": [{"name": "x", "shape": [1, 30], "datatype": "FP64", "data": [0.0] * 30}]}
    requests: list[tuple[str, dict[str, Any]]] = [
        ("/predict", {"json": {"features": rows[0]}}),
        ("/predict", {"json": {"instances": rows[:20]}}),
        ("/predict", {"content": csv, "headers": {"content-type": "text/csv"}}),
        ("/v2/models/mlplatform/infer", {"json": v2_json}),
        (
            "/v2/models/mlplatform/infer",
            {
                "content": head + binary,
                "headers": {
                    "content-type": "application/octet-stream",
                    "inference-header-content-length": str(len(head)),
                },
            },
        ),
        # errors
        ("/predict", {"content": b""}),
        ("/predict", {"content": b"{not json"}),
        ("/predict", {"json": {"features": {**rows[0], "mean_radius": True}}}),
        ("/predict", {"json": {"instances": []}}),
        ("/predict", {"content": b"a,b", "headers": {"content-type": "text/plain"}}),
        ("/predict", {"content": b"x" * 100, "headers": {"content-type": "text/csv"}}),
        ("/v2/models/other/infer", {"json": v2_json}),
        ("/v2/models/mlplatform/infer", {"json": {"inputs": []}}),
    ]

    def answers(hot: bool) -> list[tuple[int, str]]:
        app = create_app(serving_settings(), model_store)
        if not hot:
            app.user_middleware = [m for m in app.user_middleware if m.cls is not HotRoutes]
        with TestClient(app) as c:
            return [
                (r.status_code, _anonymous(r.text)) for r in (c.post(p, **kw) for p, kw in requests)
            ]

    hot, routed = answers(True), answers(False)
    assert [s for s, _ in hot] == [200] * 5 + [422] * 6 + [404, 422]
    assert hot == routed


def test_the_hot_routes_need_no_router_and_keep_the_metrics_route_label(
    model_store: Store, rows: list[dict[str, float]]
) -> None:
    settings = serving_settings(root_path="/api")
    counted = re.compile(
        r'http_requests_total\{method="POST",route="/predict",status="200"\} (\S+)'
    )

    def predictions_counted(c: TestClient) -> float:
        found = counted.search(c.get("/metrics").text)
        return float(found.group(1)) if found else 0.0

    with TestClient(create_app(settings, model_store)) as c:
        before = predictions_counted(c)
        for path in ("/predict", "/api/predict"):
            assert c.post(path, json={"features": rows[0]}).status_code == 200
        assert predictions_counted(c) == before + 2  # the FastAPI route's template
        c.app.router.routes.clear()  # nothing left for FastAPI to route to
        assert c.get("/model").status_code == 404
        r = c.post(
            "/v2/models/mlplatform/infer",
            json={
                "inputs": [{"name": "x", "shape": [1, 30], "datatype": "FP64", "data": [0.0] * 30}]
            },
        )
        assert r.status_code == 200 and r.json()["model_name"] == "mlplatform"
        assert c.post("/predict", json={"features": rows[0]}).status_code == 200
