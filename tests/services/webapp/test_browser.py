"""The real app (``python -m mlplatform_webapp``) in headless Chromium, against real serving.

Screenshots go to ``$MLPLATFORM_TEST_ARTIFACTS`` (or a pytest temporary directory).
"""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from mlplatform_common import datalog
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import LocalStore
from mlplatform_webapp import samples
from tests.conftest import (
    CHROMIUM,
    CHROMIUM_ARGS,
    REPO,
    SIGNING_KEY,
    ServingProcess,
    free_port,
)
from tests.services.webapp.conftest import WRITER_TOKEN, serving_env

BASE_PATH = "app"


class WebappProcess:
    """A real ``python -m mlplatform_webapp`` on a free port, stopped by its PID."""

    def __init__(self, api_url: str, base_path: str = BASE_PATH) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/{base_path}".rstrip("/")
        self.env = {
            **os.environ,
            "MLPLATFORM_API_URL": api_url,
            "MLPLATFORM_WEBAPP_PORT": str(self.port),
            "MLPLATFORM_BASE_URL_PATH": base_path,
            "MLPLATFORM_RETRY_SECONDS": "1",
            "MLPLATFORM_CACHE_TTL_SECONDS": "2",
            "MLPLATFORM_DEV_MODE": "false",
            "MLPLATFORM_WRITER_TOKEN": WRITER_TOKEN,
        }
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 60) -> WebappProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlplatform_webapp"],
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"webapp exited early:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/_stcore/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"webapp not up on {self.url}")

    def output(self) -> str:
        return self.proc.stdout.read() if self.proc and self.proc.stdout else ""

    def stop(self) -> str:
        if self.proc is None:
            return ""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        out = self.output()
        self.proc = None
        return out


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # No skip: without Debian's chromium this fails, as a missing dependency should.
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    out = Path(os.environ.get("MLPLATFORM_TEST_ARTIFACTS") or tmp_path) / "webapp"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def webapp(serving: ServingProcess) -> Iterator[WebappProcess]:
    proc = WebappProcess(serving.url).start()
    yield proc
    proc.stop()


def open_page(browser: Browser) -> Page:
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page.set_default_timeout(30_000)
    return page


def main_text(page: Page) -> str:
    return page.get_by_test_id("stMain").inner_text()


def goto(page: Page, name: str) -> None:
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=name).click()
    expect(page.get_by_role("heading", name=name, exact=True)).to_be_visible()


