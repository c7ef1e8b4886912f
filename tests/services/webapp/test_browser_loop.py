"""Issue 29 in headless Chromium: the real app against a real serving whose store went
through the loop for real (traffic, a drifted window, reports, a promoted and a rejected
retrain), and 1,000 labels sent from a CSV.

Every test here needs the issue-29 serving endpoints (``GET /retrain-runs``, batch
``POST /feedback``): they pass once the API branch is merged.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from playwright.sync_api import Browser, expect

from mlplatform_common import datalog
from mlplatform_common.storage import LocalStore
from mlplatform_reporter.simulate import replay, shift_scale
from mlplatform_webapp import samples
from tests.conftest import REPO, ServingProcess, run_cli
from tests.services.webapp.conftest import WRITER_TOKEN, serving_env
from tests.services.webapp.test_browser import (
    WebappProcess,
    artifacts,  # noqa: F401 - a fixture
    browser,  # noqa: F401 - a fixture
    goto,
    main_text,
    open_page,
)

WRITER = {"Authorization": f"Bearer {WRITER_TOKEN}"}


@pytest.fixture(scope="module")
def loop_env(tmp_path_factory) -> dict[str, str]:  # type: ignore[no-untyped-def]
    # no rate on labels (1,000 of them go in a few batches); the jobs push no metrics
    root = tmp_path_factory.mktemp("loop") / "store"
    return serving_env(root, MLPLATFORM_FEEDBACK_RATE="0", MLPLATFORM_PUSHGATEWAY_URL="")


@pytest.fixture(scope="module")
def loop_store(loop_env: dict[str, str]) -> LocalStore:
    """v1 trained as a user does (`make train`): its data set is in the store for retrains."""
    store = LocalStore(Path(loop_env["MLPLATFORM_STORE_URL"].removeprefix("file://")))
    store.ensure()
    _run(
        "mlplatform_retrainer", ["train", "--data", str(REPO / "data/breast_cancer.csv")], loop_env
    )
    return store


@pytest.fixture(scope="module")
def loop_serving(loop_env: dict[str, str], loop_store: LocalStore) -> Iterator[ServingProcess]:
    proc = ServingProcess(loop_env).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def loop_webapp(loop_serving: ServingProcess) -> Iterator[WebappProcess]:
    proc = WebappProcess(loop_serving.url).start()
    yield proc
    proc.stop()


def _traffic(serving: ServingProcess, rows: pd.DataFrame, features: list[str]) -> None:
    """Predict every row and label each one, as ``make simulate`` does."""
    with httpx.Client(base_url=serving.url, headers=WRITER, timeout=30) as client:
        done = replay(
            client, rows, features, "target", rate=500, feedback_fraction=1.0, progress=False
        )
    assert done.errors == 0 and done.feedback_sent == len(rows), done


def _run(module: str, args: list[str], env: dict[str, str]) -> str:
    proc = run_cli(module, args, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def loop(loop_serving: ServingProcess, loop_env: dict[str, str], shipped_dataset) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """A calm window and its report, a drifted window and its report, a retrain the gate
    promotes (any candidate passes a tolerance of 1), one it rejects (none passes -1), and a
    last report after the promotion."""
    features = list(shipped_dataset.features)
    held = samples.held_out()
    env = {**loop_env, "MLPLATFORM_SERVING_URL": loop_serving.url}
    _traffic(loop_serving, held.head(60), features)
    _run("mlplatform_reporter", ["run"], env)
    _traffic(loop_serving, shift_scale(held.tail(54), features, shift=2.0), features)
    _run("mlplatform_reporter", ["run"], env)
    promoted = _run(
        "mlplatform_retrainer", ["run", "--force"], {**env, "MLPLATFORM_GATE_TOLERANCE": "1"}
    )
    assert "retrain promoted" in promoted, promoted
    rejected = _run(
        "mlplatform_retrainer", ["run", "--force"], {**env, "MLPLATFORM_GATE_TOLERANCE": "-1"}
    )
    assert "retrain rejected" in rejected, rejected
    _traffic(loop_serving, held.sample(40, random_state=1), features)
    _run("mlplatform_reporter", ["run"], env)
    return {"features": features}


def test_trend_charts_have_data_after_a_drift_and_a_retrain(
    browser: Browser,  # noqa: F811
    loop_webapp: WebappProcess,
    loop: dict[str, Any],
    artifacts: Path,  # noqa: F811
) -> None:
    page = open_page(browser)
    page.goto(loop_webapp.url + "/monitoring")
    expect(page.get_by_role("heading", name="Trends")).to_be_visible(timeout=60_000)
    expect(page.get_by_text(re.compile(r"^3 reports from"))).to_be_visible()
    # every chart says how many points it draws: each has data
    for title in (
        "Drift share",
        "Per-feature drift score",
        "Quality",
        "Prediction volume and labelled rows per report",
    ):
        header = page.get_by_text(re.compile(rf"^{re.escape(title)} \((\d+) points"))
        expect(header).to_be_visible()
        points = int(re.search(r"\((\d+) points", header.inner_text()).group(1))  # type: ignore[union-attr]
        assert points >= 3, (title, points)
    # the drifted window's share is on the chart's data, and v2's promotion is marked
    expect(page.get_by_text(re.compile(r"went into production \(.*v2.*\)"))).to_be_visible()
    # four charts drawn (the fourth is there once the page has drawn them all)
    expect(page.get_by_test_id("stVegaLiteChart").nth(3)).to_be_visible(timeout=60_000)
    assert "Traceback" not in main_text(page)
    page.screenshot(path=str(artifacts / "trends.png"), full_page=True)
    page.close()


def test_runs_page_shows_a_promoted_and_a_rejected_run_with_reasons(
    browser: Browser,  # noqa: F811
    loop_webapp: WebappProcess,
    loop: dict[str, Any],
    artifacts: Path,  # noqa: F811
) -> None:
    page = open_page(browser)
    page.goto(loop_webapp.url + "/")
    goto(page, "Retrain runs")
    rejected = page.get_by_test_id("stExpander").filter(has_text="· rejected")
    promoted = page.get_by_test_id("stExpander").filter(has_text="· promoted · v2")
    expect(rejected).to_have_count(1, timeout=60_000)
    expect(promoted).to_have_count(1)
    for run, verb in ((rejected, "reject"), (promoted, "promote")):
        run.locator("summary").click()  # open the run's expander
        expect(run.get_by_text("Trigger: forced")).to_be_visible()
        expect(
            run.get_by_text(re.compile(rf"Gate: {verb}: candidate \d\.\d+ vs production \d\.\d+"))
        ).to_be_visible()
    page.screenshot(path=str(artifacts / "runs.png"), full_page=True)
    assert "Traceback" not in main_text(page)
    page.close()


def test_a_csv_of_1000_labels_is_stored_with_a_result_per_row(
    browser: Browser,  # noqa: F811
    loop_webapp: WebappProcess,
    loop_serving: ServingProcess,
    loop_store: LocalStore,
    artifacts: Path,  # noqa: F811
) -> None:
    held = samples.held_out()
    rows = held.sample(1000, replace=True, random_state=7)
    answer = httpx.post(
        loop_serving.url + "/predict",
        json={"instances": rows.drop(columns="target").to_dict(orient="records")},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    ids = [p["prediction_id"] for p in answer.json()["predictions"]]
    before = datalog.count_feedback(loop_store)
    upload = artifacts / "labels.csv"
    pd.DataFrame({"prediction_id": ids, "target": rows["target"].to_numpy()}).to_csv(
        upload, index=False
    )

    page = open_page(browser)
    page.set_default_timeout(120_000)  # 1,000 rows in ten batches on a busy machine
    page.goto(loop_webapp.url + "/")
    goto(page, "Label")
    page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(upload))
    page.get_by_role("button", name="Send 1000 labels").click()
    expect(page.get_by_text("Stored 1000 of 1000 labels.")).to_be_visible(timeout=180_000)
    page.screenshot(path=str(artifacts / "labels.png"), full_page=True)
    with page.expect_download() as download_info:
        page.get_by_role("button", name=re.compile("Download results")).click()
    results = list(csv.DictReader(io.StringIO(Path(download_info.value.path()).read_text())))
    assert len(results) == 1000
    assert [r["prediction_id"] for r in results] == ids
    assert all(r["result"] == "stored" and r["feedback_id"] for r in results)
    assert datalog.count_feedback(loop_store) == before + 1000
    page.close()
