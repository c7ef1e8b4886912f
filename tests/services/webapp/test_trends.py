"""Issue 29's web side: trends, retrain runs, bulk labels, the system view and the line of
versions, as plain logic on fixture data and as pages (AppTest) against a real serving.

Tests marked "API branch" call endpoints of the issue-29 contract that the serving gains in
its own branch (``GET /retrain-runs``, batch ``POST /feedback``, ``predictions_by_version``):
they pass once both branches are merged.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest

from mlplatform_common import keys
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import LocalStore
from mlplatform_reporter.report import prediction_summary
from mlplatform_retrainer.gate import GateResult
from mlplatform_retrainer.retrain import RunResult, _write_run_record
from mlplatform_webapp import labels, runs, samples, system, trends
from tests.conftest import SIGNING_KEY, ServingProcess, publish_trained, published_local_store
from tests.services.webapp.conftest import WRITER_TOKEN, page, serving_env, texts, write_report

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def summary_at(
    at: datetime,
    *,
    version: str = "v1",
    embedding: float = 0.1,
    raw: float | None = 0.0,
    scores: dict[str, float] | None = None,
    quality: dict[str, Any] | None = None,
    production: int = 100,
    task: str = "classification",
    predictions: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A summary in the shape the reporter writes (report.py ``ReportResult.summary``)."""
    drift: dict[str, Any] = {"embedding": {"share": embedding, "drifted_columns": 1}}
    if raw is not None:
        drift["raw"] = {"share": raw, "drifted_columns": 0, "scores": scores or {}}
    out: dict[str, Any] = {
        "model_version": version,
        "task": task,
        "window": {"since": None, "until": at.timestamp(), "until_iso": at.isoformat()},
        "rows": {"production": production, "labelled": (quality or {}).get("rows", 0)},
        "drift": drift,
        "quality": quality,
    }
    if predictions is not None:
        out["predictions"] = {"counts": predictions}
    return out


# -- trends (plain logic) -----------------------------------------------------------------------


def test_points_put_each_report_on_the_time_axis_with_drift_quality_and_volume() -> None:
    entries = [  # newest first, as GET /reports answers
        {
            "id": "20261206T120000Z",
            "summary": summary_at(
                NOW,
                version="v2",
                embedding=0.6,
                raw=0.5,
                quality={"rows": 40, "f1": 0.81, "accuracy": 0.85},
                production=300,
            ),
        },
        {"id": "20261206T110000Z", "summary": summary_at(NOW - timedelta(hours=1))},
        {"id": "20251231T000000Z", "summary": {"drift_share": 0.5, "rows": 50}},  # flat, old
        {"id": "not-a-time", "summary": {"drift": {}}},  # no time: left out
    ]
    frame = trends.points(entries)
    assert frame["report"].tolist() == ["20251231T000000Z", "20261206T110000Z", "20261206T120000Z"]
    assert frame["drift share (embedding)"].tolist() == [0.5, 0.1, 0.6]
    assert frame["drift share (raw)"].iloc[-1] == 0.5 and pd.isna(frame["drift share (raw)"][0])
    assert frame["f1"].iloc[-1] == 0.81 and frame["labelled rows"].iloc[-1] == 40
    assert frame["predictions"].tolist()[1:] == [100, 300]
    assert trends.quality_metrics(frame) == ["f1", "accuracy"]  # no roc_auc in any report
    # the last day, counted back from the newest report: the flat one of 2025 is out
    assert trends.within(frame, 1)["report"].tolist() == frame["report"].tolist()[1:]
    assert len(trends.within(frame, None)) == 3
    drift = trends.long(frame, ["drift share (embedding)", "drift share (raw)"], "space")
    assert sorted(drift["space"].unique()) == ["drift share (embedding)", "drift share (raw)"]
    assert len(drift) == 3 + 2  # the flat report has no raw share


def test_a_regression_trends_its_errors() -> None:
    entries = [
        {
            "id": f"r{i}",
            "summary": summary_at(
                NOW + timedelta(hours=i),
                task="regression",
                quality={"rows": 30, "mae": 40.0 + i, "rmse": 50.0 + i, "r2": 0.4},
            ),
        }
        for i in range(3)
    ]
    frame = trends.points(entries)
    assert trends.quality_metrics(frame) == ["mae", "rmse", "r2"]
    assert frame["rmse"].tolist() == [50.0, 51.0, 52.0]


