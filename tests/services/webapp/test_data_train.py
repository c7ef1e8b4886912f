"""The Data page's "Train a model on it" with AppTest against a real serving process whose
local launcher runs the real retrainer: with the admin token it trains on the stored data set
and shows the new version in production; without one it says a token is needed; serving's
refusal is shown in its words and moves nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import LocalStore
from tests.conftest import REPO, SIGNING_KEY, ServingProcess, publish_trained
from tests.services.webapp.conftest import ADMIN_TOKEN, page, served_version, serving_env, texts

PENGUINS = (REPO / "data" / "penguins.csv").read_bytes()
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def data_serving(
    tmp_path: Path, trained: Any, shipped_dataset: Any
) -> Iterator[tuple[ServingProcess, LocalStore]]:
    """v1 in production, two data sets stored through the API, served with the local launcher
    and rollout."""
    store = LocalStore(tmp_path / "store")
    store.ensure()
    publish_trained(ModelRegistry(store, SIGNING_KEY), trained, shipped_dataset)
    env = serving_env(store.root, MLPLATFORM_RETRAIN_LAUNCHER="local", MLPLATFORM_ROLLOUT="local")
    proc = ServingProcess(env).start()
    for name in ("penguins", "wine-ish"):
        r = httpx.post(
            proc.url + "/admin/datasets",
            params={"name": name, "target": "species"},
            content=PENGUINS,
            headers=ADMIN,
            timeout=30,
        )
        assert r.status_code == 201, r.text
    yield proc, store
    proc.stop()


def test_train_on_a_data_set_shows_the_new_version_in_production(
    data_serving: tuple[ServingProcess, LocalStore], webapp_env: pytest.MonkeyPatch
) -> None:
    proc, store = data_serving
    registry = ModelRegistry(store, SIGNING_KEY)
    at = page("data", proc.url, webapp_env).run()
    assert not at.exception and not at.error
    # the app holds no admin token here: the page says one is needed, no button to train
    assert "Enter the admin token to upload, list and train on data sets." in texts(at)
    assert not [b for b in at.button if b.key and b.key.startswith("data_train_")]

    at.text_input(key="data_token").input(ADMIN_TOKEN).run()
    assert not at.exception and not at.error, texts(at)
    assert {b.key for b in at.button} >= {"data_train_penguins", "data_train_wine-ish"}

    at.button(key="data_train_penguins").click().run(timeout=180)
    assert not at.exception and not at.error, texts(at)
    shown = texts(at)
    assert "Started train:penguins for mlplatform (production was v1)" in shown
    assert "Trained v2 on penguins: it is in production." in shown, shown
    assert registry.production_version() == "v2"
    assert registry.manifest("v2")["training_data"]["dataset"] == "penguins"
    # the page follows the alias; the run then tells serving to reload, which takes a moment
    assert served_version(proc.url, "v2") == "v2"


def test_serving_s_refusal_is_shown_in_its_words_and_nothing_moves(
    data_serving: tuple[ServingProcess, LocalStore], webapp_env: pytest.MonkeyPatch
) -> None:
    """A second serving process on the same store without a launcher: its 503, as given."""
    store = data_serving[1]
    proc = ServingProcess(serving_env(store.root, MLPLATFORM_RETRAIN_LAUNCHER="none")).start()
    try:
        webapp_env.setenv("MLPLATFORM_ADMIN_TOKEN", ADMIN_TOKEN)  # the configured token
        at = page("data", proc.url, webapp_env).run()
        at.button(key="data_train_penguins").click().run()
        assert not at.exception
        assert [e.value for e in at.error] == [
            "The serving API is unavailable: no retrain launcher is configured in this "
            "deployment to run train:penguins (MLPLATFORM_RETRAIN_LAUNCHER=none): use the "
            "mlplatform CLI"
        ]
        assert "Started" not in texts(at)
        assert ModelRegistry(store, SIGNING_KEY).versions() == ["v1"]
    finally:
        proc.stop()
