"""Each page's logic with Streamlit's AppTest against a real serving process."""

from __future__ import annotations

import time

import httpx
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from mlplatform_common import datalog
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import LocalStore, for_model
from mlplatform_webapp import samples
from mlplatform_webapp.settings import get_settings
from tests.conftest import SIGNING_KEY, ServingProcess, free_port, publish_trained
from tests.services.webapp.conftest import (
    ADMIN_TOKEN,
    APP_DIR,
    PARTIAL_NOTE,
    WRITER_TOKEN,
    page,
    serving_env,
    texts,
)

PAGES = [
    "predict",
    "batch",
    "label",
    "model",
    "monitoring",
    "runs",
    "system",
    "data",
    "register",
    "admin",
]


def down_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


@pytest.mark.parametrize("name", PAGES)
def test_every_page_says_in_one_line_that_the_api_is_down(name: str, webapp_env) -> None:
    at = page(name, down_url(), webapp_env).run()
    assert not at.exception
    assert len(at.error) == 1
    message = at.error[0].value
    assert "cannot be reached" in message and "\n" not in message
    assert "Traceback" not in texts(at)


def test_a_page_recovers_when_the_api_becomes_ready(
    webapp_env, tmp_path, trained, shipped_dataset
) -> None:
    port = free_port()
    at = page("predict", f"http://127.0.0.1:{port}", webapp_env).run()
    assert "cannot be reached" in at.error[0].value

    store = LocalStore(tmp_path / "store")
    store.ensure()
    proc = ServingProcess(serving_env(store.root), port=port).start(wait_ready=False)
    try:
        at.run()  # up, but no model yet: the API's own reason, still one line
        assert not at.exception
        assert len(at.error) == 1 and "unavailable" in at.error[0].value
        assert not at.number_input

        publish_trained(ModelRegistry(store, SIGNING_KEY), trained, shipped_dataset)
        deadline = time.monotonic() + 60  # the next alias poll, then the load
        while httpx.get(proc.url + "/ready").status_code != 200:
            assert time.monotonic() < deadline, proc.output_so_far()
            time.sleep(0.2)
        at.run()
        assert not at.exception and not at.error
        assert len(at.number_input) == 30
    finally:
        proc.stop()


def test_predict_form_prefills_medians_predicts_and_stores_feedback(
    serving, model_store, webapp_env
) -> None:
    at = page("predict", serving.url, webapp_env).run()
    assert not at.exception
    radius = at.number_input(key="predict_f_mean_radius")
    assert radius.value == pytest.approx(13.37)  # the reference median

    at.button(key="predict_random").click().run()
    values = {n.key.removeprefix("predict_f_"): n.value for n in at.number_input}
    held = samples.held_out()
    matches = held[(held[list(values)] - list(values.values())).abs().max(axis=1) < 1e-9]
    assert len(matches) == 1  # the form holds one held-out row exactly
    true_target = int(matches["target"].iloc[0])
    assert "held-out row" in texts(at)

    at.button(key="FormSubmitter:predict_form-Predict").click().run()
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Label"] in ("malignant", "benign")
    assert metrics["Model version"] == "v1"
    assert metrics["Probability"].endswith("%")
    prediction_id = at.session_state["predict_result"]["answer"]["prediction_id"]
    expected = {0: "malignant", 1: "benign"}[true_target]
    assert at.selectbox(key="predict_true_label").value == expected  # preset to the row's truth

    at.selectbox(key="predict_true_label").select("malignant")
    at.button(key="FormSubmitter:predict_feedback_form-Send feedback").click().run()
    assert not at.exception
    assert "Feedback stored" in at.success[0].value
    stored = datalog.read_feedback(model_store)
    row = stored[stored["prediction_id"] == prediction_id]
    assert len(row) == 1 and int(row["target"].iloc[0]) == 0


def test_label_stores_a_true_label_by_id_and_names_an_unknown_id(
    serving, model_store, webapp_env
) -> None:
    row = samples.held_out().drop(columns="target").iloc[0].to_dict()
    prediction_id = httpx.post(serving.url + "/predict", json={"features": row}).json()[
        "predictions"
    ][0]["prediction_id"]

    at = page("label", serving.url, webapp_env).run()
    at.text_input(key="label_prediction_id").input(prediction_id)
    at.selectbox(key="label_true").select("benign")
    at.button(key="FormSubmitter:label_form-Send label").click().run()
    assert not at.exception and not at.error
    assert f"prediction {prediction_id} is benign" in at.success[0].value
    stored = datalog.read_feedback(model_store)
    assert int(stored.loc[stored["prediction_id"] == prediction_id, "target"].iloc[0]) == 1

    at.text_input(key="label_prediction_id").input("no-such-id")
    at.button(key="FormSubmitter:label_form-Send label").click().run()
    assert len(at.error) == 1 and "no-such-id" in at.error[0].value
    assert "unknown" in at.error[0].value


