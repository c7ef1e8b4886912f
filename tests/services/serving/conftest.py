"""Serving fixtures: a store with a published model and a TestClient over the real app."""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import Store
from mlplatform_serving.app import create_app
from mlplatform_serving.settings import ServingSettings
from tests.conftest import DATA, SIGNING_KEY, publish_trained

ADMIN = {"Authorization": "Bearer test-admin-token"}
WRITER = {"Authorization": "Bearer test-writer-token"}


def assert_error(response, status: int, *fragments: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "type"}, body
    for fragment in fragments:
        assert fragment in body["error"], body
    assert "Traceback" not in response.text


def serving_settings(**kw: object) -> ServingSettings:
    defaults: dict[str, object] = {
        "signing_key": SIGNING_KEY.decode(),
        "admin_token": "test-admin-token",
        "writer_token": "test-writer-token",
        "log_flush_seconds": 0.2,
        "load_retry_seconds": 0.2,
    }
    return ServingSettings(**{**defaults, **kw})  # type: ignore[arg-type]


@pytest.fixture
def model_store(local_store: Store, trained, shipped_dataset) -> Store:
    publish_trained(ModelRegistry(local_store, SIGNING_KEY), trained, shipped_dataset)
    return local_store


@pytest.fixture
def client(model_store: Store) -> Iterator[TestClient]:
    with TestClient(create_app(serving_settings(), model_store)) as c:
        yield c


@pytest.fixture(scope="session")
def rows() -> list[dict[str, float]]:
    frame = pd.read_csv(DATA).drop(columns="target")
    return frame.to_dict(orient="records")  # type: ignore[return-value]
