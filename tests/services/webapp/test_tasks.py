"""Both tasks and typed features in the web app: the Predict form built from the typed schema
(penguins: categories, missing cells, text classes) with AppTest against a real serving, and
the pages' logic for a regression (diabetes) card and answers."""

from __future__ import annotations

import random

import httpx
import pandas as pd
import pytest

from mlplatform_common import datalog
from mlplatform_common.schema import encode, is_category
from mlplatform_webapp import batch, cards, samples
from tests.conftest import DATA
from tests.services.webapp.conftest import manifest, page, texts

PENGUIN_NUMBERS = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "year"]


def spec_of(card: dict, name: str) -> dict:  # type: ignore[type-arg]
    return next(f for f in card["feature_schema"] if f["name"] == name)


def test_the_predict_form_of_a_mixed_model_has_select_boxes_and_empty_choices(
    penguins_serving, penguins_store, webapp_env
) -> None:
    card = manifest(penguins_store)
    island, sex = spec_of(card, "island"), spec_of(card, "sex")
    at = page("predict", penguins_serving.url, webapp_env).run()
    assert not at.exception and not at.error

    box = at.selectbox(key="predict_f_island")
    assert box.options == island["categories"]  # not nullable: no empty choice
    most = island["categories"][island["shares"].index(max(island["shares"]))]
    assert box.value == most
    assert at.selectbox(key="predict_f_sex").options == [*sex["categories"], cards.EMPTY]
    numbers = {n.key.removeprefix("predict_f_"): n.value for n in at.number_input}
    assert sorted(numbers) == sorted(PENGUIN_NUMBERS)
    assert numbers["bill_length_mm"] == pytest.approx(spec_of(card, "bill_length_mm")["median"])
    assert "classification" in texts(at)

    # pick an island, leave sex and a nullable number empty: sent as text and nulls
    at.selectbox(key="predict_f_island").select("Dream")
    at.selectbox(key="predict_f_sex").select(cards.EMPTY)
    at.number_input(key="predict_f_bill_depth_mm").set_value(None)
    at.button(key="FormSubmitter:predict_form-Predict").click().run()
    assert not at.exception
    sent = at.session_state["predict_row"]
    assert sent["island"] == "Dream" and sent["sex"] is None and sent["bill_depth_mm"] is None
    assert sent["body_mass_g"] == pytest.approx(spec_of(card, "body_mass_g")["median"])
    assert list(sent) == [f["name"] for f in card["feature_schema"]]
    assert not at.error  # serving takes text and nulls (the serving side of this issue)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Label"] in ("Adelie", "Chinstrap", "Gentoo")  # text class names

    at.selectbox(key="predict_true_label").select("Gentoo")
    at.button(key="FormSubmitter:predict_feedback_form-Send feedback").click().run()
    assert not at.exception and "true label Gentoo" in at.success[0].value
    prediction_id = at.session_state["predict_result"]["answer"]["prediction_id"]
    stored = datalog.read_feedback(penguins_store)
    assert stored.loc[stored["prediction_id"] == prediction_id, "target"].iloc[0] == "Gentoo"


def test_a_random_sample_of_a_mixed_model_draws_categories_by_their_shares(
    penguins_serving, penguins_store, webapp_env
) -> None:
    card = manifest(penguins_store)
    island = spec_of(card, "island")
    rng = random.Random(5)
    drawn = pd.Series([samples.draw(island, rng) for _ in range(6000)])
    shares = drawn.value_counts(normalize=True)
    for value, share in zip(island["categories"], island["shares"], strict=True):
        assert shares[value] == pytest.approx(share, abs=0.03)

    at = page("predict", penguins_serving.url, webapp_env).run()
    at.button(key="predict_random").click().run()
    assert not at.exception
    # a sentence, not "Filled with drawn from ..." (issue 29)
    assert "Filled with values drawn from the training data's statistics" in texts(at)
    assert at.selectbox(key="predict_f_island").value in island["categories"]
    assert at.selectbox(key="predict_f_sex").value in spec_of(card, "sex")["categories"]
    row, target, _ = samples.random_row(card["feature_schema"], random.Random(1))
    frame = pd.DataFrame([cards.row_features(card["feature_schema"], row)])
    codes = encode(frame, card["feature_schema"])
    for j, spec in enumerate(card["feature_schema"]):
        if is_category(spec):  # every drawn value is one the version knows
            assert 0 <= codes[0, j] < len(spec["categories"])
    assert target is None


def test_the_model_page_shows_the_task_the_typed_schema_and_text_classes(
    penguins_serving, webapp_env
) -> None:
    at = page("model", penguins_serving.url, webapp_env).run()
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Task"] == "classification"
    assert float(metrics["Test F1"]) > 0.5
    schema = next(d.value for d in at.dataframe if "may be missing" in d.value.columns)
    by_name = schema.set_index("feature")
    assert by_name.loc["island", "type"] == "category"
    assert by_name.loc["sex", "may be missing"] and not by_name.loc["island", "may be missing"]
    assert "Biscoe (" in by_name.loc["island", "values"]
    assert by_name.loc["body_mass_g", "type"] == "number"
    assert "classes:** Adelie, Chinstrap, Gentoo" in texts(at)