def test_label_without_the_writer_token_says_so_and_stores_nothing(
    serving, model_store, webapp_env
) -> None:
    row = samples.held_out().drop(columns="target").iloc[1].to_dict()
    prediction_id = httpx.post(serving.url + "/predict", json={"features": row}).json()[
        "predictions"
    ][0]["prediction_id"]
    webapp_env.setenv("MLPLATFORM_WRITER_TOKEN", WRITER_TOKEN + "-old")  # a rotated Secret
    before = model_store.list_keys("production/feedback/")
    at = page("label", serving.url, webapp_env).run()
    at.text_input(key="label_prediction_id").input(prediction_id)
    at.button(key="FormSubmitter:label_form-Send label").click().run()
    assert not at.exception and not at.success
    assert len(at.error) == 1 and "Not stored: wrong bearer token" in at.error[0].value
    assert model_store.list_keys("production/feedback/") == before


def test_model_page_shows_versions_metrics_and_production(serving, webapp_env) -> None:
    at = page("model", serving.url, webapp_env).run()
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Serving"] == "v1" and metrics["In production"] == "v1"
    assert "Named model **mlplatform**" in [c.value for c in at.caption]  # the default name
    # a table, not a scrolled grid: no column is cut at the page's edge (issue 29)
    table = at.table[0].value
    assert table["version"].tolist() == ["v1"]
    assert table["status"].tolist() == ["production, serving"]
    assert 0.5 < table["test f1"].iloc[0] <= 1
    # the rows v1 was fit on, not its data set's (which counts the validation and test rows)
    card = httpx.get(serving.url + "/model").json()
    assert table["training rows"].tolist() == [card["split"]["train"]]
    assert card["split"]["train"] < card["training_data"]["rows"]


def test_batch_page_predicts_an_upload_and_lists_failed_rows(serving, webapp_env) -> None:
    held = samples.held_out().head(5)
    csv = held.to_csv(index=False).replace(f"\n{held.iloc[2, 0]},", "\nabc,", 1)
    at = page("batch", serving.url, webapp_env).run()
    at.file_uploader(key="batch_file").upload("rows.csv", csv.encode(), "text/csv")
    at.run()
    at.button(key="batch_run").click().run()
    assert not at.exception
    assert "Predicted 4 of 5 rows; 1 failed" in at.success[0].value
    failed = at.dataframe[1].value
    assert failed["row"].tolist() == [3]
    assert "mean_radius" in failed["error"].iloc[0] and "number" in failed["error"].iloc[0]
    table = at.dataframe[0].value
    assert table["label"].notna().sum() == 4 and "target" in table.columns


def test_batch_page_says_what_is_wrong_with_an_embedding_space_file(serving, webapp_env) -> None:
    at = page("batch", serving.url, webapp_env).run()
    at.file_uploader(key="batch_file").upload(
        "ref_data.csv", b"PCA_1,PCA_2,target\n0.1,0.2,1\n", "text/csv"
    )
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and "embedding space" in at.error[0].value


def test_monitoring_shows_the_latest_report_and_earlier_ones(serving, webapp_env) -> None:
    webapp_env.setenv("MLPLATFORM_GRAFANA_URL", "http://grafana.test/d/mlplatform")
    at = page("monitoring", serving.url, webapp_env).run()
    assert not at.exception and not at.error
    assert at.selectbox(key="monitoring_report").value == "20260102T000000Z"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Drift share"] == "0.300"
    assert metrics["Drifted features"] == "3"
    assert metrics["F1"] == "0.915"
    assert metrics["Balanced accuracy"] == "0.880"
    assert metrics["Labelled rows"] == "40"
    assert at.get("link_button")[0].proto.url == "http://grafana.test/d/mlplatform"
    iframe = [e for e in at.get("iframe")]
    assert iframe and "Evidently report 20260102T000000Z" in iframe[0].proto.srcdoc

    at.selectbox(key="monitoring_report").select("20260101T000000Z").run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Drift share"] == "0.500" and metrics["Drifted features"] == "2"
    assert "Precision" not in metrics  # only what the summary has

    at.selectbox(key="monitoring_report").select("20251231T000000Z").run()
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Accuracy"] == "1.000" and "F1" not in metrics
    captions = [c.value for c in at.caption]
    lines = [c for c in captions if "no ROC AUC" in c]
    assert lines == ["Q" + PARTIAL_NOTE[1:]]  # once, not again among the notes


def test_monitoring_hides_grafana_when_unset(serving, webapp_env) -> None:
    at = page("monitoring", serving.url, webapp_env).run()
    assert not at.exception
    assert not at.get("link_button")


