"""The Register page with AppTest against a real serving process whose local launcher starts
the real retrainer: a skops pipeline and its reference data are uploaded, the page follows
the registration until the version is published (and served, when promoted); a refused one
shows the retrainer's reason and publishes nothing; a wrong token is the API's refusal."""

from __future__ import annotations

import io
import pickle
import time
from collections.abc import Iterator

import httpx
import pytest
import skops.io
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from streamlit.testing.v1 import AppTest

from mlplatform_common import keys
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import LocalStore
from tests.conftest import DATA, SIGNING_KEY, ServingProcess
from tests.services.webapp.conftest import ADMIN_TOKEN, page, serving_env, texts

CANCER = DATA.read_bytes()


@pytest.fixture
def empty_serving(tmp_path) -> Iterator[tuple[ServingProcess, LocalStore]]:
    store = LocalStore(tmp_path / "store")
    store.ensure()
    env = serving_env(store.root, MLPLATFORM_RETRAIN_LAUNCHER="local")
    proc = ServingProcess(env).start(wait_ready=False)  # no model: it is registered here
    yield proc, store
    proc.stop()


def _skops_pipeline() -> bytes:
    import pandas as pd

    frame = pd.read_csv(DATA)
    model = Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression(max_iter=500))])
    model.fit(frame.drop(columns=["target"]), frame["target"])
    buf = io.BytesIO()
    skops.io.dump(model, buf)
    return buf.getvalue()


def _register(at: AppTest, model: tuple[str, bytes], promote: bool) -> AppTest:
    at.file_uploader(key="register_model").upload(model[0], model[1], "application/octet-stream")
    at.file_uploader(key="register_data").upload("cancer.csv", CANCER, "text/csv")
    at.run()
    assert at.selectbox(key="register_target").value == "target"  # the data's last column
    if promote:
        at.checkbox(key="register_promote").check()
    return at.button(key="register_submit").click().run()


def _until_done(at: AppTest, timeout: float = 180) -> AppTest:
    """Run the page again, as its poll does, until it shows the outcome."""
    deadline = time.monotonic() + timeout
    while "Registering" in texts(at) and time.monotonic() < deadline:
        time.sleep(1)
        at.run()
    return at


def test_the_register_page_uploads_follows_and_shows_the_version(empty_serving, webapp_env) -> None:
    proc, store = empty_serving
    webapp_env.setenv("MLPLATFORM_ADMIN_TOKEN", ADMIN_TOKEN)  # the app holds it
    at = page("register", proc.url, webapp_env).run()
    assert not at.exception and not at.error
    assert "loading it runs whatever code it holds" in at.warning[0].value

    at = _register(at, ("lr.skops", _skops_pipeline()), promote=True)
    assert not at.exception and not at.error
    assert "Registering lr.skops" in texts(at)  # the progress, until the outcome
    at = _until_done(at)
    assert not at.exception and not at.error, texts(at)
    assert at.success[0].value == "Published lr.skops as version v1, in production."
    registry = ModelRegistry(store, SIGNING_KEY)
    assert registry.production_version() == "v1"
    assert registry.manifest("v1")["origin"] == "registered"
    assert httpx.get(proc.url + "/health").json()["model_version"] == "v1"


def test_a_refused_model_shows_the_reason_and_publishes_nothing(empty_serving, webapp_env) -> None:
    proc, store = empty_serving
    at = page("register", proc.url, webapp_env).run()
    assert "Enter the admin token" in texts(at)  # the app holds none here
    at.text_input(key="register_token").input("wrong").run()
    at = _register(at, ("lr.skops", _skops_pipeline()), promote=False)
    assert len(at.error) == 1 and "Refused: missing or wrong bearer token" in at.error[0].value
    assert store.list_keys(keys.UPLOADS) == []

    at.text_input(key="register_token").input(ADMIN_TOKEN).run()
    weights = pickle.dumps({"weights": [1, 2, 3]})
    at.file_uploader(key="register_model").upload(
        "weights.pkl", weights, "application/octet-stream"
    )
    at.button(key="register_submit").click().run()
    at = _until_done(at)
    assert not at.exception
    assert len(at.error) == 1, texts(at)
    assert at.error[0].value == (
        "Refused: weights.pkl is not a model: it holds a dict, which has no predict"
    )
    assert ModelRegistry(store, SIGNING_KEY).versions() == []
