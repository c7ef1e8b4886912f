"""Retraining a regression model and a classifier of categories and missing cells, on a real S3
store: the gate compares by the task's metric in its direction; and the ``train`` command."""

from __future__ import annotations

import logging
import subprocess
import time
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlplatform_common import datalog, keys
from mlplatform_common.errors import ConfigurationError
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.schema import Dataset
from mlplatform_common.storage import Store
from mlplatform_retrainer.gate import decide
from mlplatform_retrainer.job import publish, upload_dataset
from mlplatform_retrainer.retrain import _rows_of, line_best, rollback, run
from mlplatform_retrainer.settings import RetrainerSettings
from mlplatform_retrainer.train import TrainConfig, split, train
from tests.conftest import DATA, SIGNING_KEY, S3Server, publish_trained, run_cli
from tests.services.retrainer.conftest import retrainer_settings


def s3_settings(server: S3Server, store: Store, **kw: Any) -> RetrainerSettings:
    common = server.settings(store.bucket)  # type: ignore[attr-defined]
    return retrainer_settings(
        store_url=common.store_url,
        s3_endpoint=common.s3_endpoint,
        s3_access_key=common.s3_access_key,
        s3_secret_key=common.s3_secret_key,
        **kw,
    )


def held_out(dataset: Dataset) -> pd.Index:
    """The rows the retrainer's split keeps for its gate."""
    return split(dataset.X, dataset.y, TrainConfig(), task=dataset.task).X_test.index


def corrupted(dataset: Dataset, y: pd.Series) -> pd.Series:
    """Wrong targets: values mirrored about their range's middle; classes rotated by one."""
    if dataset.task == "regression":
        return dataset.y.max() + dataset.y.min() - y
    classes = sorted(dataset.y.unique())
    return y.map({c: classes[(i + 1) % len(classes)] for i, c in enumerate(classes)})


def write_labelled(
    store: Store, dataset: Dataset, rows: pd.Index, y: pd.Series, *, start: float
) -> None:
    """Labelled rows as serving stores them: features as sent (category text, null for a
    missing cell), the prediction, the target as text."""
    for i, idx in enumerate(rows):
        features = {k: (None if pd.isna(v) else v) for k, v in dataset.X.loc[idx].items()}
        target = y.loc[idx]
        datalog.write_feedback(
            store,
            {
                "prediction_id": None,
                "model_version": "v1",
                "prediction": float(target) if dataset.task == "regression" else str(target),
                "target": str(float(target)) if dataset.task == "regression" else str(target),
                "features": features,
            },
            ts=start + i * 0.001,
        )


def weak_v1(store: Store, dataset: Dataset) -> None:
    """v1 in production: trained with half of its targets wrong, so better data beats it."""
    y = dataset.y.copy()
    wrong = dataset.y.sample(frac=0.5, random_state=1).index
    y.loc[wrong] = corrupted(dataset, dataset.y.loc[wrong])
    result = train(dataset.X, y, TrainConfig(), task=dataset.task)
    upload_dataset(store, dataset)
    publish_trained(ModelRegistry(store, SIGNING_KEY), result, dataset)


@pytest.mark.parametrize("data", ["diabetes", "penguins"])
def test_a_better_candidate_is_promoted_a_corrupted_one_rejected_and_rollback_works(
    data: str, request: pytest.FixtureRequest, s3_server: S3Server
) -> None:
    dataset: Dataset = request.getfixturevalue(f"{data}_dataset")
    store = s3_server.store()
    weak_v1(store, dataset)
    registry = ModelRegistry(store, SIGNING_KEY)
    # The reference data set is production's, not the setting (breast_cancer); the estimator
    # setting of an install (a classifier) gives way to production's on a regression.
    settings = s3_settings(s3_server, store, estimator="logistic_regression")
    assert settings.dataset_name != data
    metric, lower_is_better = ("rmse", True) if dataset.task == "regression" else ("f1", False)

    new = dataset.X.index.difference(held_out(dataset))
    write_labelled(store, dataset, new[:60], dataset.y, start=time.time())
    result = run(settings)
    assert result.outcome == "promoted", result.describe()
    gate = result.gate
    assert gate is not None and gate.metric == metric and result.metric == metric
    # better in the metric's direction, on the holdout and on the reference part
    for candidate, current in (
        (gate.candidate, gate.current),
        (gate.reference_candidate, gate.reference_current),
    ):
        assert (candidate < current) if lower_is_better else (candidate > current)
    direction = "lower is better" if lower_is_better else "higher is better"
    assert f"({metric}: {direction};" in gate.reason
    manifest = registry.manifest("v2")
    assert manifest["task"] == dataset.task and manifest["training_data"]["feedback_rows"] == 48
    assert manifest["training_data"]["dataset"] == data
    assert manifest["estimator"] == ("ridge" if lower_is_better else "logistic_regression")
    (record,) = store.list_keys(keys.RETRAIN_RUNS)
    assert store.get_json(record)["metric"] == metric
    assert store.get_json(record)["direction"] == direction

    # Wrong targets for many rows: the candidate is worse on the reference part, in the
    # metric's direction, and the gate keeps v2.
    many = pd.Index(np.resize(new.to_numpy(), 600))
    write_labelled(store, dataset, many, corrupted(dataset, dataset.y), start=time.time() + 10)
    rejected = run(settings)
    assert rejected.outcome == "rejected", rejected.describe()
    assert rejected.gate is not None
    worse = rejected.gate.reference_candidate, rejected.gate.reference_current
    assert (worse[0] > worse[1]) if lower_is_better else (worse[0] < worse[1])
    assert rejected.gate.reason.startswith(f"rejected: candidate {metric}=")
    assert registry.production_version() == "v2" and registry.versions() == ["v1", "v2"]

    alias = rollback(settings)
    assert alias["version"] == "v1" and registry.production_version() == "v1"