def test_predict_feedback_model_and_batch_under_a_base_path(
    browser: Browser, webapp: WebappProcess, model_store: LocalStore, artifacts: Path
) -> None:
    page = open_page(browser)
    page.goto(webapp.url + "/")
    expect(page.get_by_role("heading", name="Predict", exact=True)).to_be_visible()
    expect(page.get_by_role("spinbutton", name="mean_radius")).to_have_value(
        "13.37"
    )  # reference median

    # predict a held-out row
    page.get_by_role("button", name=re.compile("Random sample")).click()
    expect(page.get_by_text(re.compile(r"Filled with held-out row \d+ of 114"))).to_be_visible()
    field = page.get_by_role("spinbutton", name="mean_radius")
    expect(field).not_to_have_value("13.37")
    radius = float(field.input_value())
    assert radius in set(samples.held_out()["mean_radius"])
    page.locator("button", has_text="Predict").click()
    expect(page.get_by_text("Prediction id:")).to_be_visible()
    label = page.get_by_test_id("stMetric").filter(has_text="Label").inner_text()
    assert "malignant" in label or "benign" in label
    expect(page.get_by_test_id("stMetric").filter(has_text="Model version")).to_contain_text("v1")
    expect(page.get_by_test_id("stProgress")).to_be_visible()
    page.screenshot(path=str(artifacts / "predict.png"), full_page=True)
    assert "Traceback" not in main_text(page)
    prediction_id = re.search(r"Prediction id:\s*(\S+)", main_text(page)).group(1)  # type: ignore[union-attr]

    # feedback, confirmed on the page and durably in the store
    page.locator("button", has_text="Send feedback").click()
    expect(page.get_by_text(re.compile("Feedback stored"))).to_be_visible()
    page.screenshot(path=str(artifacts / "feedback.png"), full_page=True)
    stored = datalog.read_feedback(model_store)
    assert prediction_id in set(stored["prediction_id"])
    assert page.url.startswith(webapp.url)

    # the model page lists v1 as serving and in production
    goto(page, "Model")
    assert page.url == f"{webapp.url}/model"
    expect(page.get_by_test_id("stMetric").filter(has_text="In production")).to_contain_text("v1")
    expect(page.get_by_text("Card of v1 (serving)")).to_be_visible()
    # which named model: the page (serving's answer) and the sidebar (the app's setting)
    expect(page.get_by_test_id("stCaptionContainer").filter(has_text="Named model")).to_have_text(
        "Named model mlplatform"
    )
    expect(page.get_by_test_id("stSidebar").get_by_text("Model: mlplatform")).to_be_visible()
    page.screenshot(path=str(artifacts / "model.png"), full_page=True)
    # promoting needs the admin token, which this app does not hold: said, nothing started
    alias = ModelRegistry(model_store, SIGNING_KEY).production()
    page.locator("button", has_text="Promote").click()
    expect(page.get_by_text("Enter the admin token to promote or roll back.")).to_be_visible()
    assert ModelRegistry(model_store, SIGNING_KEY).production() == alias

    # batch: upload, predict with one bad row, download the results
    held = samples.held_out().head(12)
    text = held.to_csv(index=False)
    lines = text.splitlines()
    lines[4] = "oops" + lines[4][lines[4].index(",") :]  # data row 4: mean_radius not a number
    upload = artifacts / "rows.csv"
    upload.write_text("\n".join(lines) + "\n")
    goto(page, "Batch")
    page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(upload))
    page.get_by_role("button", name=re.compile("Predict 12 rows")).click()
    expect(page.get_by_text("Predicted 11 of 12 rows; 1 failed (listed below).")).to_be_visible()
    expect(page.get_by_text("Rows that failed")).to_be_visible()
    page.screenshot(path=str(artifacts / "batch.png"), full_page=True)
    with page.expect_download() as download_info:
        page.get_by_role("button", name=re.compile("Download results")).click()
    download = download_info.value
    assert download.suggested_filename == "predictions-rows.csv"
    rows = list(csv.DictReader(io.StringIO(Path(download.path()).read_text())))
    assert len(rows) == 12
    assert [r["row"] for r in rows if r["error"]] == ["4"]
    assert "mean_radius" in rows[3]["error"]
    assert all(r["prediction_id"] and r["label"] in ("0", "1") for r in rows if not r["error"])
    page.close()


def test_the_page_recovers_by_itself_when_the_api_comes_back(
    browser: Browser, model_store: LocalStore, artifacts: Path
) -> None:
    port = free_port()
    app = WebappProcess(f"http://127.0.0.1:{port}").start()
    serving: ServingProcess | None = None
    try:
        page = open_page(browser)
        page.goto(app.url + "/model")
        alert = page.get_by_test_id("stAlertContentError")
        expect(alert).to_contain_text("cannot be reached")
        assert alert.count() == 1 and "Traceback" not in main_text(page)
        page.screenshot(path=str(artifacts / "api-down.png"), full_page=True)

        serving = ServingProcess(serving_env(model_store.root), port=port).start()
        # no reload: the page polls the API and comes back on its own
        expect(page.get_by_text("Card of v1 (serving)")).to_be_visible(timeout=30_000)
        expect(alert).to_have_count(0)
        page.close()
    finally:
        if serving is not None:
            serving.stop()
        app.stop()


