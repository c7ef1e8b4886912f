"""report.py: Evidently numbers against scikit-learn, drift against simulated drift, pure HTML."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from mlplatform_reporter.report import (
    DriftConfig,
    ReportInput,
    build_report,
    drift_report,
    embed,
    metric_results,
    metric_value,
    prod_data,
    quality_metrics,
)
from mlplatform_reporter.simulate import rebalance, shift_scale


def _input(trained, shipped_dataset, production, labelled=None):  # type: ignore[no-untyped-def]
    return ReportInput(
        model_version="v1",
        classes=trained.classes,
        schema=trained.schema,
        reference_embedding=trained.ref_data,
        reference_raw=shipped_dataset.X,
        production=production,
        labelled=labelled if labelled is not None else pd.DataFrame(),
        window={"mode": "test"},
    )


def _labelled(trained, X: pd.DataFrame, y: pd.Series, flip: float, seed: int = 0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    truth = y.astype(str).to_numpy().copy()
    flipped = rng.random(len(truth)) < flip
    truth[flipped] = np.where(truth[flipped] == "1", "0", "1")
    proba = trained.pipeline.predict_proba(X)
    return pd.DataFrame(
        {
            "prediction_id": [f"p{i}" for i in range(len(X))],
            "target": truth,
            "prediction": trained.pipeline.predict(X).astype(str),
            "proba_json": [json.dumps(list(p)) for p in proba],
        }
    ), proba


def test_binary_quality_matches_scikit_learn(trained, heldout) -> None:  # type: ignore[no-untyped-def]
    X, y = heldout.drop(columns="target"), heldout["target"]
    labelled, proba = _labelled(trained, X, y, flip=0.25)
    quality = quality_metrics(labelled, trained.classes)
    t, p = labelled["target"], labelled["prediction"]
    assert quality.rows == len(X)
    assert quality.accuracy == pytest.approx(skm.accuracy_score(t, p), abs=1e-12)
    assert quality.precision == pytest.approx(skm.precision_score(t, p, pos_label="1"), abs=1e-12)
    assert quality.recall == pytest.approx(skm.recall_score(t, p, pos_label="1"), abs=1e-12)
    assert quality.f1 == pytest.approx(skm.f1_score(t, p, pos_label="1"), abs=1e-12)
    assert quality.balanced_accuracy == pytest.approx(skm.balanced_accuracy_score(t, p), abs=1e-12)
    assert quality.roc_auc == pytest.approx(skm.roc_auc_score(t == "1", proba[:, 1]), abs=1e-12)
    # flipping a quarter of the labels must show: this is not a perfect-score coincidence
    assert quality.f1 < 0.9


def test_multiclass_quality_matches_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    classes = ["a", "b", "c"]
    n = 300
    truth = rng.choice(classes, n)
    pred = np.where(rng.random(n) < 0.7, truth, rng.choice(classes, n))
    raw = rng.random((n, 3)) + np.eye(3)[[classes.index(p) for p in pred]]
    proba = raw / raw.sum(axis=1, keepdims=True)
    labelled = pd.DataFrame(
        {"target": truth, "prediction": pred, "proba_json": [json.dumps(list(r)) for r in proba]}
    )
    quality = quality_metrics(labelled, classes)
    assert quality.accuracy == pytest.approx(skm.accuracy_score(truth, pred), abs=1e-12)
    assert quality.precision == pytest.approx(
        skm.precision_score(truth, pred, average="macro"), abs=1e-12
    )
    assert quality.recall == pytest.approx(
        skm.recall_score(truth, pred, average="macro"), abs=1e-12
    )
    assert quality.f1 == pytest.approx(skm.f1_score(truth, pred, average="macro"), abs=1e-12)
    assert quality.balanced_accuracy == pytest.approx(
        skm.balanced_accuracy_score(truth, pred), abs=1e-12
    )
    assert quality.roc_auc is not None


def test_roc_auc_is_on_the_rows_with_probabilities(trained, heldout) -> None:  # type: ignore[no-untyped-def]
    # One row labelled with its features (no probabilities) took ROC AUC off the whole report.
    X, y = heldout.drop(columns="target"), heldout["target"]
    labelled, proba = _labelled(trained, X, y, flip=0.1)
    labelled.loc[3, "proba_json"] = None  # labelled with its features, or out of the log
    quality = quality_metrics(labelled, trained.classes)
    keep = labelled.index != 3
    t = labelled["target"][keep]
    assert quality.roc_auc == pytest.approx(skm.roc_auc_score(t == "1", proba[keep, 1]), abs=1e-12)
    assert (quality.roc_auc_rows, quality.rows) == (len(labelled) - 1, len(labelled))
    assert quality.f1 == pytest.approx(
        skm.f1_score(labelled["target"], labelled["prediction"], pos_label="1"), abs=1e-12
    )
    # With no row that has probabilities, there is none.
    labelled["proba_json"] = None
    quality = quality_metrics(labelled, trained.classes)
    assert quality.roc_auc is None and quality.roc_auc_rows == 0


def test_quality_of_one_class_only_still_reports(trained, heldout) -> None:  # type: ignore[no-untyped-def]
    rows = heldout[heldout["target"] == 1]
    labelled, _ = _labelled(trained, rows.drop(columns="target"), rows["target"], flip=0.0)
    quality = quality_metrics(labelled, trained.classes)
    assert quality.roc_auc is None  # undefined with one class
    assert quality.balanced_accuracy == pytest.approx(
        skm.balanced_accuracy_score(labelled["target"], labelled["prediction"]), abs=1e-12
    )
    assert quality.recall == pytest.approx(
        skm.recall_score(labelled["target"], labelled["prediction"], pos_label="1"), abs=1e-12
    )


def test_numbers_are_read_by_metric_name_not_position(trained, heldout) -> None:  # type: ignore[no-untyped-def]
    current = embed(trained.pipeline, heldout.drop(columns="target"))
    cols = list(current.columns)
    result, snapshot = drift_report(trained.ref_data, current, cols, "embedding", DriftConfig())
    results = metric_results(snapshot)
    shuffled = results[:]
    random.Random(1).shuffle(shuffled)
    assert shuffled != results
    for col in cols:
        assert metric_value(shuffled, "ValueDrift", column=col) == result.scores[col]
    assert metric_value(shuffled, "DriftedColumnsCount")["count"] == result.drifted_columns
    with pytest.raises(KeyError):
        metric_value(results, "ValueDrift", column="no_such_column")


def test_the_drift_test_is_the_configured_one(trained, heldout) -> None:  # type: ignore[no-untyped-def]
    current = embed(trained.pipeline, heldout.drop(columns="target"))
    cols = list(current.columns)
    ks, _ = drift_report(trained.ref_data, current, cols, "embedding", DriftConfig())
    wass, _ = drift_report(
        trained.ref_data,
        current,
        cols,
        "embedding",
        DriftConfig(method="wasserstein", threshold=0.1),
    )
    assert ks.method == "ks"
    assert wass.method == "wasserstein"
    # a K-S p-value and a Wasserstein distance are different numbers for the same column
    assert ks.scores != wass.scores
    assert all(0.0 <= v <= 1.0 for v in ks.scores.values())


def test_undrifted_traffic_is_not_drift(trained, shipped_dataset, heldout) -> None:  # type: ignore[no-untyped-def]
    result = build_report(
        _input(trained, shipped_dataset, heldout.drop(columns="target")),
        DriftConfig(),
        trained.pipeline,
        min_labelled_rows=1,
    )
    for space in ("embedding", "raw"):
        assert not result.drift[space].detected, result.drift[space]
        assert result.drift[space].share < DriftConfig().share_threshold


@pytest.mark.parametrize(
    ("shift", "scale"),
    [(1.0, 1.0), (0.0, 1.8), (-0.8, 1.3)],
    ids=["shift", "scale", "shift-and-scale"],
)
def test_simulated_covariate_drift_is_drift(
    trained, shipped_dataset, heldout, shift, scale
) -> None:  # type: ignore[no-untyped-def]
    X = heldout.drop(columns="target")
    drifted = shift_scale(X, list(X.columns), shift=shift, scale=scale)
    result = build_report(
        _input(trained, shipped_dataset, drifted),
        DriftConfig(),
        trained.pipeline,
        min_labelled_rows=1,
    )
    for space in ("embedding", "raw"):
        assert result.drift[space].detected, result.drift[space]
        assert result.drift[space].share > DriftConfig().share_threshold


def test_class_balance_change_is_drift(trained, shipped_dataset, heldout) -> None:  # type: ignore[no-untyped-def]
    skewed = rebalance(heldout, "target", {"0": 0.95}, n=200, seed=1)
    result = build_report(
        _input(trained, shipped_dataset, skewed.drop(columns="target")),
        DriftConfig(),
        trained.pipeline,
        min_labelled_rows=1,
    )
    assert result.drift["embedding"].detected
    assert result.drift["raw"].detected


def test_embedding_drift_uses_the_versions_embedding_from_raw_features(
    trained, shipped_dataset, heldout
) -> None:  # type: ignore[no-untyped-def]
    X = heldout.drop(columns="target")
    wrong = X.copy()
    # logged PCA_* columns that disagree with the raw features must be ignored
    for i in range(1, 11):
        wrong[f"PCA_{i}"] = 100.0
    result = build_report(
        _input(trained, shipped_dataset, wrong),
        DriftConfig(),
        trained.pipeline,
        min_labelled_rows=1,
    )
    assert not result.drift["embedding"].detected


def test_no_production_data_says_so(trained, shipped_dataset) -> None:  # type: ignore[no-untyped-def]
    result = build_report(
        _input(trained, shipped_dataset, pd.DataFrame(columns=shipped_dataset.features)),
        DriftConfig(),
        trained.pipeline,
        min_labelled_rows=1,
    )
    assert result.drift == {}
    assert result.quality is None
    assert result.rows["production"] == 0
    assert result.rows["labelled"] == 0
    assert "no production data in the window yet" in result.notes
    assert "no production data in the window yet" in result.html
    assert result.summary()["drift"] == {}


def test_raw_drift_skipped_without_training_data(trained, shipped_dataset, heldout) -> None:  # type: ignore[no-untyped-def]
    data = _input(trained, shipped_dataset, heldout.drop(columns="target"))
    data.reference_raw = None
    result = build_report(data, DriftConfig(), trained.pipeline, min_labelled_rows=1)
    assert set(result.drift) == {"embedding"}
    assert any("no raw-feature drift" in n for n in result.notes)


def test_prod_data_is_the_course_format(trained, shipped_dataset, heldout) -> None:  # type: ignore[no-untyped-def]
    X = heldout.drop(columns="target")
    feedback = X.copy()
    feedback["target"] = heldout["target"].astype(str)
    feedback["prediction"] = trained.pipeline.predict(X).astype(str)
    out = prod_data(trained.pipeline, feedback, trained.schema)
    n = trained.n_components
    assert list(out.columns) == [*[f"PCA_{i}" for i in range(1, n + 1)], "target", "prediction"]
    np.testing.assert_allclose(
        out[[f"PCA_{i}" for i in range(1, n + 1)]].to_numpy(),
        embed(trained.pipeline, X).to_numpy(),
    )
    assert list(out["target"]) == list(feedback["target"])
    empty = prod_data(trained.pipeline, feedback.iloc[0:0], trained.schema)
    assert list(empty.columns) == list(out.columns)
    assert empty.empty


def test_rows_with_values_too_large_to_embed_are_left_out_and_noted(
    trained, shipped_dataset, heldout
) -> None:  # type: ignore[no-untyped-def]
    # Stored before the API refused such values: they overflow the embedding to infinity,
    # and Evidently then failed the whole report.
    X = heldout.drop(columns="target").reset_index(drop=True)
    X.loc[0, "mean_area"] = 1e308
    X.loc[1, "mean_radius"] = -1e200
    result = build_report(
        _input(trained, shipped_dataset, X), DriftConfig(), trained.pipeline, min_labelled_rows=1
    )
    assert result.rows["production"] == len(X) - 2
    assert any(n.startswith("2 logged rows lack some feature, or have one") for n in result.notes)
    feedback = X.copy()
    feedback["target"] = heldout["target"].astype(str).to_numpy()
    feedback["prediction"] = feedback["target"]
    out = prod_data(trained.pipeline, feedback, trained.schema)
    assert len(out) == len(X) - 2 and np.isfinite(out.filter(like="PCA_").to_numpy()).all()


def test_quality_is_the_reported_versions_own(trained, shipped_dataset, heldout) -> None:  # type: ignore[no-untyped-def]
    # After a retrain, labels of the old version's predictions were reported as the new
    # version's quality (and could trigger a retrain of a model they never judged).
    X, y = heldout.drop(columns="target"), heldout["target"]
    labelled, _ = _labelled(trained, X, y, flip=0.3)
    labelled["model_version"] = ["v0" if i % 3 == 0 else "v1" for i in range(len(labelled))]
    result = build_report(
        _input(trained, shipped_dataset, X, labelled),
        DriftConfig(),
        trained.pipeline,
        min_labelled_rows=1,
    )
    own = labelled[labelled["model_version"] == "v1"]
    assert result.rows["labelled"] == len(own) < len(labelled)
    assert result.quality is not None and result.quality.rows == len(own)
    expected = skm.accuracy_score(own["target"], own["prediction"])
    assert result.quality.accuracy == pytest.approx(expected, abs=1e-12)
    gone = (labelled["model_version"] == "v0").sum()
    assert f"{gone} labelled rows of predictions by other versions (v0)" in " ".join(result.notes)


UNSEEN = "7"  # a label the model was not trained on


@st.composite
def _windows(draw: st.DrawFn) -> pd.DataFrame:
    """1-8 labelled rows: labels and predictions from the model's classes or an unseen one,
    each row with probabilities (a normalised vector) or without (labelled with features)."""
    labels = st.sampled_from(["0", "1", UNSEEN])
    n = draw(st.integers(1, 8))
    rows = []
    for _ in range(n):
        weight = draw(st.floats(0.0, 1.0))
        rows.append(
            {
                "target": draw(labels),
                "prediction": draw(labels),
                "proba_json": draw(st.sampled_from([json.dumps([1 - weight, weight]), None])),
            }
        )
    return pd.DataFrame(rows)


@seed(22)
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # heldout is read-only
)
@given(labelled=_windows())
def test_any_small_labelled_window_reports_drift_and_says_what_quality_lacks(
    trained, shipped_dataset, heldout, labelled: pd.DataFrame
) -> None:  # type: ignore[no-untyped-def]
    # Issue 22: one class predicted right killed the whole report (drift too) on a cluster.
    data = _input(trained, shipped_dataset, heldout.drop(columns="target").iloc[:30], labelled)
    data.reference_raw = None  # the embedding's drift is enough here, and twice as fast
    result = build_report(data, DriftConfig(), trained.pipeline, min_labelled_rows=1)

    assert set(result.drift) == {"embedding"}
    assert "Data drift: embedding space" in result.html
    summary = result.summary()
    json.dumps(summary, allow_nan=False)  # the stored summary is strict JSON
    q = summary["quality"]
    assert q["rows"] == len(labelled)
    names = ("accuracy", "precision", "recall", "f1", "balanced_accuracy", "roc_auc")
    for name in names:
        if name in q:
            assert isinstance(q[name], float) and 0.0 <= q[name] <= 1.0, (name, q)
    assert q["accuracy"] == pytest.approx(
        skm.accuracy_score(labelled["target"], labelled["prediction"])
    )
    lacking = [name for name in names if name not in q]
    assert summary["quality_status"] == ("partial" if lacking else "complete")
    note = summary["quality_note"] or ""
    for name in lacking:
        label = {"f1": "F1", "roc_auc": "ROC AUC"}.get(name, name.replace("_", " "))
        assert f"no {label}" in note or f"or {label}" in note, (name, note)
    # where the window has no unseen label, the numbers are scikit-learn's (zero_division nan)
    if UNSEEN not in set(labelled["target"]) | set(labelled["prediction"]):
        t, p = labelled["target"], labelled["prediction"]
        for name, fn in (
            ("precision", skm.precision_score),
            ("recall", skm.recall_score),
            ("f1", skm.f1_score),
        ):
            expected = fn(t, p, pos_label="1", labels=["0", "1"], zero_division=np.nan)
            assert q.get(name, np.nan) == pytest.approx(expected, nan_ok=True), name
    # the section Evidently could draw is in the page; one it could not is said in the note
    drawn = "quality" in result.snapshots
    assert drawn == ("Classification quality" in result.html)
    assert drawn or "Evidently could not draw the quality section" in note
