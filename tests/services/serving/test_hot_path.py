"""The prediction routes answered ahead of FastAPI's router (``hotpath.HotRoutes``); the
batching across one event-loop turn is the data plane's (test_dataplane)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from mlplatform_common.storage import Store
from mlplatform_serving.app import create_app
from mlplatform_serving.hotpath import HotRoutes
from tests.services.serving.conftest import serving_settings


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
    assert [s for s, _ in hot] == [200] * 5 + [422] * 4 + [415, 422, 404, 422]
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