def test_feature_scores_and_the_prediction_mix_over_time() -> None:
    entries = [
        {
            "id": "a",
            "summary": summary_at(
                NOW,
                scores={"mean_radius": 0.9, "mean_texture": 0.01},
                predictions={"0": 30, "1": 70},
            ),
        },
        {"id": "b", "summary": summary_at(NOW - timedelta(hours=1), scores={"mean_radius": 0.5})},
    ]
    scores = trends.feature_scores(entries)
    assert scores[["feature", "score"]].values.tolist() == [
        ["mean_radius", 0.5],
        ["mean_radius", 0.9],
        ["mean_texture", 0.01],
    ]
    mix = trends.prediction_mix(entries)
    assert dict(zip(mix["prediction"], mix["share"], strict=True)) == {"0": 0.3, "1": 0.7}


def test_what_the_reporter_records_of_predictions_draws_both_tasks_trends() -> None:
    # The reporter's own summary of a window's predictions, as each report stores it.
    classes = pd.DataFrame({"prediction": ["Adelie", "Gentoo", "Adelie", None]})
    values = pd.DataFrame({"prediction": [float(v) for v in range(1, 101)]})
    entries = [
        {
            "id": "a",
            "summary": {
                **summary_at(NOW),
                "predictions": prediction_summary(classes, "classification"),
            },
        },
        {
            "id": "b",
            "summary": {
                **summary_at(NOW, task="regression"),
                "predictions": prediction_summary(values, "regression"),
            },
        },
    ]
    mix = trends.prediction_mix(entries[:1])
    assert dict(zip(mix["prediction"], mix["share"], strict=True)) == {
        "Adelie": 2 / 3,
        "Gentoo": 1 / 3,
    }
    drawn = trends.prediction_values(entries)
    assert dict(zip(drawn["statistic"], drawn["value"], strict=True)) == {
        "p10": 10.9,
        "p50": 50.5,
        "p90": 90.1,
        "mean": 50.5,
    }
    assert prediction_summary(pd.DataFrame(columns=["prediction"]), "regression") == {}


def test_promotions_take_a_promoted_runs_time_over_the_versions_own() -> None:
    models = {
        "versions": [
            {"version": "v1", "created_at": "2026-12-01T00:00:00+00:00"},
            {"version": "v2", "created_at": "2026-12-05T00:00:00+00:00"},
        ]
    }
    found = trends.promotions(
        models,
        [
            {"outcome": "promoted", "version": "v2", "at": "2026-12-05T00:10:00+00:00"},
            {"outcome": "rejected", "version": "v3", "at": "2026-12-06T00:00:00+00:00"},
        ],
    )
    assert found["version"].tolist() == ["v1", "v2"]
    assert found["at"].iloc[1] == datetime(2026, 12, 5, 0, 10, tzinfo=UTC)


# -- retrain runs and versions (plain logic on the records the retrainer writes) --------------


def write_runs(store: LocalStore) -> list[dict[str, Any]]:
    """A promoted and a rejected run, recorded by the retrainer's own writer."""
    promoted = RunResult(
        outcome="promoted",
        reasons=["20 new labelled rows (k=20)"],
        version="v2",
        production="v2",
        new_rows=20,
        metric="f1",
        gate=GateResult(True, "f1", 0.97, 0.95, 0.96, 0.95, 0.02, 40),
    )
    rejected = RunResult(
        outcome="rejected",
        reasons=["drift share 0.60 >= 0.5 in report 20261206T120000Z"],
        version="v3",
        production="v2",
        new_rows=5,
        metric="f1",
        gate=GateResult(False, "f1", 0.80, 0.97, 0.81, 0.96, 0.02, 40),
    )
    for result in (promoted, rejected):
        _write_run_record(store, result)
        time.sleep(0.002)  # the record's key is its time to the microsecond
    found = []
    for key in sorted(store.list_keys(keys.RETRAIN_RUNS), reverse=True):  # newest first
        found.append({**json.loads(store.get(key)), "id": Path(key).stem})
    return found