def test_labelled_rows_of_the_held_out_split_are_found_by_their_category_text(
    penguins_dataset: Dataset, s3_server: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    dataset = penguins_dataset
    store = s3_server.store()
    weak_v1(store, dataset)
    held = held_out(dataset)
    replayed = held[:6]
    assert dataset.X.loc[replayed, "island"].map(type).eq(str).all()
    new = dataset.X.index.difference(held)[:30]
    write_labelled(store, dataset, new, dataset.y, start=time.time())
    write_labelled(store, dataset, replayed, dataset.y, start=time.time() + 5)
    with caplog.at_level(logging.INFO, logger="mlplatform"):
        result = run(s3_settings(s3_server, store))
    assert result.outcome == "promoted", result.describe()
    assert f"left out {len(replayed)} labelled rows that are rows of the reference" in caplog.text
    manifest = ModelRegistry(store, SIGNING_KEY).manifest("v2")
    assert manifest["training_data"]["feedback_rows"] == 24  # the 30 others, 20% held out


def test_a_held_out_row_is_found_with_missing_cells_and_unseen_values(
    penguins_trained, penguins_dataset: Dataset
) -> None:
    rows = penguins_dataset.X.head(4).copy()
    rows.loc[rows.index[0], ["sex", "bill_length_mm"]] = np.nan  # NaN equals NaN here
    rows.loc[rows.index[1], "island"] = "Atlantis"  # a value the schema never saw
    labelled = pd.concat([rows.iloc[[1, 0]], penguins_dataset.X.iloc[[10]]])
    labelled = labelled.astype(object)  # as read from the log: text and floats, None missing
    labelled = labelled.where(labelled.notna(), None)
    found = _rows_of(labelled, rows, penguins_trained.schema)
    assert found.tolist() == [True, True, False]
    other = labelled.copy()
    # another unseen value is the same row to the models (it encodes alike): held out too
    other.loc[other.index[0], "island"] = "Elsewhere"
    assert _rows_of(other, rows, penguins_trained.schema).tolist() == [True, True, False]


def test_the_regression_quality_trigger_is_the_production_test_error_made_worse(
    diabetes_trained, diabetes_dataset: Dataset, s3_server: S3Server
) -> None:
    store = s3_server.store()
    upload_dataset(store, diabetes_dataset)
    publish_trained(ModelRegistry(store, SIGNING_KEY), diabetes_trained, diabetes_dataset)
    test_rmse = diabetes_trained.metrics["test"]["rmse"]
    settings = s3_settings(s3_server, store, retrain_every=0)

    def report(report_id: str, rmse: float) -> None:
        store.put_json(
            keys.report_file(report_id, "summary.json"),
            {"id": report_id, "quality": {"rmse": rmse, "f1": 0.1}},
        )

    report("2026-12-01T00-00-00Z", test_rmse * 1.2)  # within the default 25%
    assert run(settings).reasons == ["no trigger"]
    report("2026-12-02T00-00-00Z", test_rmse * 1.3)
    result = run(settings)
    threshold = test_rmse * 1.25
    assert result.reasons[0] == (
        f"rmse {test_rmse * 1.3:.3f} > {threshold:.4g} in report 2026-12-02T00-00-00Z"
    )
    # a threshold set by hand wins; r2 is a score: below it triggers
    report("2026-12-03T00-00-00Z", test_rmse)
    scored = s3_settings(s3_server, store, quality_metric="r2", quality_threshold=0.9)
    store.put_json(
        keys.report_file("2026-12-03T00-00-00Z", "summary.json"),
        {"id": "2026-12-03T00-00-00Z", "quality": {"r2": 0.45}},
    )
    assert "r2 0.450 < 0.9 in report 2026-12-03T00-00-00Z" in run(scored).reasons


def test_a_metric_of_another_task_is_refused_in_one_line(
    diabetes_trained, diabetes_dataset: Dataset, s3_server: S3Server
) -> None:
    store = s3_server.store()
    upload_dataset(store, diabetes_dataset)
    publish_trained(ModelRegistry(store, SIGNING_KEY), diabetes_trained, diabetes_dataset)
    with pytest.raises(ConfigurationError) as info:
        run(s3_settings(s3_server, store, quality_metric="f1"), force=True)
    assert info.value.message == (
        "MLPLATFORM_QUALITY_METRIC='f1' is not a regression metric; "
        "choose one of rmse, mae, r2, mape"
    )
    assert RetrainerSettings(quality_metric="rmse").metric_for("regression") == "rmse"
    assert RetrainerSettings().metric_for("regression") == "rmse"
    assert RetrainerSettings().metric_for("classification") == "f1"


def test_the_charts_unset_quality_settings_read_as_the_tasks_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the chart renders a null qualityThreshold as an empty variable
    monkeypatch.setenv("MLPLATFORM_QUALITY_THRESHOLD", "")
    monkeypatch.setenv("MLPLATFORM_QUALITY_METRIC", "")
    settings = RetrainerSettings()
    assert settings.quality_threshold is None and settings.quality_metric is None
    assert settings.metric_for("regression") == "rmse"


def _errors(holdout: float, reference: float) -> dict[str, dict[str, float]]:
    return {"holdout": {"rmse": holdout}, "reference": {"rmse": reference}}


def test_the_gate_compares_errors_lower_is_better_with_a_relative_tolerance() -> None:
    # 2% of an RMSE of 50 is 1: 50.9 passes, 51.1 does not; a lower error always passes
    assert decide(_errors(50.9, 50.9), _errors(50.0, 50.0), "rmse", 0.02, 100).promote
    assert decide(_errors(40.0, 40.0), _errors(50.0, 50.0), "rmse", 0.0, 100).promote
    worse = decide(_errors(51.1, 50.0), _errors(50.0, 50.0), "rmse", 0.02, 100)
    assert not worse.promote
    assert worse.reason.endswith("(rmse: lower is better; tolerance 2% relative)")
    # the line's best is its lowest error
    slid = decide(_errors(50.0, 50.0), _errors(49.5, 49.5), "rmse", 0.02, 100, reference_best=45)
    assert not slid.promote and "best of its line 45.0000" in slid.reason


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli("mlplatform_retrainer", args, env)


def test_train_publishes_a_regression_version_and_refuses_classification_of_it(
    s3_server: S3Server,
) -> None:
    store = s3_server.store()
    env = {
        "MLPLATFORM_STORE_URL": f"s3://{store.bucket}",
        "MLPLATFORM_S3_ENDPOINT": s3_server.endpoint,
        "MLPLATFORM_S3_ACCESS_KEY": s3_server.keys["access_key"],
        "MLPLATFORM_S3_SECRET_KEY": s3_server.keys["secret_key"],
        "MLPLATFORM_SIGNING_KEY": SIGNING_KEY.decode(),
        "MLPLATFORM_ROLLOUT": "none",
    }
    data = str(DATA.parent / "diabetes.csv")
    proc = _cli(["train", "--data", data], env)
    assert proc.returncode == 0, proc.stderr
    registry = ModelRegistry(store, SIGNING_KEY)
    manifest = registry.manifest(registry.production_version())
    assert manifest["task"] == "regression" and manifest["classes"] == []
    test = manifest["metrics"]["test"]
    assert f"rmse={test['rmse']:.3f}" in proc.stdout and f"r2={test['r2']:.3f}" in proc.stdout
    assert "f1=" not in proc.stdout

    refused = _cli(["train", "--data", data, "--task", "classification"], env)
    assert refused.returncode != 0
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "classification" in lines[0], refused.stderr
    assert registry.versions() == ["v1"]


def test_the_lines_best_error_is_its_lowest(
    local_store: Store, diabetes_trained, diabetes_dataset: Dataset
) -> None:
    registry = ModelRegistry(local_store, SIGNING_KEY)
    publish_trained(registry, diabetes_trained, diabetes_dataset)
    sha, seed = diabetes_dataset.sha256, TrainConfig().seed

    def retrained(parent: str, current: float, candidate: float) -> str:
        gate = {"metric": "rmse", "reference_current": current, "reference_candidate": candidate}
        data = {"sha256": sha, "split_seed": seed, "held_out_excluded": True}
        version = publish(
            registry,
            diabetes_trained,
            diabetes_dataset,
            TrainConfig(),
            parent=parent,
            extra={"gate": gate, "training_data": data},
        )
        registry.promote(version)
        return version

    v2 = retrained("v1", 55.0, 52.0)  # v1 measured 55 by v2's gate
    v3 = retrained(v2, 52.0, 53.0)
    assert line_best(registry, v3, "rmse", sha, seed) == 52.0
