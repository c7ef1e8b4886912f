"""Every Grafana panel's PromQL returns data from a real Prometheus.

The Prometheus runs the chart's own scrape jobs (job names, honor_labels) against a real
serving process under traffic (and its probes and scrapes) and a real Pushgateway that a real
report run and a real retrainer run pushed to. Kubernetes discovery is swapped for the serving
process's static address, with the labels the chart's relabelling gives it.
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

from mlplatform_common import metric_names
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import LocalStore
from mlplatform_reporter import job as report_job
from mlplatform_retrainer import retrain
from mlplatform_retrainer.job import upload_dataset
from tests.chart.conftest import CHART, NAMESPACE, RELEASE, one, rendered_variant
from tests.conftest import DATA, SIGNING_KEY, ServingProcess, publish_trained
from tests.services.reporter.conftest import (
    ALERTS,
    PromStack,
    log_traffic,
    published,
    reporter_settings,
    running_prom_stack,
    split_rows,
)
from tests.services.retrainer.conftest import retrainer_settings

DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
# Grafana's built-in variables, as Grafana would substitute them for a short time range.
BUILTINS = {"$__rate_interval": "1m", "$__range": "10m", "$__interval": "15s"}
# The dashboards' own variables, as a user picks the live test's release and its served version.
VARIABLES = {"$namespace": NAMESPACE, "$release": RELEASE, "$model_version": "v1"}
# A metric selector of a query: name and matchers.
SELECTOR = re.compile(r"\b(mlplatform_[a-z0-9_]+|up|ALERTS)\b(?:\{([^}]*)\})?")
SLI_METRICS = {"mlplatform_http_requests_total", "mlplatform_http_request_duration_seconds_bucket"}
WITHOUT_PROBES = f'route!~"{metric_names.PROBE_AND_SCRAPE_ROUTES}"'


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


def annotations() -> list[tuple[str, str, str]]:
    """(dashboard, annotation name, expr) for every annotation query."""
    return [
        (p.stem, a["name"], a["expr"]) for p in DASHBOARDS for a in load(p)["annotations"]["list"]
    ]


def panel(dashboard: str, title: str) -> dict[str, Any]:
    (found,) = [p for d, p in panels() if d == dashboard and p["title"] == title]
    return found


def substitute(expr: str) -> str:
    for name, value in {**BUILTINS, **VARIABLES}.items():
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
        "Regression error on labelled rows",
        "Regression R² and MAPE on labelled rows",
        "Labelled rows (time range)",
        "Retrain runs by outcome",
        "Model version history",
    } <= quality


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_is_provisionable(path: Path) -> None:
    dash = load(path)
    assert re.fullmatch(r"mlplatform-[a-z-]+", dash["uid"])
    # the data source, then the release to look at and its model versions, each a query of
    # that data source over the labels of the series the panels read
    source, *queries = dash["templating"]["list"]
    assert source["name"] == "datasource"
    assert source["type"] == "datasource" and source["query"] == "prometheus"
    assert [v["name"] for v in queries] == ["namespace", "release", "model_version"]
    for var in queries:
        assert var["type"] == "query"
        assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert re.fullmatch(r"label_values\(.+, (namespace|release|version)\)", var["definition"])
        assert var["query"]["query"] == var["definition"]
    assert queries[2]["multi"] and queries[2]["includeAll"] and queries[2]["allValue"] == ".*"
    for annotation in dash["annotations"]["list"]:
        assert annotation["enable"] and annotation["datasource"] == source_ref()
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


def source_ref() -> dict[str, str]:
    return {"type": "prometheus", "uid": "${datasource}"}


def test_every_query_reads_one_release_and_slis_leave_probes_and_scrapes_out() -> None:
    queries = [(f"{d}: {t}", e) for d, t, e, _ in expressions()]
    queries += [(f"{d}: annotation {n}", e) for d, n, e in annotations()]
    for where, expr in queries:
        for name, matchers in SELECTOR.findall(expr):
            assert 'namespace="$namespace"' in matchers, (where, name)
            assert 'release="$release"' in matchers, (where, name)
            if name in SLI_METRICS:
                assert WITHOUT_PROBES in matchers, (where, name)
            # the series that carry a model version are read for the versions picked
            if name == "mlplatform_predictions_total":
                assert 'model_version=~"$model_version"' in matchers, where
            if name == "mlplatform_model_info" and "offset" not in expr:
                assert 'version=~"$model_version"' in matchers, where
    # the SLIs of the alert rules leave out the same routes
    for rule in ("MLPlatformServingErrors", "MLPlatformServingSlow"):
        (expr,) = [r["expr"] for r in alert_rules() if r["alert"] == rule]
        for name, matchers in SELECTOR.findall(expr):
            assert WITHOUT_PROBES in matchers, (rule, name)


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


# alert -> the panel that draws its threshold
DRAWN = {
    "MLPlatformDataDrift": ("model-quality", "Drift share"),
    "MLPlatformModelF1Low": ("model-quality", "Model quality on labelled rows"),
    "MLPlatformModelR2Low": ("model-quality", "Regression R² and MAPE on labelled rows"),
    "MLPlatformReportStale": ("model-quality", "Last successful report"),
    "MLPlatformServingErrors": ("serving", "Error rate"),
    "MLPlatformServingSlow": ("serving", "Latency p50 / p95 / p99"),
}


@pytest.mark.parametrize("alert", list(DRAWN))
def test_thresholds_are_drawn_where_the_alerts_fire(alert: str) -> None:
    (expr,) = [r["expr"] for r in alert_rules() if r["alert"] == alert]
    # the alert's comparison: `(...) >= 0.5`, `(...) < 0.8`, ...
    fires_at = float(re.findall(r"\)\s*(?:>=|>|<=|<)\s*([0-9.]+)", expr)[0])
    drawn = panel(*DRAWN[alert])
    defaults = drawn["fieldConfig"]["defaults"]
    steps = defaults["thresholds"]["steps"]
    assert [s["value"] for s in steps if s["value"] is not None] == [fires_at], alert
    assert {s["color"] for s in steps} == {"green", "red"}
    if drawn["type"] == "timeseries":
        assert defaults["custom"]["thresholdsStyle"]["mode"] in ("dashed", "line", "area")
    assert alert in drawn["description"]


# -- every query returns data from a real Prometheus ---------------------------------------------


@dataclass
class Live:
    prom: PromStack
    serving_url: str
    api_requests: int
    """Requests sent to serving that are not probes or scrapes."""


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
            # the labels the chart's relabelling takes from the pod
            labels = {"pod": "serving-0", "namespace": NAMESPACE, "release": RELEASE}
            job["static_configs"] = [{"targets": [serving], "labels": labels}]
        else:
            job["static_configs"] = [{"targets": [pushgateway]}]
    return config  # type: ignore[no-any-return]


WRITER = {"Authorization": "Bearer dash-writer"}
# What kubelet probes and Prometheus scrapes (and KServe-style clients' readiness checks) ask.
PROBES_AND_SCRAPES = (
    "/health",
    "/ready",
    "/v2/health/live",
    "/v2/health/ready",
    "/v2/models/mlplatform/ready",
    "/metrics",
)


def _traffic(url: str, rows: pd.DataFrame, n: int, seed: int) -> int:
    """Single and batch predictions, rejected input, and feedback with the true label, between
    probes and scrapes; returns how many requests were not probes or scrapes."""
    sample = rows.sample(n=n, random_state=seed).reset_index(drop=True)
    features = sample.drop(columns="target")
    sent = 0
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(n):
            row = features.iloc[i].to_dict()
            r = client.post("/predict", json={"features": row})
            assert r.status_code == 200, r.text
            sent += 1
            pid = r.json()["predictions"][0]["prediction_id"]
            if i % 2 == 0:  # half get labelled, a few wrongly, so quality is not all 1.0
                target = int(sample["target"].iloc[i]) ^ (1 if i % 10 == 0 else 0)
                fb = client.post(
                    "/feedback", headers=WRITER, json={"prediction_id": pid, "target": target}
                )
                assert fb.status_code == 201, fb.text
                sent += 1
            probe = PROBES_AND_SCRAPES[i % len(PROBES_AND_SCRAPES)]
            assert client.get(probe).status_code == 200, probe
        batch = features.head(20).to_dict(orient="records")
        assert client.post("/predict", json={"instances": batch}).status_code == 200
        bad = client.post("/predict", json={"features": {"no_such_feature": 1.0}})
        assert bad.status_code == 422
        sent += 2
    return sent


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
            sent = _feed(stack, serving, store)
            yield Live(stack, serving.url, sent)
    finally:
        serving.stop()


def _feed(stack: PromStack, serving: ServingProcess, store: LocalStore) -> int:
    """Real traffic, a real report and a real retrain, until every series has data; returns
    how many requests serving got that were not probes or scrapes."""
    stack.wait_for('up{job="mlplatform-serving"}', 1)
    stack.wait_for('up{job="pushgateway"}', 1)

    rows = pd.read_csv(DATA)
    sent = _traffic(serving.url, rows, 60, seed=1)
    time.sleep(1.5)  # the prediction log is flushed to the store
    release = {"release": RELEASE, "namespace": NAMESPACE}  # as the chart sets them
    reporter = reporter_settings(pushgateway_url=stack.pushgateway_url, **release)
    outcome = report_job.run(reporter, store=store)
    assert outcome.pushed
    retrainer = retrainer_settings(pushgateway_url=stack.pushgateway_url, **release)
    result = retrain.run(retrainer, force=True, store=store)
    assert result.outcome in ("promoted", "rejected"), result.describe()
    # more traffic after the pushes, spread over scrapes, so every rate has two samples
    later: list[int] = []
    worker = threading.Thread(target=lambda: later.append(_traffic(serving.url, rows, 40, 2)))
    worker.start()
    worker.join(timeout=120)
    assert later, "the second round of traffic did not finish"
    # one series per outcome: promoted, held, rejected, skipped, locked, failed (retrain._push)
    stack.wait_for('count(mlplatform_retrain_runs_total{job="mlplatform-retrainer"})', 6)
    stack.wait_for('count(mlplatform_drift_share{job="mlplatform-reporter"})', 2)
    time.sleep(2)
    return sent + later[0]


REGRESSION_ONLY = 'task="regression"'
CLASSIFICATION_ONLY = 'task="classification"'
# A series only a regression's serving exports (no task label: a release serves one task).
REGRESSION_SERVING = metric_names.PREDICTION_VALUE + "_"


def regression_only(expr: str) -> bool:
    """Whether a query reads what only a regression version gives."""
    return REGRESSION_ONLY in expr or REGRESSION_SERVING in expr


@pytest.fixture(scope="module")
def regression_live(
    tmp_path_factory: pytest.TempPathFactory, diabetes_trained, diabetes_dataset
) -> Iterator[PromStack]:  # type: ignore[no-untyped-def]
    """A real report of a regression version (diabetes), pushed to a Pushgateway that a
    Prometheus with the chart's configuration scrapes, and a real serving process of that
    version under traffic. A release serves one task at a time, so the regression panels are
    read here and the classifier's in ``live``."""
    root = tmp_path_factory.mktemp("dashboards-regression")
    store = LocalStore(root / "store")
    store.ensure()
    model = published(store, diabetes_trained, diabetes_dataset)
    rows = split_rows(diabetes_dataset, "regression")
    log_traffic(store, model, rows, labelled=1.0)
    serving = ServingProcess(
        {
            "MLPLATFORM_STORE_URL": store.url,
            "MLPLATFORM_SIGNING_KEY": SIGNING_KEY.decode(),
            "MLPLATFORM_ADMIN_TOKEN": "dash-admin",
            "MLPLATFORM_RETRAIN_EVERY": "0",
        }
    ).start()
    features = rows.drop(columns="target").to_dict(orient="records")
    try:
        with running_prom_stack(
            root,
            lambda pushgateway: _prometheus_config(
                f"127.0.0.1:{serving.port}", pushgateway, root / "alerts.yaml"
            ),
        ) as stack:
            stack.wait_for('up{job="pushgateway"}', 1)
            stack.wait_for('up{job="mlplatform-serving"}', 1)
            release = {"release": RELEASE, "namespace": NAMESPACE}
            reporter = reporter_settings(pushgateway_url=stack.pushgateway_url, **release)
            assert report_job.run(reporter, store=store).pushed
            stack.wait_for('count(mlplatform_model_rmse{job="mlplatform-reporter"})', 1)
            for i in range(0, 40, 4):  # predictions spread over scrapes: two samples a rate
                r = httpx.post(serving.url + "/predict", json={"instances": features[i : i + 4]})
                assert r.status_code == 200, r.text
                time.sleep(0.3)
            stack.wait_for(f"sum({REGRESSION_SERVING}count)", 40)
            yield stack
    finally:
        serving.stop()