def test_a_regression_card_shows_its_error_metrics_and_no_classes(diabetes_store) -> None:
    card = manifest(diabetes_store)
    test = card["metrics"]["test"]  # type: ignore[index]
    assert cards.task(card) == cards.REGRESSION
    assert cards.headline(card) == ("Test RMSE", f"{test['rmse']:.4g}")
    frame = cards.metrics_frame(card)
    assert list(frame.columns) == ["MAE", "RMSE", "R²", "MAPE"]
    assert frame.loc["test", "MAE"] == test["mae"] and frame.loc["test", "R²"] == test["r2"]
    assert "F1" not in frame.columns
    assert not set(cards.METRICS[cards.REGRESSION]) & cards.SCORES_0_1  # none on a 0–1 axis
    assert cards.class_labels(card) == {}
    table = cards.schema_table(cards.schema(card))
    assert set(table["type"]) == {"number"} and len(table) == 10
    assert cards.format_metric("mape", 0.387) == "38.7%"


def test_a_regression_answer_is_a_value_in_history_and_batch(diabetes_store) -> None:
    card = manifest(diabetes_store)
    answer = {"prediction_id": "p1", "value": 151.23456, "model_version": "v1", "backup": False}
    assert cards.predicted_value(answer) == pytest.approx(151.23456)
    assert cards.format_value(cards.predicted_value(answer)) == "151.2"
    assert cards.history_entry(card, answer) == {"prediction_id": "p1", "value": 151.23456}
    assert cards.predicted_value({"label": 1}) is None

    rows = pd.read_csv(DATA.parent / "diabetes.csv").head(4)
    features = [f["name"] for f in card["feature_schema"]]  # type: ignore[union-attr]
    upload = batch.read_upload(rows.to_csv(index=False).encode(), features, target="progression")
    assert upload.has_target and upload.target == "progression" and upload.ignored == []
    values = [100.0, 200.0, 50.0]
    answers = [
        {"prediction_id": f"p{i}", "value": v, "model_version": "v1", "backup": False}
        for i, v in enumerate(values)
    ] + [None]
    table = batch.result_table(
        upload, answers, [None, None, None, "row: bmi is missing"], "regression"
    )
    assert "value" in table.columns and "label" not in table.columns
    # the answer leads and the uploaded columns follow (issue 29)
    assert list(table.columns)[:3] == ["row", "value", "prediction_id"]
    assert list(table.columns)[-len(rows.columns) :] == list(rows.columns)
    assert table["value"].tolist()[:3] == values
    errors = batch.errors(table, "progression")
    diff = [abs(v - t) for v, t in zip(values, rows["progression"].head(3), strict=True)]
    assert errors is not None and errors["rows"] == 3
    assert errors["mae"] == pytest.approx(sum(diff) / 3)
    assert errors["rmse"] == pytest.approx((sum(d * d for d in diff) / 3) ** 0.5)
    assert batch.accuracy(table, "progression") is None  # no accuracy for a regression


def test_a_batch_upload_sends_categories_as_text_and_empty_cells_as_null(
    penguins_store,
) -> None:
    card = manifest(penguins_store)
    schema = card["feature_schema"]
    features = [f["name"] for f in schema]  # type: ignore[union-attr]
    text = (
        "species,island,bill_length_mm,bill_depth_mm,flipper_length_mm,body_mass_g,sex,year\n"
        "Adelie,Dream,39.1,,181,3750,,2007\n"
        "Gentoo,3,46.1,13.2,211,4500,female,2008\n"
    )
    upload = batch.read_upload(text.encode(), features, {"island", "sex"}, "species")
    assert upload.has_target and upload.target == "species" and upload.ignored == []
    first, second = upload.rows
    assert first["island"] == "Dream" and first["sex"] is None and first["bill_depth_mm"] is None
    assert first["flipper_length_mm"] == 181.0
    assert second["island"] == "3"  # a category stays text, even when it reads as a number
    table = batch.result_table(
        upload,
        [{"label": "Adelie", "prediction_id": "a"}, {"label": "Adelie", "prediction_id": "b"}],
        [None, None],
    )
    assert batch.accuracy(table, "species") == pytest.approx(0.5)
    # the class, its probability and the id lead; the uploaded columns follow (issue 29)
    lead = ["row", "label_name", "label", "probability", "prediction_id"]
    assert list(table.columns)[: len(lead)] == lead
    assert list(table.columns)[-len(upload.frame.columns) :] == list(upload.frame.columns)


# -- a regression version through a real serving process --------------------------------------


