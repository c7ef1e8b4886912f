"""What the chart assumes about serving holds: the /api root path, and the `helm test` script."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import Store
from mlplatform_serving.app import create_app
from tests.chart.conftest import env_value, ingress_backend, one, rendered_variant
from tests.conftest import SIGNING_KEY, ServingProcess, publish_trained
from tests.services.serving.conftest import serving_settings


@pytest.fixture
def model_store(local_store: Store, trained, shipped_dataset) -> Store:  # type: ignore[no-untyped-def]
    publish_trained(ModelRegistry(local_store, SIGNING_KEY), trained, shipped_dataset)
    return local_store


@pytest.fixture
def api_client(model_store: Store) -> Iterator[TestClient]:
    serving = one(rendered_variant("defaults"), "Deployment", "mlplatform-serving")
    (c,) = serving["spec"]["template"]["spec"]["containers"]
    root_path = env_value(c, "MLPLATFORM_ROOT_PATH")
    assert root_path == "/api"
    with TestClient(create_app(serving_settings(root_path=root_path), model_store)) as client:
        yield client


def test_the_ingress_prefix_reaches_the_api(api_client: TestClient) -> None:
    # the ingress forwards /api/... unchanged; probes and Prometheus use the bare paths
    for path in ("/api/ready", "/ready", "/api/health", "/health"):
        r = api_client.get(path)
        assert r.status_code == 200, (path, r.text)
    assert (
        api_client.get("/api/ready").json().items()
        >= {"ready": True, "model_version": "v1"}.items()
    )
    assert "mlplatform_http_requests_total" in api_client.get("/metrics").text
    # the docs page loads its schema through the prefix
    assert api_client.get("/api/docs").status_code == 200
    assert "/api/openapi.json" in api_client.get("/api/docs").text
    assert api_client.get("/api/openapi.json").json()["servers"] == [{"url": "/api"}]


def app_paths(routes: Any, prefix: str = "") -> Iterator[str]:
    """Every path the app routes, through included routers."""
    for route in routes:
        if hasattr(route, "original_router"):  # FastAPI's included router
            yield from app_paths(
                route.original_router.routes, prefix + route.include_context.prefix
            )
        else:
            yield prefix + route.path


# Serving's public surface: predictions, feedback, health, docs; the V2 protocol is all public.
PUBLIC = {"/predict", "/feedback", "/health", "/ready", "/docs", "/openapi.json"}
# Kept in the cluster (the web app and Prometheus use the Service); a new route must be put in
# one set or the other, and the ingress follow.
INSIDE = {
    "/metrics",
    "/metrics/model",
    "/metrics/system",
    "/metrics/kpis",
    "/metrics/feature-distribution",
    "/model",
    "/models",
    "/models/names",  # other releases' models sharing the store: not for the internet
    "/reports",
    "/reports/{report_id}",
    "/reports/{report_id}/summary",
    "/retrain-runs",
    "/admin/reload",
    "/admin/retrain",
    "/admin/promote",
    "/admin/rollback",
    "/admin/unpin",
    "/admin/train",
    "/admin/datasets",  # like every /admin route: through the web app or a port-forward
    "/admin/models",
    "/admin/models/uploads/{upload_id}",
    "/docs/oauth2-redirect",
    "/redoc",
}


def test_the_ingress_publishes_exactly_the_public_routes(local_store: Store) -> None:
    app = create_app(serving_settings(root_path="/api"), local_store)
    routes = set(app_paths(app.routes))
    v2 = {r for r in routes if r == "/v2" or r.startswith("/v2/")}
    assert v2 >= {"/v2/health/live", "/v2/health/ready", "/v2/models/{name}/infer"}
    assert routes == PUBLIC | INSIDE | v2, "a route to publish or keep inside"
    ing = one(rendered_variant("defaults"), "Ingress", "mlplatform")
    to_serving = [
        p
        for p in ing["spec"]["rules"][0]["http"]["paths"]
        if p["backend"]["service"]["name"] == "mlplatform-serving"
    ]
    # every path sent to serving is one of its routes (a renamed route fails here)
    for p in to_serving:
        rest = p["path"].removeprefix("/api")
        if p["pathType"] == "Exact":
            assert rest in routes, p
        else:
            assert rest in routes and any(r.startswith(rest + "/") for r in routes), p
    # and every route reaches serving through the ingress exactly when it is public
    for route in routes:
        path = "/api" + re.sub(r"\{[^}]+\}", "x", route)
        public = route in PUBLIC or route in v2
        assert (ingress_backend(ing, path) == "mlplatform-serving") is public, route


def test_the_helm_test_pod_script_passes_against_real_serving(model_store: Store) -> None:
    pod = one(rendered_variant("defaults"), "Pod", "mlplatform-test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (c,) = pod["spec"]["containers"]
    assert env_value(c, "API") == "http://mlplatform-serving:8080"
    python, flag, script = c["command"]
    assert (python, flag) == ("python", "-c")
    serving = ServingProcess(
        {
            "MLPLATFORM_STORE_URL": model_store.url,
            "MLPLATFORM_SIGNING_KEY": SIGNING_KEY.decode(),
            "MLPLATFORM_WRITER_TOKEN": "helm-test-writer",
            "MLPLATFORM_RETRAIN_EVERY": "0",
        }
    ).start()
    try:
        # the pod's model name is serving's (a release's test never passes on another's model)
        assert env_value(c, "MODEL_NAME") == "mlplatform"
        env = {**os.environ, "API": serving.url, "MODEL_NAME": "mlplatform"}
        ok = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
        )
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "ready:" in ok.stdout and "prediction:" in ok.stdout
        assert "feedback without the writer token: 401" in ok.stdout
        other = subprocess.run(
            [sys.executable, "-c", script],
            env={**env, "MODEL_NAME": "fraud"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert other.returncode != 0 and "'model_name': 'mlplatform'" in other.stderr
    finally:
        serving.stop()
    assert model_store.list_keys("production/feedback/") == []
    # and it fails when serving is not there
    down = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "API": serving.url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode != 0