@pytest.mark.parametrize(
    ("dashboard", "title", "expr", "legend"),
    expressions(),
    ids=[f"{d}:{t}:{i}" for i, (d, t, _, _) in enumerate(expressions())],
)
def test_every_panel_query_returns_data(
    live: Live, request: pytest.FixtureRequest, dashboard: str, title: str, expr: str, legend: str
) -> None:
    query = substitute(expr)
    prom = request.getfixturevalue("regression_live") if regression_only(expr) else live.prom
    result = prom.query(query)
    assert result, f"{dashboard} / {title}: no data for {query}"
    values = [float(r["value"][1]) for r in result]
    assert any(math.isfinite(v) for v in values), f"{title}: only NaN/Inf for {query}: {result}"
    # every label the legend names is on every series, so no legend renders empty
    for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
        assert all(label in r["metric"] for r in result), f"{title}: no {label} in {result}"


def test_each_task_shows_its_own_quality_panels(live: Live, regression_live: PromStack) -> None:
    # a classifier's report fills the classification panel only, a regression's the
    # regression panels only: the panels are told apart by the task label
    quality = [e for _, t, e, _ in expressions() if "labelled rows" in t and "_model_" in e]
    regression = [e for e in quality if REGRESSION_ONLY in e]
    classification = [e for e in quality if CLASSIFICATION_ONLY in e]
    assert len(regression) == 4 and len(classification) == 6
    assert len(regression) + len(classification) == len(quality)
    for expr in regression:
        assert live.prom.query(substitute(expr)) == [], expr
    for expr in classification:
        assert regression_live.query(substitute(expr)) == [], expr
    # a classifier's serving fills the probability heatmap only (it has no value histogram), a
    # regression's the value heatmap only (its probability histogram is exported empty)
    (values,) = [e for _, _, e, _ in expressions() if REGRESSION_SERVING in e]
    (proba,) = [e for _, t, e, _ in expressions() if t == "Probability distribution"]
    assert live.prom.query(substitute(values)) == []
    assert {float(r["value"][1]) for r in regression_live.query(substitute(proba))} == {0.0}


