"""prometheus-operator users (ServiceMonitor, PodMonitor, PrometheusRule) and persistent
Prometheus and Grafana data."""

from __future__ import annotations

import copy
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, push_to_gateway

from tests.chart.conftest import (
    NAMESPACE,
    RELEASE,
    Obj,
    clean,
    env_value,
    find,
    objects,
    one,
    pod_labels,
    pod_spec,
    render,
    rendered_variant,
    validate,
    variant_values,
    without_runbooks,
)
from tests.chart.test_render import rendered_prometheus
from tests.conftest import REPO
from tests.services.reporter.conftest import ALERTS, PROMTOOL, require_binary, running_prom_stack
from tests.services.retrainer.conftest import NOT_FOUND, JsonApi

OPERATOR_KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule")


def test_none_by_default(defaults: tuple[Obj, ...]) -> None:
    for kind in (*OPERATOR_KINDS, "PersistentVolumeClaim"):
        assert not find(defaults, kind), kind


def test_the_operator_profile_scrapes_what_the_bundled_prometheus_scrapes() -> None:
    objs = rendered_variant("operator")
    assert not find(objs, "Deployment", "mlplatform-prometheus")
    for target in ("serving", "pushgateway"):
        monitor = one(objs, "ServiceMonitor", f"mlplatform-{target}")
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        service = one(objs, "Service", f"mlplatform-{target}")
        selector = monitor["spec"]["selector"]["matchLabels"]
        assert selector.items() <= service["metadata"]["labels"].items(), target
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ml"]}
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        assert endpoint["interval"] == "30s"
    (serving,) = one(objs, "ServiceMonitor", "mlplatform-serving")["spec"]["endpoints"]
    # the bundled config's job name: the dashboards and rules select job="mlplatform-serving"
    assert {"targetLabel": "job", "replacement": "mlplatform-serving", "action": "replace"} in (
        serving["relabelings"]
    )
    # and the release label the bundled config sets (the operator adds namespace itself)
    release = {
        "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
        "targetLabel": "release",
        "action": "replace",
    }
    assert release in serving["relabelings"]
    (pod,) = one(rendered_variant("podmonitor"), "PodMonitor", "mlplatform-serving")["spec"][
        "podMetricsEndpoints"
    ]
    assert release in pod["relabelings"]
    (push,) = one(objs, "ServiceMonitor", "mlplatform-pushgateway")["spec"]["endpoints"]
    assert push["honorLabels"] is True  # the pushers' job labels survive
    # the rest of the profile: an HPA and IAM on the store's accounts
    assert find(objs, "HorizontalPodAutoscaler", "mlplatform-serving")
    role = "arn:aws:iam::111122223333:role/mlplatform-store"
    for account in ("serving", "reporter", "retrainer", "bootstrap"):
        sa = one(objs, "ServiceAccount", f"mlplatform-{account}")
        assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == role