def test_admin_reload_with_the_token_and_refusals(serving, webapp_env) -> None:
    at = page("admin", serving.url, webapp_env).run()
    assert not at.exception and "Serving v1" in texts(at)

    at.button[1].click().run()  # no token configured, none typed
    assert "Enter the admin token" in at.error[0].value

    at.text_input(key="admin_token").input("wrong")
    at.button[1].click().run()
    assert len(at.error) == 1 and "Refused" in at.error[0].value

    at.text_input(key="admin_token").input(ADMIN_TOKEN)
    at.button[1].click().run()
    assert not at.error and "Serving v1 (was v1)" in at.success[0].value

    at.button[0].click().run()  # retrain: this serving has no launcher, and says so
    assert len(at.error) == 1 and "no retrain launcher" in at.error[0].value


def test_admin_uses_the_configured_token(serving, webapp_env) -> None:
    webapp_env.setenv("MLPLATFORM_ADMIN_TOKEN", ADMIN_TOKEN)
    at = page("admin", serving.url, webapp_env).run()
    at.button[1].click().run()
    assert not at.error and "Serving v1" in at.success[0].value


def test_the_sidebar_links_the_api_docs_where_a_browser_reaches_them(serving, webapp_env) -> None:
    # In the cluster the app talks to http://<release>-serving:8080, which no browser opens:
    # the link is the ingress's /api (the chart sets MLPLATFORM_PUBLIC_API_URL).
    webapp_env.setenv("MLPLATFORM_API_URL", serving.url)
    webapp_env.setenv("MLPLATFORM_PUBLIC_API_URL", "/api/")
    get_settings.cache_clear()
    at = AppTest.from_file(str(APP_DIR / "streamlit_app.py"), default_timeout=30).run()
    assert not at.exception
    (caption,) = [c.value for c in at.sidebar.caption if "Serving API" in c.value]
    assert caption == "Serving API: [/api/docs](/api/docs)"
    assert serving.url not in caption
    webapp_env.delenv("MLPLATFORM_PUBLIC_API_URL")
    get_settings.cache_clear()
    at = AppTest.from_file(str(APP_DIR / "streamlit_app.py"), default_timeout=30).run()
    assert f"[{serving.url}/docs]" in " ".join(c.value for c in at.sidebar.caption)


def test_a_held_production_is_shown_and_the_admin_page_lifts_the_hold(
    webapp_env, tmp_path, trained, shipped_dataset
) -> None:
    store = LocalStore(tmp_path / "store")
    store.ensure()
    registry = ModelRegistry(store, SIGNING_KEY)
    publish_trained(registry, trained, shipped_dataset)
    registry.promote("v1", hold="pinned to v1 by hand")
    proc = ServingProcess(serving_env(store.root)).start()
    try:
        at = page("model", proc.url, webapp_env).run()
        assert not at.exception
        assert "Production is held at v1: pinned to v1 by hand" in texts(at)
        at = page("admin", proc.url, webapp_env).run()
        at.text_input(key="admin_token").input(ADMIN_TOKEN)
        at.button[2].click().run()
        assert not at.error, at.error[0].value
        assert "v1 is no longer held" in at.success[0].value
        assert registry.hold() is None and registry.production_version() == "v1"
        at = page("model", proc.url, webapp_env).run()
        assert "held" not in texts(at)
    finally:
        proc.stop()


def test_the_app_names_its_model_and_the_model_page_lists_the_store_s_others(
    tmp_path, trained, shipped_dataset, webapp_env
) -> None:  # type: ignore[no-untyped-def]
    root = LocalStore(tmp_path / "store")
    root.ensure()
    for name in ("fraud", "churn-eu"):
        publish_trained(ModelRegistry(for_model(root, name), SIGNING_KEY), trained, shipped_dataset)
    fraud = ServingProcess(serving_env(root.root, MLPLATFORM_MODEL_NAME="fraud")).start()
    try:
        webapp_env.setenv("MLPLATFORM_MODEL_NAME", "fraud")
        at = page("model", fraud.url, webapp_env).run()
        assert not at.exception and not at.error and not at.warning
        (caption,) = [c.value for c in at.caption if "Named model" in c.value]
        assert caption.startswith("Named model **fraud**") and "churn-eu" in caption
        assert "fraud," not in caption  # the others only
        at = AppTest.from_file(str(APP_DIR / "streamlit_app.py"), default_timeout=30).run()
        assert "Model: **fraud**" in [c.value for c in at.sidebar.caption]
        # pointed at another release's serving: said, not hidden
        webapp_env.setenv("MLPLATFORM_MODEL_NAME", "churn-eu")
        st.cache_data.clear()
        at = page("model", fraud.url, webapp_env).run()
        assert "serves the named model 'fraud', not 'churn-eu'" in at.warning[0].value
    finally:
        fraud.stop()