def test_the_pushed_series_keep_their_job_labels(live: Live) -> None:
    # honor_labels: the Pushgateway's own job label does not overwrite the pushers', and their
    # release and namespace (the grouping key) stay on every series
    f1 = live.prom.query("mlplatform_model_f1")
    assert [r["metric"]["job"] for r in f1] == ["mlplatform-reporter"]
    runs = live.prom.query("mlplatform_retrain_runs_total")
    assert {r["metric"]["job"] for r in runs} == {"mlplatform-retrainer"}
    pushed = live.prom.query('{job=~"mlplatform-reporter|mlplatform-retrainer"}')
    assert len(pushed) > 10
    assert {(r["metric"]["release"], r["metric"]["namespace"]) for r in pushed} == {
        (RELEASE, NAMESPACE)
    }
    spaces = {r["metric"]["space"] for r in live.prom.query("mlplatform_feature_drift_score")}
    assert spaces == {"embedding", "raw"}


@pytest.mark.parametrize(
    ("dashboard", "name", "expr"),
    annotations(),
    ids=[f"{d}:{n}" for d, n, _ in annotations()],
)
def test_promotions_and_retrains_are_marked(
    live: Live, dashboard: str, name: str, expr: str
) -> None:
    # serving started on v1 and the retrainer ran (promoted or rejected) a moment ago
    result = live.prom.query(substitute(expr))
    assert result, f"{dashboard} / {name}: no data for {substitute(expr)}"
    if name == "Promotions":
        assert [r["metric"]["version"] for r in result] == ["v1"]
    else:
        assert {r["metric"]["outcome"] for r in result} <= {"promoted", "rejected"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_the_variables_offer_the_live_release(live: Live, path: Path) -> None:
    queries = load(path)["templating"]["list"][1:]
    assert len(queries) == 3
    for var in queries:
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", var["definition"])
        assert match, var["definition"]
        selector, label = substitute(match.group(1)), match.group(2)
        r = httpx.get(
            f"{live.prom.prometheus_url}/api/v1/label/{label}/values",
            params={"match[]": selector},
            timeout=5,
        )
        r.raise_for_status()
        expected = {"namespace": NAMESPACE, "release": RELEASE, "version": "v1"}[label]
        assert r.json()["data"] == [expected], (var["name"], selector)


def test_the_slis_count_only_the_api_requests(live: Live) -> None:
    # the probes and scrapes did reach serving and its request counter
    routes = {r["metric"]["route"] for r in live.prom.query("mlplatform_http_requests_total")}
    assert (
        set(PROBES_AND_SCRAPES) - {"/v2/models/mlplatform/ready"} | {"/v2/models/{name}/ready"}
        <= routes
    )
    sli_panels = ("Request rate", "Error rate", "Latency p50 / p95 / p99", "p95 latency by route")
    checked = 0
    for title in sli_panels:
        for target in panel("serving", title)["targets"]:
            for name, matchers in SELECTOR.findall(substitute(target["expr"])):
                if "status=" in matchers:
                    continue  # the error rate's 5xx or 4xx share, not every request
                # the panel's series, counted since serving started: every API request, no
                # probe and no scrape
                counter = name.replace("_bucket", "_count")
                live.prom.wait_for(f"sum({counter}{{{matchers}}})", live.api_requests)
                checked += 1
    assert checked >= 4
    shown = live.prom.query(substitute(panel("serving", "Request rate")["targets"][0]["expr"]))
    assert {r["metric"]["route"] for r in shown} == {"/predict", "/feedback"}
