"""The Register page in headless Chromium against a real web app, serving and retrainer: the
page polls the registration by itself (its fragment, which AppTest does not run) until the
published version shows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import skops.io
from playwright.sync_api import Browser, expect
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import LocalStore
from tests.conftest import DATA, SIGNING_KEY, ServingProcess
from tests.services.webapp import test_browser
from tests.services.webapp.conftest import ADMIN_TOKEN, serving_env
from tests.services.webapp.test_browser import WebappProcess

# The Chromium and the screenshot folder of the web app's browser tests.
browser, artifacts = test_browser.browser, test_browser.artifacts


@pytest.fixture
def register_app(tmp_path: Path) -> Iterator[tuple[WebappProcess, LocalStore]]:
    store = LocalStore(tmp_path / "store")
    store.ensure()
    env = serving_env(store.root, MLPLATFORM_RETRAIN_LAUNCHER="local")
    serving = ServingProcess(env).start(wait_ready=False)
    web = WebappProcess(serving.url)
    web.env["MLPLATFORM_ADMIN_TOKEN"] = ADMIN_TOKEN  # the app holds it
    try:
        yield web.start(), store
    finally:
        web.stop()
        serving.stop()


def test_the_register_page_follows_the_registration_by_itself(
    register_app, browser: Browser, artifacts: Path, tmp_path: Path
) -> None:
    web, store = register_app
    frame = pd.read_csv(DATA)
    model = Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression(max_iter=500))])
    model.fit(frame.drop(columns=["target"]), frame["target"])
    skops.io.dump(model, tmp_path / "lr.skops")

    page = browser.new_page(viewport={"width": 1300, "height": 1100})
    try:
        page.goto(web.url + "/register")
        expect(page.get_by_text("Register a model").first).to_be_visible(timeout=60_000)
        files = page.locator("input[type=file]")
        files.nth(0).set_input_files(str(tmp_path / "lr.skops"))
        files.nth(1).set_input_files(str(DATA))
        expect(page.get_by_text("breast_cancer.csv")).to_be_visible()
        page.get_by_text("Put it in production").click()
        page.get_by_role("button", name="Register").click()
        expect(page.get_by_text("Registering lr.skops")).to_be_visible(timeout=30_000)
        published = page.get_by_text("Published lr.skops as version v1, in production.")
        expect(published).to_be_visible(timeout=180_000)  # no click: the page polled
        page.screenshot(path=str(artifacts / "register.png"), full_page=True)
    finally:
        page.close()
    assert ModelRegistry(store, SIGNING_KEY).production_version() == "v1"