def test_the_runs_table_puts_the_gates_numbers_side_by_side(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.ensure()
    table = runs.runs_table(write_runs(store))
    assert table["outcome"].tolist() == ["rejected", "promoted"]
    rejected = table.iloc[0]
    assert rejected["candidate"] == 0.80 and rejected["production score"] == 0.97
    assert rejected["trigger"] == "drift share 0.60 >= 0.5 in report 20261206T120000Z"
    assert rejected["gate"] == (
        "reject: candidate 0.8000 vs production 0.9700 on 40 holdout rows (reference test "
        "split and newest labelled rows) (tolerance 0.0200)"
    )
    assert rejected["version"] == "v3" and rejected["production after"] == "v2"
    assert table.iloc[1]["gate"].startswith("promote: candidate 0.9700")


def test_the_line_of_versions_and_two_versions_compared(
    tmp_path: Path, trained, shipped_dataset
) -> None:  # type: ignore[no-untyped-def]
    registry = ModelRegistry(
        published_local_store(tmp_path / "s", trained, shipped_dataset), SIGNING_KEY
    )
    v1 = registry.manifest("v1")
    # a child of v1 whose data lost a feature and gained a category (as a retrain may)
    v2 = {
        **v1,
        "version": "v2",
        "parent": "v1",
        "created_at": "2999-01-01T00:00:00+00:00",
        "training_data": {"dataset": "feedback-2999.csv"},
        "metrics": {"test": {**v1["metrics"]["test"], "f1": v1["metrics"]["test"]["f1"] - 0.01}},
        "feature_schema": [
            *v1["feature_schema"][1:],
            {"name": "site", "dtype": "category", "categories": ["a", "b"], "nullable": True},
        ],
    }
    line = runs.lineage({"versions": [v2, v1]})
    assert line["version"].tolist() == ["v1", "v2"]
    assert line["parent"].tolist()[1] == "v1" and line["dataset"].tolist()[1] == "feedback-2999.csv"
    metrics = runs.compare_metrics(v1, v2)
    f1 = metrics[(metrics["split"] == "test") & (metrics["metric"] == "f1")].iloc[0]
    assert f1["difference"] == pytest.approx(-0.01)
    schema = runs.compare_schemas(v1, v2).set_index("feature")
    first = v1["feature_schema"][0]["name"]
    assert schema.loc[first, "change"] == "removed" and schema.loc["site", "change"] == "added"
    assert schema.loc["site", "v2"] == "category, nullable"
    assert (schema.drop(index=[first, "site"])["change"] == "same").all()


def test_the_metric_axis_is_scaled_to_the_versions_values() -> None:
    low, high = runs.domain([0.951, 0.958])
    assert 0.9 < low < 0.951 and 0.958 < high < 1.0  # not 0-1: the difference shows
    assert runs.domain([]) == (0.0, 1.0)
    low, high = runs.domain([0.5, 0.5])
    assert low < 0.5 < high


# -- bulk labels and the system view (plain logic) ---------------------------------------------


def test_a_labels_csv_is_read_with_classes_by_value_or_name() -> None:
    read = labels.read_labels(
        b"prediction_id,target,note\np1,1,x\np2,malignant,y\n p3 ,0.0,z\n",
        classes={"malignant": 0, "benign": 1},
    )
    assert read.items == [
        {"prediction_id": "p1", "target": 1},
        {"prediction_id": "p2", "target": 0},
        {"prediction_id": "p3", "target": 0},
    ]
    assert labels.read_labels(b"prediction_id,target\np1,12.5\n", True).items[0]["target"] == 12.5
    with pytest.raises(labels.LabelFileError, match="no target column"):
        labels.read_labels(b"prediction_id,label\np1,1\n")
    with pytest.raises(labels.LabelFileError, match="no row"):
        labels.read_labels(b"prediction_id,target\n")


def test_each_label_gets_its_result_row_by_row() -> None:
    read = labels.read_labels(b"prediction_id,target\na,1\nb,1\nc,0\n")
    table = labels.result_table(
        read,
        [
            {"index": 0, "status": 201, "feedback_id": "f1", "prediction_id": "a"},
            {"index": 1, "status": 404, "error": "items[1]: no prediction b", "type": "NotFound"},
            {},
        ],
    )
    assert table["result"].tolist() == ["stored", "failed", "not sent"]
    assert table["reason"].tolist()[1:] == [
        "items[1]: no prediction b",
        "the API stopped answering",
    ]
    assert table["feedback_id"].tolist()[0] == "f1"


def test_the_system_view_reads_a_real_metrics_answer(serving: ServingProcess) -> None:
    row = samples.held_out().drop(columns="target").head(3).to_dict(orient="records")
    assert httpx.post(serving.url + "/predict", json={"instances": row}).status_code == 200
    metrics = httpx.get(serving.url + "/metrics/system").json()
    latency = system.latency(metrics)
    assert latency["percentile"].tolist() == ["p50", "p95", "p99"]
    assert (latency["ms"] > 0).all()
    tiles = system.tiles(metrics, {"predictions": 3, "mean_confidence": 0.9})
    assert tiles["Predictions"] == "3" and "Error rate (5xx)" in tiles
    assert any(label.startswith("Throughput") for label in tiles)
    by_version = system.by_version({"predictions_by_version": {"v10": 2, "v2": 5}})
    assert by_version.values.tolist() == [["v2", 5], ["v10", 2]]


# -- pages (AppTest) against a real serving ----------------------------------------------------


def charts(at: AppTest) -> dict[str, pd.DataFrame]:
    """Each Vega-Lite chart's data, keyed by the field its colour (or y) encodes."""
    out = {}
    for chart in at.get("vega_lite_chart"):
        spec = json.loads(chart.proto.spec)
        first = (spec.get("layer") or [spec])[0]
        encoding = first.get("encoding", {})
        key = (encoding.get("color") or encoding.get("y") or {}).get("field", "?")
        frames = [pa.ipc.open_stream(d.data.data).read_pandas() for d in chart.proto.datasets]
        out[key] = frames[0] if frames else pd.DataFrame()
    return out


@pytest.fixture(scope="module")
def trend_store(tmp_path_factory, trained, shipped_dataset) -> LocalStore:  # type: ignore[no-untyped-def]
    """Reports before and after v1 was published, with per-feature scores."""
    now = datetime.now(UTC)
    root = tmp_path_factory.mktemp("trends") / "store"
    store = LocalStore(root)
    store.ensure()
    for hours, share in ((3, 0.1), (2, 0.2)):
        at = now - timedelta(hours=hours)
        write_report(
            store,
            at.strftime("%Y%m%dT%H%M%SZ"),
            summary_at(
                at, embedding=share, scores={"mean_radius": 0.5}, quality={"rows": 25, "f1": 0.9}
            ),
        )
    publish_trained(ModelRegistry(store, SIGNING_KEY), trained, shipped_dataset)
    at = datetime.now(UTC) + timedelta(seconds=1)
    write_report(
        store,
        at.strftime("%Y%m%dT%H%M%SZ"),
        summary_at(
            at,
            embedding=0.7,
            raw=0.6,
            scores={"mean_radius": 0.001},
            quality={"rows": 30, "f1": 0.8},
        ),
    )
    return store


@pytest.fixture(scope="module")
def trend_serving(trend_store: LocalStore) -> Iterator[ServingProcess]:
    proc = ServingProcess(serving_env(trend_store.root)).start()
    yield proc
    proc.stop()


def test_monitoring_draws_the_trends_with_the_promotion_marked(trend_serving, webapp_env) -> None:
    at = page("monitoring", trend_serving.url, webapp_env).run()
    assert not at.exception and not at.error
    drawn = charts(at)
    drift = drawn["space"]
    assert len(drift[drift["space"] == "drift share (embedding)"]) == 3
    assert drift["value"].max() == 0.7
    assert drawn["score"]["score"].min() == 0.001  # the heat map of per-feature scores
    assert sorted(drawn["metric"]["value"]) == [0.8, 0.9, 0.9]
    assert drawn["rows"]["value"].max() == 100
    # v1 went into production between the reports: its rule is drawn on the drift chart
    specs = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    assert any("layer" in s for s in specs)
    marks = [
        pa.ipc.open_stream(d.data.data).read_pandas()
        for c in at.get("vega_lite_chart")
        for d in c.proto.datasets
    ]
    assert any(
        list(m.columns) == ["at", "version"] and m["version"].tolist() == ["v1"] for m in marks
    )
    # the Evidently report is in an iframe (st.iframe), not the deprecated components.html
    assert at.get("iframe") and "Evidently report" in at.get("iframe")[0].proto.srcdoc
    # the window is the user's: every report of the last day is in it (all three are)
    at.button_group(key="monitoring_window").set_value("Last day").run()
    assert not at.exception
    assert len(charts(at)["space"].query("space == 'drift share (embedding)'")) == 3


def test_model_page_shows_the_line_of_versions_and_compares_two(
    tmp_path: Path, webapp_env, trained, shipped_dataset
) -> None:  # type: ignore[no-untyped-def]
    store = published_local_store(tmp_path / "store", trained, shipped_dataset)
    publish_trained(ModelRegistry(store, SIGNING_KEY), trained, shipped_dataset)
    proc = ServingProcess(serving_env(store.root)).start()
    try:
        at = page("model", proc.url, webapp_env).run()
        assert not at.exception and not at.error
        assert "Line of versions" in texts(at) and "Compare two versions" in texts(at)
        tables = [t.value for t in at.table]
        line = next(t for t in tables if "dataset" in t.columns and "parent" in t.columns)
        assert line["version"].tolist() == ["v1", "v2"]
        compared = next(t for t in tables if "difference" in t.columns)
        assert {"v1", "v2"} <= set(compared.columns) and (compared["difference"] == 0).all()
        schema = next(t for t in tables if "change" in t.columns)
        assert (schema["change"] == "same").all()
        # the metric charts' axes are the versions' values, not 0-1
        domains = [
            json.loads(c.proto.spec)["encoding"]["y"]["scale"]["domain"]
            for c in at.get("vega_lite_chart")
        ]
        assert domains and all(d != [0, 1] for d in domains)
    finally:
        proc.stop()


# -- pages against the issue-29 endpoints (API branch) -----------------------------------------


def test_runs_page_lists_a_rejected_and_a_promoted_run_with_reasons(
    tmp_path: Path, webapp_env, trained, shipped_dataset
) -> None:  # type: ignore[no-untyped-def]
    """API branch: ``GET /retrain-runs``."""
    store = published_local_store(tmp_path / "store", trained, shipped_dataset)
    write_runs(store)
    proc = ServingProcess(serving_env(store.root)).start()
    try:
        at = page("runs", proc.url, webapp_env).run()
        assert not at.exception and not at.error, at.error
        table = at.dataframe[0].value
        assert table["outcome"].tolist() == ["rejected", "promoted"]
        assert table["candidate"].tolist() == [0.80, 0.97]
        assert table["production score"].tolist() == [0.97, 0.95]
        assert "drift share 0.60" in table["trigger"].iloc[0]
        assert {m.label: m.value for m in at.metric} == {"rejected": "1", "promoted": "1"}
    finally:
        proc.stop()


def test_system_page_shows_latency_and_predictions_per_version(serving, webapp_env) -> None:
    """API branch: ``predictions_by_version`` in ``/metrics/kpis``."""
    row = samples.held_out().drop(columns="target").head(4).to_dict(orient="records")
    assert httpx.post(serving.url + "/predict", json={"instances": row}).status_code == 200
    at = page("system", serving.url, webapp_env).run()
    assert not at.exception and not at.error
    tiles = {m.label: m.value for m in at.metric}
    assert "p95 latency" in tiles and int(tiles["Predictions"]) >= 4
    frames = [
        pa.ipc.open_stream(d.data.data).read_pandas()
        for c in at.get("vega_lite_chart")
        for d in c.proto.datasets
    ]
    latency = next(f for f in frames if "percentile" in f.columns)
    assert (latency["ms"] > 0).all()
    versions = next(f for f in frames if "predictions" in f.columns)
    assert versions.set_index("version")["predictions"]["v1"] >= 4


def test_label_page_sends_a_csv_of_labels_with_a_result_per_row(
    tmp_path: Path, webapp_env, trained, shipped_dataset
) -> None:  # type: ignore[no-untyped-def]
    """API branch: batch ``POST /feedback``."""
    store = published_local_store(tmp_path / "store", trained, shipped_dataset)
    proc = ServingProcess(serving_env(store.root, MLPLATFORM_FEEDBACK_RATE="0")).start()
    try:
        rows = samples.held_out().head(5)
        answer = httpx.post(
            proc.url + "/predict",
            json={"instances": rows.drop(columns="target").to_dict(orient="records")},
        ).json()
        ids = [p["prediction_id"] for p in answer["predictions"]]
        csv = (
            "prediction_id,target\n"
            + "".join(f"{i},{t}\n" for i, t in zip(ids, rows["target"], strict=True))
            + "no-such-id,1\n"
        )
        webapp_env.setenv("MLPLATFORM_LABEL_CHUNK_ROWS", "2")  # three batches
        at = page("label", proc.url, webapp_env).run()
        at.file_uploader(key="label_upload").upload("labels.csv", csv.encode(), "text/csv")
        at.run()
        at.button(key="label_bulk_send").click().run()
        assert not at.exception
        assert "Stored 5 of 6 labels; 1 not stored" in at.success[0].value
        table = at.dataframe[0].value
        assert table["result"].tolist() == ["stored"] * 5 + ["failed"]
        assert table["feedback_id"].notna().sum() == 5
        assert isinstance(table["reason"].iloc[5], str) and table["reason"].iloc[5]
        headers = {"Authorization": f"Bearer {WRITER_TOKEN}"}
        assert (
            httpx.get(proc.url + "/metrics/kpis", headers=headers).json()["labelled_since_training"]
            == 5
        )
    finally:
        proc.stop()
