"""job.py end to end: store in, report and prod_data.csv out, numbers in a real Prometheus."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from mlplatform_common import datalog, keys
from mlplatform_common.errors import IntegrityError
from mlplatform_common.registry import LoadedModel
from mlplatform_common.schema import embed
from mlplatform_common.storage import LocalStore, Store, for_model
from mlplatform_reporter import job
from mlplatform_reporter.__main__ import main
from mlplatform_reporter.simulate import replay, shift_scale
from tests.conftest import REPO, SIGNING_KEY, free_port
from tests.services.reporter.conftest import (
    PromStack,
    StubServing,
    log_traffic,
    published,
    reporter_settings,
)

R = '{job="mlplatform-reporter",instance="mlplatform"'


def _q(name: str, **labels: str) -> str:
    extra = "".join(f',{k}="{v}"' for k, v in labels.items())
    return f"{name}{R}{extra}}}"


def test_report_numbers_reach_prometheus(
    store: Store, model: LoadedModel, heldout: pd.DataFrame, prom_stack: PromStack
) -> None:
    prom_stack.clear()
    sent = log_traffic(store, model, heldout, labelled=0.6, flip=0.2, seed=1)
    settings = reporter_settings(pushgateway_url=prom_stack.pushgateway_url)
    before = time.time()
    outcome = job.run(settings, store=store)
    assert outcome.pushed

    # archived: the HTML, then the summary
    summary = store.get_json(keys.report_file(outcome.report_id, "summary.json"))
    html = store.get(keys.report_file(outcome.report_id, "report.html")).decode()
    assert summary["model_version"] == model.version
    assert "<html" in html.lower()
    assert summary["rows"] == {
        "production": len(heldout),
        "labelled": len(sent),
        "reference": len(model.ref_data),
    }

    # quality matches scikit-learn on the same labelled rows
    q = summary["quality"]
    t, p = sent["target"], sent["prediction"]
    assert q["f1"] == pytest.approx(skm.f1_score(t, p, pos_label="1"), abs=1e-12)
    assert q["precision"] == pytest.approx(skm.precision_score(t, p, pos_label="1"), abs=1e-12)
    assert q["recall"] == pytest.approx(skm.recall_score(t, p, pos_label="1"), abs=1e-12)
    assert q["accuracy"] == pytest.approx(skm.accuracy_score(t, p), abs=1e-12)
    assert q["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(t, p), abs=1e-12)
    proba = np.vstack(sent["proba"].to_list())
    assert q["roc_auc"] == pytest.approx(skm.roc_auc_score(t == "1", proba[:, 1]), abs=1e-12)

    # every pushed number is in Prometheus with the right value
    stack = prom_stack
    for dataset, n in summary["rows"].items():
        stack.wait_for(_q("mlplatform_report_rows", dataset=dataset), n)
    for name, key in [
        ("mlplatform_model_f1", "f1"),
        ("mlplatform_model_precision", "precision"),
        ("mlplatform_model_recall", "recall"),
        ("mlplatform_model_accuracy", "accuracy"),
        ("mlplatform_model_balanced_accuracy", "balanced_accuracy"),
        ("mlplatform_model_roc_auc", "roc_auc"),  # computed, and now pushed too
    ]:
        stack.wait_for(_q(name, task="classification"), q[key])
    assert summary["task"] == "classification" and q["min_rows"] == 30
    stack.wait_absent(_q("mlplatform_model_rmse"))
    assert set(summary["drift"]) == {"embedding", "raw"}
    for space, drift in summary["drift"].items():
        stack.wait_for(_q("mlplatform_drift_share", space=space), drift["share"])
        stack.wait_for(_q("mlplatform_drifted_columns", space=space), drift["drifted_columns"])
        for feature, score in drift["scores"].items():
            stack.wait_for(
                _q("mlplatform_feature_drift_score", feature=feature, space=space), score
            )
    assert len(stack.query(_q("mlplatform_feature_drift_score", space="raw"))) == 30
    assert len(stack.query(_q("mlplatform_feature_drift_score", space="embedding"))) == 10
    last = stack.query(_q("mlplatform_report_last_success_timestamp_seconds"))
    assert len(last) == 1
    assert before <= float(last[0]["value"][1]) <= time.time()

    # prod_data.csv in the course format, in the production version's embedding
    export = pd.read_csv(io.BytesIO(store.get(keys.PROD_DATA)))
    n = len(model.ref_data.columns) - 1
    assert list(export.columns) == [*[f"PCA_{i}" for i in range(1, n + 1)], "target", "prediction"]
    assert len(export) == len(sent)
    assert sorted(export["target"].astype(str)) == sorted(sent["target"])


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_no_production_data_reports_zero_rows_and_succeeds(
    store: Store, model: LoadedModel, prom_stack: PromStack
) -> None:
    prom_stack.clear()
    settings = reporter_settings(pushgateway_url=prom_stack.pushgateway_url)
    outcome = job.run(settings, store=store)
    summary = store.get_json(keys.report_file(outcome.report_id, "summary.json"))
    assert summary["rows"]["production"] == 0
    assert summary["quality"] is None
    assert "no production data in the window yet" in summary["notes"]
    prom_stack.wait_for(_q("mlplatform_report_rows", dataset="production"), 0)
    prom_stack.wait_for(_q("mlplatform_report_rows", dataset="labelled"), 0)
    assert len(prom_stack.query(_q("mlplatform_report_last_success_timestamp_seconds"))) == 1
    prom_stack.wait_absent("mlplatform_drift_share")
    prom_stack.wait_absent("mlplatform_model_f1")
    export = pd.read_csv(io.BytesIO(store.get(keys.PROD_DATA)))
    assert export.empty
    assert list(export.columns)[-2:] == ["target", "prediction"]


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_releases_sharing_a_pushgateway_keep_their_own_series(
    store: Store, model: LoadedModel, prom_stack: PromStack
) -> None:
    prom_stack.clear()
    installs = [("blue", "ml"), ("green", "ml"), ("blue", "staging")]
    pushed: dict[tuple[str, str], tuple[float, float]] = {}

    def run_as(release: str, namespace: str) -> None:
        settings = reporter_settings(
            pushgateway_url=prom_stack.pushgateway_url, release=release, namespace=namespace
        )
        before = time.time()
        job.run(settings, store=store)
        pushed[release, namespace] = (before, time.time())

    for install in installs:
        run_as(*install)
    groups = prom_stack.groups()
    assert sorted((g["release"], g["namespace"]) for g in groups) == sorted(installs)
    assert {(g["job"], g["instance"]) for g in groups} == {("mlplatform-reporter", "mlplatform")}
    time.sleep(1.5)  # Prometheus scrapes the first pushes
    run_as("blue", "ml")  # runs again: only its own group is replaced
    assert len(prom_stack.groups()) == 3
    # Prometheus (honor_labels) keeps the pushed release and namespace on every series
    for (release, namespace), (before, after) in pushed.items():
        labels = {"release": release, "namespace": namespace}
        rows = _q("mlplatform_report_rows", dataset="production", **labels)
        prom_stack.wait_for(rows, 0)
        stamp = _q("mlplatform_report_last_success_timestamp_seconds", **labels)
        deadline = time.monotonic() + 20
        while True:
            (series,) = prom_stack.query(stamp)
            if before <= float(series["value"][1]) <= after or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert before <= float(series["value"][1]) <= after, (labels, series)
    assert len(prom_stack.query("mlplatform_report_last_success_timestamp_seconds")) == 3


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_two_named_models_of_one_release_keep_their_own_series(
    store: Store, trained, shipped_dataset, heldout: pd.DataFrame, prom_stack: PromStack
) -> None:
    prom_stack.clear()
    rows = {"fraud": 12, "churn-eu": 7}  # a different window per name, to tell them apart
    for name, n in rows.items():
        part = for_model(store, name)
        log_traffic(part, published(part, trained, shipped_dataset), heldout.iloc[:n])
    for name in rows:
        settings = reporter_settings(
            pushgateway_url=prom_stack.pushgateway_url,
            release="blue",
            namespace="ml",
            model_name=name,
        )
        outcome = job.run(settings, store=for_model(store, name))
        summary = for_model(store, name).get_json(
            keys.report_file(outcome.report_id, "summary.json")
        )
        assert summary["model_name"] == name
        assert summary["rows"]["production"] == rows[name]
        html = for_model(store, name).get(keys.report_file(outcome.report_id, "report.html"))
        assert f"{name} v1".encode() in html
    # one Pushgateway group per name: the second push replaced nothing of the first
    groups = prom_stack.groups()
    assert sorted(g["model"] for g in groups) == sorted(rows)
    assert {(g["release"], g["namespace"]) for g in groups} == {("blue", "ml")}
    for name, n in rows.items():
        prom_stack.wait_for(
            _q("mlplatform_report_rows", dataset="production", release="blue", model=name), n
        )
    assert len(prom_stack.query("mlplatform_report_last_success_timestamp_seconds")) == 2


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_the_default_name_replaces_the_group_pushed_before_names(
    store: Store, model: LoadedModel, prom_stack: PromStack
) -> None:
    prom_stack.clear()
    prom_stack.push_before_names(
        "mlplatform-reporter", "mlplatform_report_last_success_timestamp_seconds", 1.0
    )
    # another name of the release leaves it (it is not that name's)
    job.run(
        reporter_settings(
            pushgateway_url=prom_stack.pushgateway_url,
            release="blue",
            namespace="ml",
            model_name="fraud",
        ),
        store=for_model(store, "fraud"),
    )
    assert sorted(g.get("model", "-") for g in prom_stack.groups()) == ["-", "fraud"]
    settings = reporter_settings(
        pushgateway_url=prom_stack.pushgateway_url, release="blue", namespace="ml"
    )
    job.run(settings, store=store)
    assert sorted(g.get("model", "-") for g in prom_stack.groups()) == ["fraud", "mlplatform"]


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_no_model_yet_is_an_empty_report_not_a_failure(store: Store) -> None:
    outcome = job.run(reporter_settings(), store=store)
    assert outcome.result.rows["production"] == 0
    assert "no model is in production yet" in outcome.result.notes
    assert not outcome.pushed  # pushing switched off in these settings
    assert store.exists(keys.report_file(outcome.report_id, "summary.json"))


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_a_failed_run_pushes_nothing(
    store: Store, model: LoadedModel, heldout: pd.DataFrame, prom_stack: PromStack
) -> None:
    prom_stack.clear()
    log_traffic(store, model, heldout.iloc[:20])
    prom_stack.wait_absent(_q("mlplatform_report_last_success_timestamp_seconds"))
    wrong_key = reporter_settings(
        pushgateway_url=prom_stack.pushgateway_url, signing_key="not-the-key"
    )
    with pytest.raises(IntegrityError):
        job.run(wrong_key, store=store)
    time.sleep(2.5)  # more than two scrapes
    assert prom_stack.query(_q("mlplatform_report_last_success_timestamp_seconds")) == []
    assert store.list_keys(keys.REPORTS) == []


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_unreachable_pushgateway_fails_the_run(store: Store, model: LoadedModel) -> None:
    from mlplatform_common.errors import StorageUnavailable
    from tests.conftest import free_port

    settings = reporter_settings(pushgateway_url=f"127.0.0.1:{free_port()}")
    with pytest.raises(StorageUnavailable, match="Pushgateway"):
        job.run(settings, store=store)


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_window_since_the_previous_report(
    store: Store, model: LoadedModel, heldout: pd.DataFrame
) -> None:
    settings = reporter_settings(window_hours=0)
    log_traffic(store, model, heldout.iloc[:30], ts=time.time() - 10)
    first = job.run(settings, store=store)
    assert first.result.rows["production"] == 30
    assert first.result.window["mode"] == "everything (first report)"
    log_traffic(store, model, heldout.iloc[30:50], ts=time.time())
    second = job.run(settings, store=store, now=time.time() + 1)
    assert second.result.rows["production"] == 20
    assert second.result.window["since"] == pytest.approx(first.result.window["until"])
    # a rolling window sees both batches
    rolling = job.run(reporter_settings(window_hours=1), store=store, now=time.time() + 2)
    assert rolling.result.rows["production"] == 50


def test_a_prediction_labelled_twice_is_one_labelled_row_with_its_latest_label(
    store: Store, model: LoadedModel, heldout: pd.DataFrame
) -> None:
    sent = log_traffic(store, model, heldout.iloc[:40], labelled=1.0, ts=time.time() - 10)
    for row in sent.head(10).itertuples():  # sent again, each with the other label
        other = "0" if row.target == "1" else "1"
        features = heldout.iloc[0][model.features].to_dict()
        datalog.write_feedback(
            store,
            {
                "prediction_id": row.prediction_id,
                "model_version": model.version,
                "prediction": row.prediction,
                "target": other,
                "features": features,
            },
        )
    outcome = job.run(reporter_settings(), store=store)
    assert outcome.result.rows["labelled"] == 40
    assert outcome.prod_data_rows == 40
    relabelled = (sent["target"] != "0").head(10).sum() + (sent["target"] == "0").iloc[10:].sum()
    exported = pd.read_csv(io.BytesIO(store.get(keys.PROD_DATA)), dtype={"target": str})
    assert (exported["target"] == "0").sum() == relabelled


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_simulated_traffic_drift_end_to_end(
    store: Store, model: LoadedModel, heldout: pd.DataFrame, prom_stack: PromStack
) -> None:
    """Simulator -> HTTP -> prediction log -> report -> Prometheus: no drift, then drift."""
    prom_stack.clear()
    settings = reporter_settings(window_hours=0, pushgateway_url=prom_stack.pushgateway_url)
    X = heldout
    with StubServing(store, model) as serving, httpx.Client(base_url=serving.url) as client:
        summary = replay(client, X, model.features, "target", rate=0, batch_size=10, progress=False)
        assert summary.predicted == len(X)
        calm = job.run(settings, store=store)
        drifted = shift_scale(X, model.features, shift=1.0, scale=1.2)
        summary = replay(
            client, drifted, model.features, "target", rate=0, batch_size=10, progress=False
        )
        assert summary.predicted == len(X)
        stormy = job.run(settings, store=store, now=time.time() + 1)
    threshold = settings.drift_share_threshold
    for space in ("embedding", "raw"):
        assert calm.result.drift[space].share < threshold
        assert not calm.result.drift[space].detected
        assert stormy.result.drift[space].share > threshold
        assert stormy.result.drift[space].detected
        prom_stack.wait_for(
            _q("mlplatform_drift_share", space=space), stormy.result.drift[space].share
        )
    # and the alert rule loaded into this Prometheus sees it
    deadline = time.monotonic() + 20
    alerts: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        r = httpx.get(f"{prom_stack.prometheus_url}/api/v1/alerts", timeout=5).json()
        alerts = [
            a for a in r["data"]["alerts"] if a["labels"]["alertname"] == "MLPlatformDataDrift"
        ]
        if len(alerts) == 2:
            break
        time.sleep(0.5)
    assert sorted(a["labels"]["space"] for a in alerts) == ["embedding", "raw"]  # type: ignore[index]


def _run_cli(store_dir: Path, **env: str | None) -> subprocess.CompletedProcess[str]:
    """``python -m mlplatform_reporter run`` on a local store, no Pushgateway; ``env``
    overrides (None: unset)."""
    full: dict[str, str | None] = {
        **os.environ,
        "MLPLATFORM_STORE_URL": f"file://{store_dir}",
        "MLPLATFORM_SIGNING_KEY": SIGNING_KEY.decode(),
        "MLPLATFORM_PUSHGATEWAY_URL": "",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "mlplatform_reporter", "run"],
        env={k: v for k, v in full.items() if v is not None},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_run_succeeds_and_fails_with_exit_codes(tmp_path, trained, shipped_dataset) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import published_local_store

    published_local_store(tmp_path / "store", trained, shipped_dataset)
    ok = _run_cli(tmp_path / "store")
    assert ok.returncode == 0, ok.stderr
    assert "(model mlplatform v1, classification): 0 predictions, 0 labelled" in ok.stdout
    bad = _run_cli(tmp_path / "store", MLPLATFORM_SIGNING_KEY=None, MLPLATFORM_DEV_MODE="false")
    assert bad.returncode == 2  # a setting: a retry is refused the same way
    assert "MLPLATFORM_SIGNING_KEY is not set" in bad.stderr


def test_cli_run_refuses_a_retention_shorter_than_the_window_in_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = _run_cli(tmp_path / "store", MLPLATFORM_LOG_RETENTION_DAYS="3")
    assert bad.returncode == 2
    lines = [line for line in bad.stderr.splitlines() if "MLPLATFORM_LOG_RETENTION_DAYS" in line]
    assert len(lines) == 1 and "at least 9" in lines[0], bad.stderr  # 24 h + 168 h + 1 day
    assert "Traceback" not in bad.stderr


def test_cli_run_exits_1_when_the_store_does_not_answer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # a retried Job may find it up again (exit 2 would fail the Job at once)
    down = _run_cli(
        tmp_path / "store",
        MLPLATFORM_STORE_URL="s3://reports",
        MLPLATFORM_S3_ENDPOINT=f"127.0.0.1:{free_port()}",
        MLPLATFORM_S3_ACCESS_KEY="k",
        MLPLATFORM_S3_SECRET_KEY="s",
        MLPLATFORM_S3_TIMEOUT_SECONDS="1",
        MLPLATFORM_S3_RETRIES="0",
    )
    assert down.returncode == 1, down.stderr
    lines = down.stderr.strip().splitlines()
    assert len(lines) == 1 and "report failed: StorageUnavailable" in lines[0], down.stderr


def test_cli_run_refuses_a_bad_setting_in_one_line_with_exit_2(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = _run_cli(tmp_path / "store", MLPLATFORM_LOG_COMPACT_ROWS="0")
    assert bad.returncode == 2, bad.stderr
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "MLPLATFORM_LOG_COMPACT_ROWS: Input should be" in lines[0]
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_a_report_deletes_the_expired_days_of_the_log_and_reads_the_rest(
    store: Store, model: LoadedModel, heldout: pd.DataFrame
) -> None:
    now = time.time()
    # every row labelled: log_traffic returns the ids of the labelled ones
    old = log_traffic(store, model, heldout.iloc[:20], labelled=1.0, ts=now - 40 * 86_400)
    recent = log_traffic(store, model, heldout.iloc[20:50], labelled=1.0, ts=now - 3_600)
    outcome = job.run(reporter_settings(log_retention_days=30), store=store, now=now)
    assert outcome.expired == {"partitions": 1, "objects": 1}
    assert outcome.result.rows["production"] == len(recent)
    left = datalog.read_predictions(store)
    assert len(left) == len(recent) and not set(left["prediction_id"]) & set(old["prediction_id"])
    assert len(datalog.read_feedback(store)) == len(old) + len(recent)  # labels are kept
    kept = job.run(reporter_settings(log_retention_days=0), store=store, now=now)
    assert kept.expired is None and len(datalog.read_predictions(store)) == len(recent)


def test_cli_simulate_replays_with_drift_against_the_api(
    tmp_path, trained, shipped_dataset, capsys
) -> None:  # type: ignore[no-untyped-def]
    from mlplatform_common import datalog
    from mlplatform_common.registry import ModelRegistry
    from tests.conftest import DATA, publish_trained

    store = LocalStore(tmp_path / "store")
    store.ensure()
    registry = ModelRegistry(store, SIGNING_KEY)
    loaded = registry.load(publish_trained(registry, trained, shipped_dataset))
    with StubServing(store, loaded) as serving:
        code = main(
            [
                "simulate",
                "--url",
                serving.url,
                "--data",
                str(DATA),
                "--rows",
                "30",
                "--rate",
                "0",
                "--shift",
                "2",
                "--drift-features",
                "mean_radius",
                "--feedback-fraction",
                "1",
            ]
        )
    assert code == 0
    out = capsys.readouterr().out
    assert "30 predicted, 0 failed" in out
    assert "feedback: 30 sent, 0 failed" in out
    logged = datalog.read_predictions(store)
    assert len(logged) == 30
    base = pd.read_csv(DATA)
    held = base.loc[~base.index.isin([])]  # the replayed rows are drifted on mean_radius only
    assert logged["mean_radius"].mean() > held["mean_radius"].mean() + base["mean_radius"].std()
    np.testing.assert_allclose(
        logged[[f"PCA_{i}" for i in range(1, 11)]].to_numpy(),
        embed(loaded.pipeline, logged[loaded.features]).to_numpy(),
    )


def test_cli_schedule_reports_on_an_interval(tmp_path, trained, shipped_dataset) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import published_local_store

    store = published_local_store(tmp_path / "store", trained, shipped_dataset)
    env = {
        **os.environ,
        "MLPLATFORM_STORE_URL": f"file://{tmp_path / 'store'}",
        "MLPLATFORM_SIGNING_KEY": SIGNING_KEY.decode(),
        "MLPLATFORM_PUSHGATEWAY_URL": "",
        "MLPLATFORM_SCHEDULE_MINUTES": "0.05",  # every 3 seconds
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlplatform_reporter", "schedule"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # A report's directory appears with its HTML; summary.json is written last and
        # marks it complete, so count only complete ones (the next may be mid-write).
        def complete() -> list[str]:
            return [
                rid
                for rid in store.list_dirs(keys.REPORTS)
                if store.exists(keys.report_file(rid, "summary.json"))
            ]

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(complete()) < 2:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.5)
        assert len(complete()) >= 2, store.list_dirs(keys.REPORTS)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, proc.communicate()


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_snapshots_go_to_a_real_evidently_ui(
    store: Store, model: LoadedModel, heldout: pd.DataFrame, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import free_port

    port = free_port()
    workspace = tmp_path / "evidently"
    log = tmp_path / "evidently.log"
    ui = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "evidently"),
            "ui",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workspace",
            str(workspace),
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert ui.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/api/version", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        log_traffic(store, model, heldout, labelled=0.5)
        settings = reporter_settings(evidently_ui_url=url, evidently_project="course")
        job.run(settings, store=store)
        job.run(settings, store=store, now=time.time() + 1)  # the project is found, not re-made
    finally:
        ui.terminate()
        try:
            ui.wait(timeout=10)
        except subprocess.TimeoutExpired:
            ui.kill()
            ui.wait(timeout=10)
    projects = [p for p in workspace.iterdir() if p.is_dir()]
    assert len(projects) == 1
    # two runs, three snapshots each: embedding drift, raw drift, quality
    assert len(list((projects[0] / "snapshots").glob("*.json"))) == 6


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_the_report_reads_the_log_the_real_serving_writes(
    store: Store, model: LoadedModel, heldout: pd.DataFrame
) -> None:
    """Serving (its compact log: ids as request + row, one probability column per class)
    -> reporter: every labelled row finds its probabilities, so ROC AUC is reported."""
    from fastapi.testclient import TestClient

    from mlplatform_serving.app import create_app
    from tests.services.serving.conftest import WRITER, serving_settings

    rows = heldout[model.features].to_dict("records")
    truth = heldout["target"].tolist()
    answers: list[dict[str, object]] = []
    # every held-out row labelled at once: the rate of one key is not what this test is about
    settings = serving_settings(log_flush_seconds=3600, feedback_rate=0)
    with TestClient(create_app(settings, store)) as c:
        for start in range(0, len(rows), 25):
            r = c.post("/predict", json={"instances": rows[start : start + 25]})
            answers += r.json()["predictions"]
        for answer, target in zip(answers, truth, strict=True):
            fb = c.post(
                "/feedback",
                headers=WRITER,
                json={"prediction_id": answer["prediction_id"], "target": target},
            )
            assert fb.status_code == 201, fb.text
    # leaving the client stopped the serving, which wrote the rest of its log
    outcome = job.run(reporter_settings(), store=store, now=time.time() + 1)
    quality = outcome.result.quality
    assert quality is not None and quality.rows == len(rows)
    positive = str(model.classes[1])
    scores = [a["probabilities"][positive] for a in answers]  # type: ignore[index]
    expected = skm.roc_auc_score([str(t) == positive for t in truth], scores)
    assert quality.roc_auc == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("label", ["0", "1"])
@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_three_rows_of_one_class_all_predicted_right_keep_drift_and_say_why(
    store: Store,
    model: LoadedModel,
    heldout: pd.DataFrame,
    prom_stack: PromStack,
    label: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 22: the 06:00 Job died with Evidently's "Cannot compute TPR" on such a window,
    and the drift, which did not need the labels, was lost with it."""
    prom_stack.clear()
    log_traffic(store, model, heldout.iloc[:40], ts=time.time() - 10)  # drift, unlabelled
    right = model.pipeline.predict(heldout[model.features]).astype(str) == heldout["target"].astype(
        str
    )
    three = heldout[right & (heldout["target"].astype(str) == label)].iloc[:3]
    sent = log_traffic(store, model, three, labelled=1.0)
    assert len(sent) == 3 and set(sent["target"]) == set(sent["prediction"]) == {label}

    # three rows are below the default minimum: this test is about what they define
    settings = reporter_settings(pushgateway_url=prom_stack.pushgateway_url, min_labelled_rows=1)
    with caplog.at_level("WARNING", logger="mlplatform.reporter"):
        outcome = job.run(settings, store=store)
    summary = store.get_json(keys.report_file(outcome.report_id, "summary.json"))
    html = store.get(keys.report_file(outcome.report_id, "report.html")).decode()

    assert set(summary["drift"]) == {"embedding", "raw"}
    assert summary["rows"]["labelled"] == 3
    q = summary["quality"]
    assert q["accuracy"] == 1.0 and q["rows"] == 3
    assert "roc_auc" not in q
    assert summary["quality_status"] == "partial"
    note = summary["quality_note"]
    assert "no ROC AUC" in note and f"all have the true label {label}" in note
    if label == "0":  # the positive class is absent: its precision, recall and F1 are 0/0
        assert not {"precision", "recall", "f1"} & set(q)
        assert "no precision or recall or F1 (no row has 1, the positive class" in note
    else:
        assert q["precision"] == q["recall"] == q["f1"] == 1.0
    # Evidently's section is left out, said so in the summary and logged at WARNING
    assert "Evidently could not draw the quality section" in note
    assert any(r.levelname == "WARNING" and "quality section" in r.message for r in caplog.records)
    assert "Data drift: embedding space" in html and "no ROC AUC" in html

    # drift and the defined numbers are pushed; undefined ones are not (not as 0, not NaN)
    for space, drift in summary["drift"].items():
        prom_stack.wait_for(_q("mlplatform_drift_share", space=space), drift["share"])
    prom_stack.wait_for(_q("mlplatform_model_accuracy"), 1.0)
    if label == "0":
        for name in ("f1", "precision", "recall"):
            prom_stack.wait_absent(_q(f"mlplatform_model_{name}"))
    else:
        prom_stack.wait_for(_q("mlplatform_model_f1"), 1.0)


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_cli_run_exits_zero_on_a_window_of_one_class_predicted_right(
    store: Store, model: LoadedModel, heldout: pd.DataFrame, tmp_path: Path
) -> None:
    log_traffic(store, model, heldout.iloc[:40], ts=time.time() - 10)
    predicted = model.pipeline.predict(heldout[model.features]).astype(str)
    right = (predicted == heldout["target"].astype(str)) & (predicted == "1")
    log_traffic(store, model, heldout[right].iloc[:3], labelled=1.0)
    ok = _run_cli(tmp_path / "store", MLPLATFORM_MIN_LABELLED_ROWS="1")
    assert ok.returncode == 0, ok.stderr
    assert "3 labelled" in ok.stdout and "drift embedding" in ok.stdout
    assert "quality (partial, 3 labelled rows, at least 1): accuracy=1.000" in ok.stdout