def promtool(*args: str) -> str:
    out = subprocess.run(
        [str(require_binary(PROMTOOL)), *args], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def bundled_rules(variant: str) -> list[dict[str, Any]]:
    cm = one(rendered_variant(variant), "ConfigMap", "mlplatform-prometheus")
    return yaml.safe_load(cm["data"]["alerts.yaml"])["groups"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("variant", ["operator", "podmonitor"])
def test_the_prometheus_rule_is_the_tested_alert_file(variant: str, tmp_path: Path) -> None:
    rule = one(rendered_variant(variant), "PrometheusRule", "mlplatform")
    assert without_runbooks(rule["spec"]["groups"]) == yaml.safe_load(ALERTS.read_text())["groups"]
    assert rule["spec"]["groups"] == bundled_rules("defaults")  # one source, both ways
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    assert "SUCCESS: 7 rules found" in promtool("check", "rules", str(path))


# -- alerts reach someone, with a runbook -------------------------------------------------------

RUNBOOKS = REPO / "docs" / "runbooks.md"
DEFAULT_RUNBOOKS = "https://github.com/mlplatform/mlplatform/blob/main/docs/runbooks.md"


@pytest.mark.parametrize(
    ("variant", "base"),
    [("defaults", DEFAULT_RUNBOOKS), ("alertmanager", "https://wiki.example.com/ml/runbooks")],
)
def test_every_alert_links_its_runbook(variant: str, base: str, tmp_path: Path) -> None:
    groups = bundled_rules(variant)
    alerts = [r for g in groups for r in g["rules"] if "alert" in r]
    assert len(alerts) == 7
    # the chart adds only the link: the rest is the promtool-tested file
    assert without_runbooks(groups) == yaml.safe_load(ALERTS.read_text())["groups"]
    sections = {
        heading.lower()
        for heading in re.findall(r"^## (\S+)$", RUNBOOKS.read_text(), flags=re.MULTILINE)
    }
    for rule in alerts:
        anchor = rule["alert"].lower()
        assert rule["annotations"]["runbook_url"] == f"{base}#{anchor}", rule["alert"]
        assert anchor in sections, f"docs/runbooks.md has no section for {rule['alert']}"
    path = tmp_path / "alerts.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    assert "SUCCESS: 7 rules found" in promtool("check", "rules", str(path))


def _checked_config(variant: str, tmp_path: Path) -> dict[str, Any]:
    """The rendered prometheus.yml (rules beside it, discovery made static), passed by promtool."""
    path = rendered_prometheus(tmp_path, variant)
    out = promtool("check", "config", str(path))
    assert "SUCCESS: 7 rules found" in out, out
    return yaml.safe_load(path.read_text())  # type: ignore[no-any-return]


def test_the_bundled_prometheus_sends_alerts_to_the_alertmanagers_given(tmp_path: Path) -> None:
    config = _checked_config("alertmanager", tmp_path)
    given = variant_values("alertmanager")["prometheus"]["alerting"]["alertmanagers"]
    assert config["alerting"] == {"alertmanagers": given}
    # promtool refuses a misspelt field of an Alertmanager entry, as Prometheus would
    config["alerting"]["alertmanagers"][0]["static_config"] = [{"targets": ["am:9093"]}]
    (tmp_path / "bad.yml").write_text(yaml.safe_dump(config))
    bad = subprocess.run(
        [str(PROMTOOL), "check", "config", str(tmp_path / "bad.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "static_config" in bad.stdout + bad.stderr


def test_no_alertmanager_by_default(tmp_path: Path) -> None:
    assert "alerting" not in _checked_config("defaults", tmp_path)


def test_the_pod_monitor_selects_the_serving_pods() -> None:
    objs = rendered_variant("podmonitor")
    monitor = one(objs, "PodMonitor", "mlplatform-serving")
    assert monitor["metadata"]["labels"]["team"] == "ml"
    deployment = one(objs, "Deployment", "mlplatform-serving")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels(deployment).items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    assert endpoint["port"] in {p["name"] for p in c["ports"]}
    assert endpoint["path"] == "/metrics"
    assert not find(objs, "ServiceMonitor")


def test_the_crd_shapes_refuse_a_misspelt_field() -> None:
    cached = one(rendered_variant("operator"), "ServiceMonitor", "mlplatform-serving")
    monitor = copy.deepcopy(clean(cached))  # the render is cached for the other tests
    validate(monitor, "1.30")
    monitor["spec"]["endpoints"][0]["honourLabels"] = True
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor, "1.30")


def test_prometheus_and_grafana_keep_their_data_on_pvcs() -> None:
    objs = rendered_variant("persistence")
    prometheus = one(objs, "Deployment", "mlplatform-prometheus")
    spec = prometheus["spec"]["template"]["spec"]
    (data,) = [v for v in spec["volumes"] if v["name"] == "data"]
    assert data == {"name": "data", "persistentVolumeClaim": {"claimName": "mlplatform-prometheus"}}
    claim = one(objs, "PersistentVolumeClaim", "mlplatform-prometheus")
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert claim["spec"]["storageClassName"] == "standard"
    args = spec["containers"][0]["args"]
    assert "--storage.tsdb.retention.size=45GB" in args
    assert "--storage.tsdb.retention.time=30d" in args
    assert prometheus["spec"]["strategy"]["type"] == "Recreate"
    grafana = one(objs, "Deployment", "mlplatform-grafana")
    (data,) = [v for v in grafana["spec"]["template"]["spec"]["volumes"] if v["name"] == "data"]
    assert data["persistentVolumeClaim"]["claimName"] == "mlplatform-grafana"
    assert grafana["spec"]["strategy"]["type"] == "Recreate"  # one writer of the RWO volume
    assert one(objs, "PersistentVolumeClaim", "mlplatform-grafana")
    # without persistence: a sized emptyDir, no size flag
    default = one(rendered_variant("defaults"), "Deployment", "mlplatform-prometheus")
    (data,) = [v for v in default["spec"]["template"]["spec"]["volumes"] if v["name"] == "data"]
    assert data["emptyDir"]["sizeLimit"] == "4Gi"
    assert not [
        a
        for a in default["spec"]["template"]["spec"]["containers"][0]["args"]
        if "retention.size" in a
    ]


def test_the_jobs_push_with_the_release_and_namespace(defaults: tuple[Obj, ...]) -> None:
    for job in ("reporter", "retrainer"):
        (c,) = pod_spec(one(defaults, "CronJob", f"mlplatform-{job}"))["containers"]  # type: ignore[index]
        assert env_value(c, "MLPLATFORM_RELEASE") == RELEASE
        assert env_value(c, "MLPLATFORM_NAMESPACE") == NAMESPACE


class AlertReceiver(JsonApi):
    """Where the Alertmanager API v2 takes alerts from Prometheus (``POST /api/v2/alerts``)."""

    def answer(self, request: dict[str, Any]) -> tuple[int, Any]:
        if request["method"] == "POST" and request["path"] == "/api/v2/alerts":
            return 200, {}
        return NOT_FOUND

    def alerts(self) -> list[dict[str, Any]]:
        return [a for r in self.requests if r["path"] == "/api/v2/alerts" for a in r["body"]]


def test_a_firing_alert_reaches_the_alertmanager_with_its_runbook(tmp_path: Path) -> None:
    receiver = AlertReceiver()
    receiver.thread.start()
    try:
        target = receiver.url.removeprefix("http://")
        values = {
            "prometheus": {
                "alerting": {"alertmanagers": [{"static_configs": [{"targets": [target]}]}]}
            }
        }
        cm = one(objects(render(values)), "ConfigMap", "mlplatform-prometheus")
        (tmp_path / "alerts.yaml").write_text(cm["data"]["alerts.yaml"])

        def config(pushgateway: str) -> dict[str, Any]:
            # the chart's prometheus.yml as rendered, only faster, its rules file beside it and
            # the Pushgateway (the serving pods' discovery is not needed here)
            rendered = yaml.safe_load(cm["data"]["prometheus.yml"])
            rendered["global"].update(scrape_interval="1s", evaluation_interval="1s")
            rendered["rule_files"] = [str(tmp_path / "alerts.yaml")]
            (push,) = [j for j in rendered["scrape_configs"] if j["job_name"] == "pushgateway"]
            push["static_configs"] = [{"targets": [pushgateway]}]
            rendered["scrape_configs"] = [push]
            return rendered  # type: ignore[no-any-return]

        with running_prom_stack(tmp_path, config) as stack:
            # a failed retrain run, pushed as the retrainer of this release pushes it
            registry = CollectorRegistry()
            runs = Counter("mlplatform_retrain_runs", "runs", ["outcome"], registry=registry)
            runs.labels("failed").inc()
            push_to_gateway(
                stack.pushgateway_url,
                job="mlplatform-retrainer",
                grouping_key={"instance": "mlplatform", "release": RELEASE, "namespace": NAMESPACE},
                registry=registry,
            )
            deadline = time.monotonic() + 30
            while not receiver.alerts() and time.monotonic() < deadline:
                time.sleep(0.3)
    finally:
        receiver.stop()
    (alert,) = {a["labels"]["alertname"]: a for a in receiver.alerts()}.values()
    assert alert["labels"] == {
        "alertname": "MLPlatformRetrainFailing",
        "namespace": NAMESPACE,
        "release": RELEASE,
        "severity": "warning",
        "platform": "mlplatform",  # the config's external label
    }
    assert alert["annotations"]["runbook_url"] == f"{DEFAULT_RUNBOOKS}#mlplatformretrainfailing"