def test_predict_shows_a_regression_value_and_takes_a_numeric_label(
    diabetes_serving, diabetes_store, webapp_env
) -> None:
    at = page("predict", diabetes_serving.url, webapp_env).run()
    assert not at.exception and not at.error
    assert len(at.number_input) == 10 and not at.selectbox
    at.button(key="FormSubmitter:predict_form-Predict").click().run()
    assert not at.exception and not at.error
    answer = at.session_state["predict_result"]["answer"]
    assert set(answer) >= {"prediction_id", "value", "model_version"} and "label" not in answer
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Predicted progression"] == cards.format_value(answer["value"])
    assert "Probability" not in metrics and "Label" not in metrics and not at.get("progress")

    # the true value is a number, preset to the prediction
    field = at.number_input(key="predict_true_value")
    assert field.value == pytest.approx(answer["value"])
    field.set_value(151.0)
    at.button(key="FormSubmitter:predict_feedback_form-Send feedback").click().run()
    assert not at.exception and not at.error
    assert "true value 151" in at.success[0].value
    stored = datalog.read_feedback(diabetes_store)
    target = stored.loc[stored["prediction_id"] == answer["prediction_id"], "target"]
    assert float(target.iloc[0]) == 151.0


def test_label_takes_a_number_for_a_regression(
    diabetes_serving, diabetes_store, webapp_env
) -> None:
    row = pd.read_csv(DATA.parent / "diabetes.csv").drop(columns="progression").iloc[0]
    prediction_id = httpx.post(
        diabetes_serving.url + "/predict", json={"features": row.to_dict()}
    ).json()["predictions"][0]["prediction_id"]
    at = page("label", diabetes_serving.url, webapp_env).run()
    assert not at.exception and not at.selectbox  # no class to pick
    at.text_input(key="label_prediction_id").input(prediction_id)
    at.button(key="FormSubmitter:label_form-Send label").click().run()
    assert len(at.error) == 1 and "Enter the true value" in at.error[0].value
    at.number_input(key="label_true_value").set_value(97.5)
    at.button(key="FormSubmitter:label_form-Send label").click().run()
    assert not at.exception and not at.error
    assert f"prediction {prediction_id} is 97.5" in at.success[0].value
    stored = datalog.read_feedback(diabetes_store)
    assert float(stored.loc[stored["prediction_id"] == prediction_id, "target"].iloc[0]) == 97.5


def test_batch_and_model_pages_of_a_regression(diabetes_serving, webapp_env) -> None:
    rows = pd.read_csv(DATA.parent / "diabetes.csv").head(6)
    csv = rows.to_csv(index=False).replace(f"\n{rows.iloc[2, 0]},", "\nold,", 1)
    at = page("batch", diabetes_serving.url, webapp_env).run()
    at.file_uploader(key="batch_file").upload("rows.csv", csv.encode(), "text/csv")
    at.run()
    at.button(key="batch_run").click().run()
    assert not at.exception
    assert "Predicted 5 of 6 rows; 1 failed" in at.success[0].value
    table = at.dataframe[0].value
    assert "value" in table.columns and "label" not in table.columns
    # the answer leads and the uploaded columns follow (issue 29)
    assert list(table.columns)[:3] == ["row", "value", "prediction_id"]
    assert list(table.columns)[-len(rows.columns) :] == list(rows.columns)
    assert table["value"].notna().sum() == 5 and "progression" in table.columns
    assert any("MAE" in c.value and "RMSE" in c.value for c in at.caption)
    assert "age" in at.dataframe[1].value["error"].iloc[0]

    at = page("model", diabetes_serving.url, webapp_env).run()
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Task"] == "regression" and "Test RMSE" in metrics and "Test F1" not in metrics
    versions = at.table[0].value  # a table: every column shown whole (issue 29)
    assert {"test mae", "test rmse", "test r2"} <= set(versions.columns)
    assert not any(c.endswith("f1") for c in versions.columns)
    assert [c.value for c in at.caption if c.value.startswith("Test ")] == [
        "Test MAE",
        "Test RMSE",
        "Test R²",
        "Test MAPE",
    ]  # one chart each: no shared 0–1 axis


def test_a_regression_reports_numbers_are_shown_with_errors_rising_as_bad_news() -> None:
    from mlplatform_webapp import summary

    # the reporter's summary of a regression window (report.py ReportResult.summary)
    report = {
        "model_version": "v2",
        "task": "regression",
        "rows": {"production": 80, "labelled": 30, "reference": 353},
        "drift": {"embedding": {"share": 0.1, "drifted_columns": 1, "detected": False}},
        "quality": {"rows": 30, "min_rows": 20, "mae": 41.5, "rmse": 52.25, "r2": 0.41},
        "quality_status": "partial",
        "quality_note": "quality is partial on the 30 labelled rows: no MAPE (a true value is 0)",
        "notes": [],
    }
    numbers = summary.numbers(report)
    assert numbers["MAE"] == 41.5 and numbers["RMSE"] == 52.25 and numbers["R²"] == 0.41
    assert "MAPE" not in numbers and "F1" not in numbers and "Accuracy" not in numbers
    assert numbers["Labelled rows"] == 30
    assert {"MAE", "RMSE", "MAPE"} == summary.LOWER_IS_BETTER
    assert summary.numbers({"quality": {"roc_auc": 0.93}})["ROC AUC"] == 0.93
