"""Every Grafana panel's PromQL returns data from a real Prometheus.

The Prometheus runs the chart's own scrape jobs (job names, honor_labels) against a real
serving process under traffic and a real Pushgateway that a real report run and a real retrainer
run pushed to. Kubernetes discovery is swapped for the serving process's static address.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml

from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import LocalStore
from mlplatform_reporter import job as report_job
from mlplatform_retrainer import retrain
from mlplatform_retrainer.job import upload_dataset
from tests.chart.conftest import CHART, one, rendered_variant
from tests.conftest import DATA, SIGNING_KEY, ServingProcess, publish_trained
from tests.services.reporter.conftest import (
    PromStack,
    reporter_settings,
    running_prom_stack,
)
from tests.services.retrainer.conftest import retrainer_settings

DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
# Grafana's built-in variables, as Grafana would substitute them for a short time range.
BUILTINS = {"$__rate_interval": "1m", "$__range": "10m", "$__interval": "15s"}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def panels() -> list[tuple[str, dict[str, Any]]]:
    return [(p.stem, panel) for p in DASHBOARDS for panel in load(p)["panels"]]


def expressions() -> list[tuple[str, str, str, str]]:
    """(dashboard, panel title, expr, legend) for every query of every panel."""
    return [
        (dash, panel["title"], t["expr"], t.get("legendFormat", ""))
        for dash, panel in panels()
        for t in panel["targets"]
    ]


def substitute(expr: str) -> str:
    for name, value in BUILTINS.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"an unsubstituted variable in {expr}"
    return expr


# -- structure ----------------------------------------------------------------------------------


def test_the_two_dashboards_and_their_panels() -> None:
    titles = {load(p)["title"]: {panel["title"] for panel in load(p)["panels"]} for p in DASHBOARDS}
    assert set(titles) == {"Serving", "Model quality and drift"}
    serving, quality = titles["Serving"], titles["Model quality and drift"]
    assert {
        "Request rate",
        "Error rate",
        "Latency p50 / p95 / p99",
        "Predictions by class",
        "Probability distribution",
        "Model version served",
    } <= serving
    assert {
        "Drift share",
        "Drifted columns",
        "Feature drift score, embedding space",
        "Feature drift score, raw features",
        "Model quality on labelled rows",
        "Labelled rows (time range)",
        "Retrain runs by outcome",
        "Model version history",
    } <= quality


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_is_provisionable(path: Path) -> None:
    dash = load(path)
    assert re.fullmatch(r"mlplatform-[a-z-]+", dash["uid"])
    # one template variable, the data source: queries never need substituting by a user
    (var,) = dash["templating"]["list"]
    assert var["type"] == "datasource" and var["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        assert panel["description"] and panel["gridPos"]["w"] > 0
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            assert t["datasource"] == panel["datasource"]
            assert re.search(r"mlplatform[_-]|ALERTS", t["expr"]), t["expr"]
    # the ConfigMap carries the file unchanged
    cm = one(rendered_variant("defaults"), "ConfigMap", f"mlplatform-dashboard-{path.stem}")
    assert json.loads(cm["data"][path.name]) == dash


# -- every query returns data from a real Prometheus ---------------------------------------------


@dataclass
class Live:
    prom: PromStack
    serving_url: str


def _prometheus_config(serving: str, pushgateway: str, rules: Path) -> dict[str, Any]:
    """The chart's rendered prometheus.yml, with the serving pods' discovery made static."""
    cm = one(rendered_variant("defaults"), "ConfigMap", "mlplatform-prometheus")
    config = yaml.safe_load(cm["data"]["prometheus.yml"])
    rules.write_text(cm["data"]["alerts.yaml"])
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(rules)]
    for job in config["scrape_configs"]:
        if job["job_name"] == "mlplatform-serving":
            del job["kubernetes_sd_configs"], job["relabel_configs"]
            job["static_configs"] = [{"targets": [serving], "labels": {"pod": "serving-0"}}]
        else:
            job["static_configs"] = [{"targets": [pushgateway]}]
    return config  # type: ignore[no-any-return]


WRITER = {"Authorization": "Bearer dash-writer"}


def _traffic(url: str, rows: pd.DataFrame, n: int, seed: int) -> None:
    """Single and batch predictions, rejected input, and feedback with the true label."""
    sample = rows.sample(n=n, random_state=seed).reset_index(drop=True)
    features = sample.drop(columns="target")
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(n):
            row = features.iloc[i].to_dict()
            r = client.post("/predict", json={"features": row})
            assert r.status_code == 200, r.text
            pid = r.json()["predictions"][0]["prediction_id"]
            if i % 2 == 0:  # half get labelled, a few wrongly, so quality is not all 1.0
                target = int(sample["target"].iloc[i]) ^ (1 if i % 10 == 0 else 0)
                fb = client.post(
                    "/feedback", headers=WRITER, json={"prediction_id": pid, "target": target}
                )
                assert fb.status_code == 201, fb.text
        batch = features.head(20).to_dict(orient="records")
        assert client.post("/predict", json={"instances": batch}).status_code == 200
        bad = client.post("/predict", json={"features": {"no_such_feature": 1.0}})
        assert bad.status_code == 422
        client.get("/ready")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, trained, shipped_dataset) -> Iterator[Live]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("dashboards")
    store = LocalStore(root / "store")
    store.ensure()
    upload_dataset(store, shipped_dataset)
    publish_trained(ModelRegistry(store, SIGNING_KEY), trained, shipped_dataset)
    serving = ServingProcess(
        {
            "MLPLATFORM_STORE_URL": store.url,
            "MLPLATFORM_SIGNING_KEY": SIGNING_KEY.decode(),
            "MLPLATFORM_ADMIN_TOKEN": "dash-admin",
            "MLPLATFORM_WRITER_TOKEN": "dash-writer",
            "MLPLATFORM_RETRAIN_EVERY": "0",
            "MLPLATFORM_LOG_FLUSH_SECONDS": "0.3",
        }
    )
    serving.start()
    try:
        with running_prom_stack(
            root,
            lambda pushgateway: _prometheus_config(
                f"127.0.0.1:{serving.port}", pushgateway, root / "alerts.yaml"
            ),
        ) as stack:
            _feed(stack, serving, store)
            yield Live(stack, serving.url)
    finally:
        serving.stop()


def _feed(stack: PromStack, serving: ServingProcess, store: LocalStore) -> None:
    """Real traffic, a real report and a real retrain, until every series has data."""
    stack.wait_for('up{job="mlplatform-serving"}', 1)
    stack.wait_for('up{job="pushgateway"}', 1)

    rows = pd.read_csv(DATA)
    _traffic(serving.url, rows, 60, seed=1)
    time.sleep(1.5)  # the prediction log is flushed to the store
    outcome = report_job.run(reporter_settings(pushgateway_url=stack.pushgateway_url), store=store)
    assert outcome.pushed
    result = retrain.run(
        retrainer_settings(pushgateway_url=stack.pushgateway_url), force=True, store=store
    )
    assert result.outcome in ("promoted", "rejected"), result.describe()
    # more traffic after the pushes, spread over scrapes, so every rate has two samples
    worker = threading.Thread(target=_traffic, args=(serving.url, rows, 40, 2))
    worker.start()
    worker.join(timeout=120)
    # one series per outcome: promoted, held, rejected, skipped, locked, failed (retrain._push)
    stack.wait_for('count(mlplatform_retrain_runs_total{job="mlplatform-retrainer"})', 6)
    stack.wait_for('count(mlplatform_drift_share{job="mlplatform-reporter"})', 2)
    time.sleep(2)


@pytest.mark.parametrize(
    ("dashboard", "title", "expr", "legend"),
    expressions(),
    ids=[f"{d}:{t}:{i}" for i, (d, t, _, _) in enumerate(expressions())],
)
def test_every_panel_query_returns_data(
    live: Live, dashboard: str, title: str, expr: str, legend: str
) -> None:
    query = substitute(expr)
    result = live.prom.query(query)
    assert result, f"{dashboard} / {title}: no data for {query}"
    values = [float(r["value"][1]) for r in result]
    assert any(math.isfinite(v) for v in values), f"{title}: only NaN/Inf for {query}: {result}"
    # every label the legend names is on every series, so no legend renders empty
    for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
        assert all(label in r["metric"] for r in result), f"{title}: no {label} in {result}"


def test_the_pushed_series_keep_their_job_labels(live: Live) -> None:
    # honor_labels: the Pushgateway's own job label does not overwrite the pushers'
    f1 = live.prom.query("mlplatform_model_f1")
    assert [r["metric"]["job"] for r in f1] == ["mlplatform-reporter"]
    runs = live.prom.query("mlplatform_retrain_runs_total")
    assert {r["metric"]["job"] for r in runs} == {"mlplatform-retrainer"}
    spaces = {r["metric"]["space"] for r in live.prom.query("mlplatform_feature_drift_score")}
    assert spaces == {"embedding", "raw"}
