"""The Model page's Promote and Roll back with AppTest against a real serving process whose
local launcher runs the real retrainer: with the admin token they change production (and the
page says to what); without it they say a token is needed; serving's refusals are its message."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import LocalStore
from tests.conftest import SIGNING_KEY, ServingProcess, publish_trained, wait_count
from tests.services.webapp.conftest import ADMIN_TOKEN, page, served_version, serving_env, texts


@pytest.fixture
def candidate_serving(
    tmp_path: Path, trained: Any, shipped_dataset: Any
) -> Iterator[ServingProcess]:
    """v1 in production and v2 published beside it, served with the local launcher."""
    store = LocalStore(tmp_path / "store")
    store.ensure()
    registry = ModelRegistry(store, SIGNING_KEY)
    publish_trained(registry, trained, shipped_dataset)
    publish_trained(registry, trained, shipped_dataset, promote=False)
    env = serving_env(store.root, MLPLATFORM_RETRAIN_LAUNCHER="local", MLPLATFORM_ROLLOUT="local")
    proc = ServingProcess(env).start()
    yield proc
    proc.stop()


def production(serving: ServingProcess) -> dict[str, Any]:
    alias: dict[str, Any] = httpx.get(serving.url + "/models").json()["production"]
    return alias


def test_promote_and_roll_back_change_production_with_the_token(
    candidate_serving: ServingProcess, webapp_env: pytest.MonkeyPatch
) -> None:
    serving = candidate_serving
    before = production(serving)
    at = page("model", serving.url, webapp_env).run()
    assert not at.exception and not at.error
    assert at.selectbox(key="model_promote_version").value == "v2"  # the candidate by default

    # the app holds no admin token here: the buttons say one is needed and move nothing
    at.button(key="model_promote").click().run()
    assert [e.value for e in at.error] == ["Enter the admin token to promote or roll back."]
    at.button(key="model_rollback").click().run()
    assert [e.value for e in at.error] == ["Enter the admin token to promote or roll back."]
    at.text_input(key="model_token").input("wrong").run()
    at.button(key="model_promote").click().run()
    assert len(at.error) == 1 and at.error[0].value.startswith("Refused: ")
    assert "admin token" in at.error[0].value
    assert production(serving) == before

    at.text_input(key="model_token").input(ADMIN_TOKEN).run()
    at.checkbox(key="model_promote_pin").check().run()
    at.button(key="model_promote").click().run(timeout=90)
    assert not at.exception and not at.error, texts(at)
    shown = texts(at)
    assert "Started pin:v2 for mlplatform (production was v1)" in shown
    assert "Production is now v2, held: pinned to v2 by hand." in shown
    assert production(serving)["version"] == "v2"
    assert [m.value for m in at.metric if m.label == "In production"] == ["v2"]
    # the pin run holds the retrain lock until serving has reloaded v2: a rollback started
    # before it exits would be refused by the lock
    assert served_version(serving.url, "v2") == "v2"
    wait_count(
        "retrainer runs exited",
        lambda: serving.output_so_far().count("exited with status"),
        1,
        timeout=60,
    )

    at.button(key="model_rollback").click().run(timeout=90)
    assert not at.exception and not at.error, texts(at)
    shown = texts(at)
    assert "Started rollback for mlplatform (production was v2)" in shown
    assert "Production is now v1, held: rolled back from v2." in shown
    assert production(serving)["version"] == "v1"
    assert served_version(serving.url, "v1") == "v1"

    # nothing left to go back to: serving's 409, in its words
    moved = production(serving)
    at.button(key="model_rollback").click().run()
    assert [e.value for e in at.error] == [
        "Refused: production v1 has no previous version to roll back to"
    ]
    assert production(serving) == moved
