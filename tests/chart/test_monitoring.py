"""prometheus-operator users (ServiceMonitor, PodMonitor, PrometheusRule) and persistent
Prometheus and Grafana data."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.chart.conftest import (
    NAMESPACE,
    RELEASE,
    Obj,
    clean,
    env_value,
    find,
    one,
    pod_labels,
    pod_spec,
    rendered_variant,
    validate,
)
from tests.services.reporter.conftest import ALERTS, PROMTOOL, require_binary

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
    (push,) = one(objs, "ServiceMonitor", "mlplatform-pushgateway")["spec"]["endpoints"]
    assert push["honorLabels"] is True  # the pushers' job labels survive
    # the rest of the profile: an HPA and IAM on the store's accounts
    assert find(objs, "HorizontalPodAutoscaler", "mlplatform-serving")
    role = "arn:aws:iam::111122223333:role/mlplatform-store"
    for account in ("serving", "reporter", "retrainer", "bootstrap"):
        sa = one(objs, "ServiceAccount", f"mlplatform-{account}")
        assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == role


@pytest.mark.parametrize("variant", ["operator", "podmonitor"])
def test_the_prometheus_rule_is_the_tested_alert_file(variant: str, tmp_path: Path) -> None:
    rule = one(rendered_variant(variant), "PrometheusRule", "mlplatform")
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    out = subprocess.run(
        [str(require_binary(PROMTOOL)), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


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
