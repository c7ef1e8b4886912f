"""POST /admin/train on a real serving process over the real SeaweedFS, with the local
launcher: the retrainer run it starts trains on the stored data set as `mlplatform train
--dataset` does, publishes, promotes and rolls the new version out to this serving. Every
refusal is answered before anything is started, and moves nothing. The retrainer's own side,
`run` with MLPLATFORM_ACTION=train:NAME, through the real CLI."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from mlplatform_common import keys
from mlplatform_common.lock import StoreLock
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import Store
from tests.conftest import (
    REPO,
    SIGNING_KEY,
    S3Server,
    ServingProcess,
    publish_trained,
    run_cli,
    serving_env,
)
from tests.services.serving.conftest import assert_error

ADMIN = {"Authorization": "Bearer proc-admin"}
STARTED = "started retrainer pid"  # the local launcher's log line
PENGUINS = (REPO / "data" / "penguins.csv").read_bytes()


@pytest.fixture(scope="module")
def served(
    s3_server: S3Server, trained: Any, shipped_dataset: Any
) -> Iterator[tuple[ServingProcess, Store, dict[str, str]]]:
    """v1 (breast cancer) in production; served with the local launcher and rollout."""
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    store = s3_server.store(bucket)
    publish_trained(ModelRegistry(store, SIGNING_KEY), trained, shipped_dataset)
    env = serving_env(
        s3_server, bucket, MLPLATFORM_RETRAIN_LAUNCHER="local", MLPLATFORM_ROLLOUT="local"
    )
    proc = ServingProcess(env).start()
    yield proc, store, env
    proc.stop()


def production(serving: ServingProcess) -> dict[str, Any]:
    alias: dict[str, Any] = httpx.get(serving.url + "/models").json()["production"]
    return alias


def upload(serving: ServingProcess, name: str) -> None:
    r = httpx.post(
        serving.url + "/admin/datasets",
        params={"name": name, "target": "species"},
        content=PENGUINS,
        headers=ADMIN,
        timeout=30,
    )
    assert r.status_code == 201, r.text


def test_refusals_are_answered_before_anything_starts_and_move_nothing(served) -> None:  # type: ignore[no-untyped-def]
    proc, store, _ = served
    upload(proc, "penguins-refused")
    before = production(proc)
    versions = ModelRegistry(store, SIGNING_KEY).versions()
    url = proc.url + "/admin/train"
    body = {"dataset": "penguins-refused"}
    assert_error(httpx.post(url, json=body), 401)
    assert_error(httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}), 401)
    assert_error(httpx.post(url, json=body, headers={"Authorization": "Bearer proc-writer"}), 401)
    assert_error(
        httpx.post(url, json={"dataset": "wine"}, headers=ADMIN),
        404,
        "dataset 'wine' is not a data set of model mlplatform",
        "POST /admin/datasets",
    )
    for bad, field in (
        ({"dataset": "Wine"}, "dataset"),
        ({"dataset": "../penguins"}, "dataset"),
        ({"dataset": 3}, "dataset"),
        ({}, "dataset"),
        ({"dataset": "penguins-refused", "promote": False}, "promote"),
    ):
        assert_error(httpx.post(url, json=bad, headers=ADMIN), 422, field)
    assert_error(httpx.post(url, headers=ADMIN), 422, "body")
    assert_error(httpx.post(url, content=b"{", headers=ADMIN), 422)
    time.sleep(1)
    assert STARTED not in proc.output_so_far()
    assert production(proc) == before
    assert ModelRegistry(store, SIGNING_KEY).versions() == versions
    assert httpx.get(proc.url + "/health").json()["model_version"] == before["version"]


def test_train_publishes_a_version_on_the_data_set_and_serves_it(served) -> None:  # type: ignore[no-untyped-def]
    proc, store, _ = served
    upload(proc, "penguins")
    before = production(proc)
    r = httpx.post(proc.url + "/admin/train", json={"dataset": "penguins"}, headers=ADMIN)
    assert r.status_code == 202, r.text
    assert r.json() == {
        "action": "train:penguins",
        "started": True,
        "model": "mlplatform",
        "production": before["version"],
    }
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        alias = production(proc)
        health = httpx.get(proc.url + "/health").json()
        if alias["version"] != before["version"] and health["model_version"] == alias["version"]:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"no new version served: {production(proc)}\n{proc.output_so_far()}")
    manifest = ModelRegistry(store, SIGNING_KEY).manifest(alias["version"])
    assert manifest["training_data"]["dataset"] == "penguins"
    assert manifest["target"] == "species"
    assert alias["history"][-1] == before["version"]
    # it is served: a penguin is predicted as one of the species
    row = {
        "island": "Biscoe",
        "bill_length_mm": 47.5,
        "bill_depth_mm": 15.0,
        "flipper_length_mm": 218.0,
        "body_mass_g": 4950.0,
        "sex": "female",
        "year": 2009,
    }
    r = httpx.post(proc.url + "/predict", json={"features": row})
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == alias["version"]
    (answer,) = r.json()["predictions"]
    assert answer["label"] in ("Adelie", "Chinstrap", "Gentoo")


def test_the_retrainers_run_with_a_train_action_trains_and_a_bad_one_is_one_line(served) -> None:  # type: ignore[no-untyped-def]
    proc, store, env = served
    upload(proc, "penguins-cli")
    registry = ModelRegistry(store, SIGNING_KEY)
    before = registry.versions()
    here = {**env, "MLPLATFORM_ROLLOUT": "local", "MLPLATFORM_SERVING_URL": proc.url}
    done = run_cli(
        "mlplatform_retrainer", ["run"], {**here, "MLPLATFORM_ACTION": "train:penguins-cli"}
    )
    assert done.returncode == 0, done.stderr
    new = registry.production_version()
    assert new not in before and registry.versions() == [*before, new]
    assert registry.manifest(new)["training_data"]["dataset"] == "penguins-cli"
    assert f"now serves {new}" in done.stdout  # the command's local rollout
    assert httpx.get(proc.url + "/health").json()["model_version"] == new

    for action, message in (
        ("train:Penguins", "MLPLATFORM_ACTION='train:Penguins': use promote:vN"),
        ("train:", "MLPLATFORM_ACTION='train:'"),
        ("train:nothing-here", "dataset 'nothing-here' is not in the store"),
    ):
        bad = run_cli("mlplatform_retrainer", ["run"], {**env, "MLPLATFORM_ACTION": action})
        assert bad.returncode == 2, bad.stdout + bad.stderr
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], bad.stderr
    assert registry.versions() == [*before, new]
    assert registry.production_version() == new


def test_train_that_promotes_is_refused_while_the_retrain_lock_is_held(served) -> None:  # type: ignore[no-untyped-def]
    """The alias is read, then overwritten: a train promoting while a retrain or a move holds
    the lock would lose one promotion. Both ways to train refuse at once, moving nothing; one
    that does not promote publishes."""
    proc, store, env = served
    upload(proc, "penguins-locked")
    registry = ModelRegistry(store, SIGNING_KEY)
    before, alias = registry.versions(), registry.production()
    with StoreLock(store, keys.RETRAIN_LOCK, 600, owner="a-running-retrain"):
        for args, extra in (
            (["train", "--dataset", "penguins-locked"], {}),
            (["run"], {"MLPLATFORM_ACTION": "train:penguins-locked"}),
        ):
            refused = run_cli("mlplatform_retrainer", args, {**env, **extra})
            assert refused.returncode == 1, refused.stdout + refused.stderr
            lines = refused.stderr.strip().splitlines()
            assert len(lines) == 1, refused.stderr
            assert "not trained, a retrain or a move of production is running" in lines[0]
            assert "held by a-running-retrain" in lines[0]
        assert registry.versions() == before and registry.production() == alias
        done = run_cli(
            "mlplatform_retrainer", ["train", "--dataset", "penguins-locked", "--no-promote"], env
        )
        assert done.returncode == 0, done.stderr
    assert len(registry.versions()) == len(before) + 1
    assert registry.production() == alias


def test_without_a_launcher_it_is_503_and_nothing_moves(
    s3_server: S3Server, trained: Any, shipped_dataset: Any
) -> None:
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    store = s3_server.store(bucket)
    registry = ModelRegistry(store, SIGNING_KEY)
    publish_trained(registry, trained, shipped_dataset)
    env = serving_env(s3_server, bucket, MLPLATFORM_RETRAIN_LAUNCHER="none")
    proc = ServingProcess(env).start()
    try:
        upload(proc, "penguins")
        before = production(proc)
        r = httpx.post(proc.url + "/admin/train", json={"dataset": "penguins"}, headers=ADMIN)
        assert_error(r, 503, "no retrain launcher", "train:penguins", "RETRAIN_LAUNCHER=none")
        time.sleep(1)
        assert production(proc) == before and registry.versions() == ["v1"]
    finally:
        proc.stop()


def test_the_document_shows_the_body_and_the_answers(served) -> None:  # type: ignore[no-untyped-def]
    proc = served[0]
    doc = httpx.get(proc.url + "/openapi.json").json()
    train = doc["paths"]["/admin/train"]["post"]
    body = train["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/TrainRequest"}
    assert set(doc["components"]["schemas"]["TrainRequest"]["properties"]) == {"dataset"}
    assert {"202", "401", "404", "422", "503"} <= set(train["responses"])
    answer = train["responses"]["202"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/ActionResponse"}
