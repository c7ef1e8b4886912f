"""Issue 26 in the reporter: any task, any column type, from the prediction log to Prometheus.

A regression version (diabetes) and a version with categories and missing cells (penguins),
each published to a real store, with log rows written in the serving's format (categories as
text, ``UNKNOWN`` for an unseen value, a regression's predicted value as ``prediction``), then a
real report run pushing to a real Pushgateway scraped by a real Prometheus.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from mlplatform_common import keys
from mlplatform_common.schema import UNKNOWN
from mlplatform_common.storage import Store
from mlplatform_reporter import job
from mlplatform_reporter.report import (
    DriftConfig,
    ReportInput,
    build_report,
    regression_quality,
)
from tests.services.reporter.conftest import (
    PromStack,
    log_traffic,
    published,
    reporter_settings,
    split_rows,
)

R = '{job="mlplatform-reporter",instance="mlplatform"'


def _q(name: str, **labels: str) -> str:
    extra = "".join(f',{k}="{v}"' for k, v in labels.items())
    return f"{name}{R}{extra}}}"


@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_a_regression_version_reports_its_errors_and_the_drift_of_a_shifted_number(
    store: Store, diabetes_dataset, diabetes_trained, prom_stack: PromStack
) -> None:  # type: ignore[no-untyped-def]
    prom_stack.clear()
    model = published(store, diabetes_trained, diabetes_dataset)
    rows = split_rows(diabetes_dataset, "regression")
    drifted = rows.copy()
    drifted["bmi"] += 2 * diabetes_dataset.X["bmi"].std()  # a shifted number
    sent = log_traffic(store, model, drifted, labelled=1.0, seed=3)
    assert len(sent) == len(rows) >= 30

    settings = reporter_settings(pushgateway_url=prom_stack.pushgateway_url)
    outcome = job.run(settings, store=store)
    summary = store.get_json(keys.report_file(outcome.report_id, "summary.json"))
    html = store.get(keys.report_file(outcome.report_id, "report.html")).decode()
    assert summary["task"] == "regression"

    # drift per column type: every diabetes feature is a number, tested with ks
    raw = summary["drift"]["raw"]
    assert set(raw["column_types"].values()) == {"numerical"}
    assert raw["tests"] == {"numerical": {"method": "ks", "threshold": 0.05}}
    assert raw["scores"]["bmi"] < 0.05
    assert "embedding" in summary["drift"]

    # regression quality against scikit-learn on the rows as sent (target stored as text)
    truth = pd.to_numeric(sent["target"]).to_numpy()
    pred = sent["prediction"].to_numpy(dtype=float)
    q = summary["quality"]
    expected = {
        "mae": skm.mean_absolute_error(truth, pred),
        "rmse": float(np.sqrt(skm.mean_squared_error(truth, pred))),
        "r2": skm.r2_score(truth, pred),
        "mape": skm.mean_absolute_percentage_error(truth, pred),
    }
    assert q["rows"] == len(sent) and q["min_rows"] == 30
    for name, value in expected.items():
        assert q[name] == pytest.approx(value, abs=1e-6), name
    assert not {"f1", "accuracy", "roc_auc", "roc_auc_rows"} & set(q)
    assert summary["quality_status"] == "complete"
    assert f"Regression quality ({len(sent)} labelled rows)" in html

    # pushed with the task, scraped by Prometheus; no classification number
    for name in ("mae", "rmse", "r2", "mape"):
        prom_stack.wait_for(_q(f"mlplatform_model_{name}", task="regression"), q[name])
    prom_stack.wait_for(
        _q("mlplatform_feature_drift_score", feature="bmi", space="raw", method="ks"),
        raw["scores"]["bmi"],
    )
    prom_stack.wait_for(
        _q("mlplatform_report_rows", dataset="labelled", task="regression"), len(sent)
    )
    prom_stack.wait_absent(_q("mlplatform_model_f1"))

    # prod_data.csv: the regression targets as the course's format keeps them
    export = pd.read_csv(io.BytesIO(store.get(keys.PROD_DATA)))
    assert len(export) == len(sent)
    assert sorted(export["target"]) == pytest.approx(sorted(truth))


def _window(X: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    return X.sample(n=n, replace=True, random_state=seed).reset_index(drop=True)


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_categories_and_missing_cells_drift_by_their_type(
    store: Store, penguins_dataset, penguins_trained, prom_stack: PromStack
) -> None:  # type: ignore[no-untyped-def]
    prom_stack.clear()
    model = published(store, penguins_trained, penguins_dataset)
    data = penguins_dataset.X.assign(target=penguins_dataset.y)
    assert data.isna().any().any()  # the shipped table has missing cells
    settings = reporter_settings(pushgateway_url=prom_stack.pushgateway_url, window_hours=0)

    calm_rows = _window(data, 200, seed=1)
    sent = log_traffic(store, model, calm_rows, labelled=1.0, seed=1, ts=time.time() - 10)
    calm = job.run(settings, store=store)

    stormy_rows = _window(data, 200, seed=2)
    rng = np.random.default_rng(2)
    # the island mix shifts to Torgersen; a number shifts; some sexes are values the model
    # never saw (logged as UNKNOWN) and some cells are missing
    moved = rng.random(len(stormy_rows)) < 0.6
    stormy_rows.loc[moved, "island"] = "Torgersen"
    stormy_rows["flipper_length_mm"] += 15.0
    stormy_rows.loc[:19, "sex"] = "unknown-sex"
    stormy_rows.loc[20:34, "sex"] = None
    stormy_rows.loc[35:44, "bill_length_mm"] = np.nan
    log_traffic(store, model, stormy_rows, seed=2, ts=time.time())  # after the calm report
    stormy = job.run(settings, store=store, now=time.time() + 1)

    column_types = {
        "island": "categorical",
        "sex": "categorical",
        **{f: "numerical" for f in penguins_dataset.features if f not in ("island", "sex")},
    }
    tests = {
        "numerical": {"method": "ks", "threshold": 0.05},
        "categorical": {"method": "chisquare", "threshold": 0.05},
    }
    for outcome in (calm, stormy):
        assert "raw" in outcome.result.drift, outcome.result.notes
        raw = outcome.result.summary()["drift"]["raw"]
        assert raw["column_types"] == column_types
        assert raw["tests"] == tests
        assert raw["untested"] == {}
        assert set(outcome.result.drift) == {"embedding", "raw"}
    calm_raw = calm.result.drift["raw"]
    assert not calm_raw.detected
    for col in ("island", "sex", "flipper_length_mm"):
        assert calm_raw.scores[col] >= 0.05, (col, calm_raw.scores)

    raw = stormy.result.drift["raw"]
    assert raw.scores["island"] < 0.05  # chi-square on the shifted mix
    assert raw.scores["flipper_length_mm"] < 0.05  # ks on the shifted number
    assert raw.scores["sex"] == 0.0  # an unseen value: expected count 0 in the reference
    assert stormy.result.rows["production"] == len(stormy_rows)  # missing cells are rows too
    assert stormy.result.drift["embedding"].detected

    # the logged rows were text and UNKNOWN, as the contract says
    from mlplatform_common import datalog

    logged = datalog.read_predictions(store)
    assert UNKNOWN in set(logged["sex"].dropna())
    assert logged["island"].map(type).eq(str).all()

    # drift per type in Prometheus, with the test in the method label
    for col, method in (("island", "chisquare"), ("flipper_length_mm", "ks"), ("sex", "chisquare")):
        prom_stack.wait_for(
            _q(
                "mlplatform_feature_drift_score",
                feature=col,
                space="raw",
                method=method,
                task="classification",
            ),
            raw.scores[col],
        )
    # the calm window's three classes were all labelled: multiclass ROC AUC was pushed then
    quality = calm.result.quality
    assert quality is not None and quality.rows == len(sent) and quality.roc_auc is not None
    assert stormy.result.quality is None  # no labels in the second window
    export = pd.read_csv(io.BytesIO(store.get(keys.PROD_DATA)))
    assert len(export) == len(sent) and np.isfinite(export.filter(like="PCA_").to_numpy()).all()


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_quality_needs_the_minimum_of_labelled_rows(
    store: Store, model, heldout: pd.DataFrame, prom_stack: PromStack
) -> None:  # type: ignore[no-untyped-def]
    """One labelled row predicted right read as F1 = 1.000: below the minimum the report gives
    the count and how many are needed, and pushes no number."""
    prom_stack.clear()
    log_traffic(store, model, heldout.iloc[:40], ts=time.time() - 10)
    sent = log_traffic(store, model, heldout.iloc[40:45], labelled=1.0)
    assert len(sent) == 5

    settings = reporter_settings(pushgateway_url=prom_stack.pushgateway_url)  # default 30
    outcome = job.run(settings, store=store)
    summary = store.get_json(keys.report_file(outcome.report_id, "summary.json"))
    html = store.get(keys.report_file(outcome.report_id, "report.html")).decode()
    assert summary["quality"] == {"rows": 5, "min_rows": 30, "roc_auc_rows": 0}
    assert summary["quality_status"] == "empty"
    note = summary["quality_note"]
    assert "at least 30 labelled rows" in note and "the window has 5" in note
    assert note in html and "Classification quality" not in html
    assert set(summary["drift"]) == {"embedding", "raw"}  # drift does not need labels
    prom_stack.wait_for(_q("mlplatform_report_rows", dataset="labelled"), 5)
    for name in ("f1", "accuracy", "precision", "recall", "balanced_accuracy", "roc_auc"):
        prom_stack.wait_absent(_q(f"mlplatform_model_{name}"))

    # at the minimum, the numbers are there and pushed
    enough = reporter_settings(pushgateway_url=prom_stack.pushgateway_url, min_labelled_rows=5)
    outcome = job.run(enough, store=store, now=time.time() + 1)
    quality = outcome.result.quality
    assert quality is not None and quality.rows == 5 and quality.accuracy is not None
    expected = skm.accuracy_score(sent["target"], sent["prediction"])
    assert quality.accuracy == pytest.approx(expected, abs=1e-12)
    prom_stack.wait_for(_q("mlplatform_model_accuracy", task="classification"), expected)


def test_the_minimum_applies_to_regression_rows_whose_label_is_a_number(
    diabetes_trained, diabetes_dataset
) -> None:  # type: ignore[no-untyped-def]
    rows = split_rows(diabetes_dataset, "regression")
    X = rows.drop(columns="target")
    from mlplatform_common.schema import encoded_frame

    pred = diabetes_trained.pipeline.predict(encoded_frame(X, diabetes_trained.schema))
    labelled = pd.DataFrame(
        {
            "target": [str(v) for v in rows["target"]],
            "prediction": [str(v) for v in pred],
            "model_version": "v1",
        }
    )
    labelled.loc[:9, "target"] = "not a number"
    data = ReportInput(
        model_version="v1",
        classes=[],
        schema=diabetes_trained.schema,
        reference_embedding=diabetes_trained.ref_data,
        reference_raw=None,
        production=X,
        labelled=labelled,
        task="regression",
    )
    usable = len(rows) - 10
    result = build_report(
        data, DriftConfig(), diabetes_trained.pipeline, min_labelled_rows=usable + 1
    )
    assert result.quality is not None and result.quality.rows == usable
    assert result.summary()["quality"] == {"rows": usable, "min_rows": usable + 1}
    assert "10 labelled rows whose label or prediction is not a number" in " ".join(result.notes)
    result = build_report(data, DriftConfig(), diabetes_trained.pipeline, min_labelled_rows=usable)
    q = result.summary()["quality"]
    expected = skm.mean_absolute_error(rows["target"].iloc[10:], pred[10:])
    assert q["mae"] == pytest.approx(expected, abs=1e-6)


def test_regression_quality_leaves_out_what_a_window_does_not_define() -> None:
    # a true 0: no percentage error; one row: no R²
    quality = regression_quality(pd.DataFrame({"target": ["0.0", "2.0"], "prediction": [1.0, 2.0]}))
    assert quality.mape is None and quality.mae == pytest.approx(0.5)
    assert "mape" in quality.missing and quality.status == "partial"
    quality = regression_quality(pd.DataFrame({"target": ["4.0"], "prediction": ["2.0"]}))
    assert quality.r2 is None and quality.rmse == pytest.approx(2.0)
    assert "no R²" in (quality.note() or "")


def test_a_category_missing_in_every_row_of_the_window_is_left_out_and_said(
    penguins_trained, penguins_dataset
) -> None:  # type: ignore[no-untyped-def]
    # Evidently refuses a column with no value ("An empty column 'sex' was provided"): the
    # whole report died on a window where a nullable feature was never sent.
    X = penguins_dataset.X.sample(n=60, random_state=4).reset_index(drop=True)
    X["sex"] = None
    data = ReportInput(
        model_version="v1",
        classes=penguins_trained.classes,
        schema=penguins_trained.schema,
        reference_embedding=penguins_trained.ref_data,
        reference_raw=penguins_dataset.X,
        production=X,
        labelled=pd.DataFrame(),
    )
    result = build_report(data, DriftConfig(), penguins_trained.pipeline, min_labelled_rows=30)
    raw = result.drift["raw"]
    assert raw.untested == {"sex": "no value in the production window (every cell missing)"}
    assert "sex" not in raw.scores and len(raw.scores) == len(penguins_dataset.features) - 1
    assert raw.column_types["island"] == "categorical"
    assert "raw feature sex is not tested for drift" in " ".join(result.notes)
    assert result.rows["production"] == 60