def logged(store: LocalStore, prediction_id: str, timeout: float = 30) -> pd.DataFrame:
    """The prediction's row in the log, once serving has flushed it (every half second)."""
    deadline = time.monotonic() + timeout
    while True:
        frame = datalog.read_predictions(store)
        row = frame[frame["prediction_id"] == prediction_id]
        if len(row) or time.monotonic() > deadline:
            assert len(row) == 1, f"prediction {prediction_id} not logged"
            return row
        time.sleep(0.3)


def choose(page: Page, label: str, option: str) -> None:
    """Pick ``option`` in the select box labelled ``label``, as a user does."""
    box = page.get_by_role("combobox", name=label, exact=True)
    box.click()
    page.get_by_role("option", name=option, exact=True).click()
    expect(box).to_have_value(option)


def test_a_mixed_type_form_and_a_regression_answer(
    browser: Browser,
    penguins_serving: ServingProcess,
    penguins_store: LocalStore,
    diabetes_serving: ServingProcess,
    diabetes_store: LocalStore,
    artifacts: Path,
) -> None:
    """Penguins: pick an island, leave sex empty, read a species; diabetes: read a value."""
    app = WebappProcess(penguins_serving.url).start()
    try:
        page = open_page(browser)
        page.goto(app.url + "/")
        expect(page.get_by_role("heading", name="Predict", exact=True)).to_be_visible()
        choose(page, "island", "Dream")
        choose(page, "sex", "(empty)")
        page.locator("button", has_text="Predict").click()
        expect(page.get_by_text("Prediction id:")).to_be_visible()
        label = page.get_by_test_id("stMetric").filter(has_text="Label").inner_text()
        assert any(name in label for name in ("Adelie", "Chinstrap", "Gentoo")), label
        page.screenshot(path=str(artifacts / "predict-penguins.png"), full_page=True)
        assert "Traceback" not in main_text(page)
        prediction_id = re.search(r"Prediction id:\s*(\S+)", main_text(page)).group(1)  # type: ignore[union-attr]
        row = logged(penguins_store, prediction_id)
        assert row["island"].iloc[0] == "Dream" and row["sex"].isna().all()  # text and null
        page.close()
    finally:
        app.stop()

    app = WebappProcess(diabetes_serving.url).start()
    try:
        page = open_page(browser)
        page.goto(app.url + "/")
        expect(page.get_by_role("heading", name="Predict", exact=True)).to_be_visible()
        page.locator("button", has_text="Predict").click()
        expect(page.get_by_text("Prediction id:")).to_be_visible()
        tile = page.get_by_test_id("stMetric").filter(has_text="Predicted progression")
        value = float(tile.get_by_test_id("stMetricValue").inner_text())
        assert 0 < value < 500  # the target's units (progression runs 25..346)
        expect(page.get_by_test_id("stProgress")).to_have_count(0)  # no probability bar
        expect(page.get_by_test_id("stMetric").filter(has_text="Probability")).to_have_count(0)
        page.screenshot(path=str(artifacts / "predict-diabetes.png"), full_page=True)
        prediction_id = re.search(r"Prediction id:\s*(\S+)", main_text(page)).group(1)  # type: ignore[union-attr]

        # the true value is a number, stored as the row's feedback
        field = page.get_by_role("spinbutton", name="True progression")
        field.fill("151")
        page.locator("button", has_text="Send feedback").click()
        expect(page.get_by_text(re.compile("Feedback stored"))).to_be_visible()
        stored = datalog.read_feedback(diabetes_store)
        target = stored.loc[stored["prediction_id"] == prediction_id, "target"]
        assert float(target.iloc[0]) == 151.0

        goto(page, "Model")
        expect(page.get_by_test_id("stMetric").filter(has_text="Task")).to_contain_text(
            "regression"
        )
        expect(page.get_by_test_id("stMetric").filter(has_text="Test RMSE")).to_be_visible()
        page.screenshot(path=str(artifacts / "model-diabetes.png"), full_page=True)
        page.close()
    finally:
        app.stop()
