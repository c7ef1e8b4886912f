"""POST /admin/promote and /admin/rollback on a real serving process over the real SeaweedFS,
with the local launcher: the retrainer run it starts moves the production alias (under the
retrain lock) and rolls it out to this serving. Every refusal is answered before anything is
started, and moves nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import Store
from tests.conftest import SIGNING_KEY, S3Server, ServingProcess, publish_trained, serving_env
from tests.services.serving.conftest import assert_error

ADMIN = {"Authorization": "Bearer proc-admin"}
STARTED = "started retrainer pid"  # the local launcher's log line


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server, trained: Any, shipped_dataset: Any) -> tuple[str, Store]:
    """v1 in production (no previous version), v2 and v3 published as candidates."""
    store = s3_server.store()
    registry = ModelRegistry(store, SIGNING_KEY)
    publish_trained(registry, trained, shipped_dataset)
    publish_trained(registry, trained, shipped_dataset, promote=False)
    publish_trained(registry, trained, shipped_dataset, promote=False)
    return store.bucket, store


@pytest.fixture(scope="module")
def serving(s3_server: S3Server, bucket: tuple[str, Store]) -> Iterator[ServingProcess]:
    env = serving_env(
        s3_server, bucket[0], MLPLATFORM_RETRAIN_LAUNCHER="local", MLPLATFORM_ROLLOUT="local"
    )
    proc = ServingProcess(env).start()
    yield proc
    proc.stop()


def production(serving: ServingProcess) -> dict[str, Any]:
    alias: dict[str, Any] = httpx.get(serving.url + "/models").json()["production"]
    return alias


def served_once(
    serving: ServingProcess, version: str, since: str, timeout: float = 90
) -> dict[str, Any]:
    """The alias once it has moved (``updated_at`` after ``since``) and serving serves
    ``version``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alias = production(serving)
        health = httpx.get(serving.url + "/health").json()
        if alias["updated_at"] != since and health["model_version"] == version:
            return alias
        time.sleep(0.3)
    raise AssertionError(
        f"production did not become {version}: {production(serving)}\n{serving.output_so_far()}"
    )


def test_refusals_are_answered_before_anything_starts_and_move_nothing(
    serving: ServingProcess,
) -> None:
    before = production(serving)
    assert before["version"] == "v1" and before["history"] == []
    url = serving.url + "/admin"
    assert_error(httpx.post(url + "/promote", json={"version": "v2"}), 401)
    wrong = {"Authorization": "Bearer wrong"}
    assert_error(httpx.post(url + "/promote", json={"version": "v2"}, headers=wrong), 401)
    assert_error(httpx.post(url + "/rollback", headers=wrong), 401)
    assert_error(
        httpx.post(url + "/promote", json={"version": "v9"}, headers=ADMIN),
        404,
        "v9 does not exist",
    )
    for body, field in (
        ({"version": "v2", "pin": "yes"}, "pin"),
        ({"version": "2"}, "version"),
        ({"pin": True}, "version"),
        ({"version": "v2", "force": True}, "force"),
    ):
        assert_error(httpx.post(url + "/promote", json=body, headers=ADMIN), 422, field)
    assert_error(httpx.post(url + "/promote", headers=ADMIN), 422, "body")
    assert_error(httpx.post(url + "/rollback", headers=ADMIN), 409, "v1 has no previous version")
    time.sleep(1)
    assert STARTED not in serving.output_so_far()
    assert production(serving) == before
    assert httpx.get(serving.url + "/health").json()["model_version"] == "v1"


def test_promote_pins_and_rollback_goes_back_and_holds(serving: ServingProcess) -> None:
    before = production(serving)
    r = httpx.post(
        serving.url + "/admin/promote", json={"version": "v2", "pin": True}, headers=ADMIN
    )
    assert r.status_code == 202, r.text
    assert r.json() == {
        "action": "pin:v2",
        "started": True,
        "model": "mlplatform",
        "production": "v1",
    }
    pinned = served_once(serving, "v2", before["updated_at"])
    assert STARTED in serving.output_so_far()  # what the refusals are checked against
    assert pinned["version"] == "v2" and pinned["history"] == ["v1"]
    assert pinned["hold"]["reason"] == "pinned to v2 by hand"

    r = httpx.post(serving.url + "/admin/rollback", headers=ADMIN)
    assert r.status_code == 202, r.text
    assert r.json() == {
        "action": "rollback",
        "started": True,
        "model": "mlplatform",
        "production": "v2",
    }
    back = served_once(serving, "v1", pinned["updated_at"])
    assert back["version"] == "v1" and back["history"] == []
    assert back["hold"]["reason"] == "rolled back from v2"

    # a promotion without pin lifts the hold, as `mlplatform promote` does
    r = httpx.post(serving.url + "/admin/promote", json={"version": "v3"}, headers=ADMIN)
    assert r.status_code == 202 and r.json()["action"] == "promote:v3"
    promoted = served_once(serving, "v3", back["updated_at"])
    assert promoted["history"] == ["v1"] and "hold" not in promoted
    assert httpx.get(serving.url + "/ready").json()["model_version"] == "v3"


def test_without_a_launcher_it_is_503_and_nothing_moves(
    s3_server: S3Server, trained: Any, shipped_dataset: Any
) -> None:
    store = s3_server.store()
    registry = ModelRegistry(store, SIGNING_KEY)
    publish_trained(registry, trained, shipped_dataset)
    publish_trained(registry, trained, shipped_dataset)  # v2 in production, v1 before it
    publish_trained(registry, trained, shipped_dataset, promote=False)
    env = serving_env(s3_server, store.bucket, MLPLATFORM_RETRAIN_LAUNCHER="none")
    proc = ServingProcess(env).start()
    try:
        before = production(proc)
        assert before["version"] == "v2" and before["history"] == ["v1"]
        r = httpx.post(proc.url + "/admin/promote", json={"version": "v3"}, headers=ADMIN)
        assert_error(r, 503, "no retrain launcher", "MLPLATFORM_RETRAIN_LAUNCHER=none")
        assert_error(httpx.post(proc.url + "/admin/rollback", headers=ADMIN), 503, "rollback")
        time.sleep(1)
        assert production(proc) == before
    finally:
        proc.stop()


def test_the_document_shows_the_body_and_the_answers(serving: ServingProcess) -> None:
    doc = httpx.get(serving.url + "/openapi.json").json()
    promote = doc["paths"]["/admin/promote"]["post"]
    body = promote["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/PromoteRequest"}
    assert set(doc["components"]["schemas"]["PromoteRequest"]["properties"]) == {"version", "pin"}
    assert {"202", "401", "404", "422", "503"} <= set(promote["responses"])
    rollback = doc["paths"]["/admin/rollback"]["post"]
    assert {"202", "401", "409", "503"} <= set(rollback["responses"])
    answer = rollback["responses"]["202"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/ActionResponse"}
