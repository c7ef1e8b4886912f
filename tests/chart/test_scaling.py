"""Serving scales (HorizontalPodAutoscaler), drains nodes (a PDB only when it can be satisfied)
and rolls without losing a request (preStop sleep inside the termination grace period)."""

from __future__ import annotations

import re
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest

from tests.chart.conftest import Obj, clean, find, objects, one, render, rendered_variant


def serving_objects(values: dict[str, Any]) -> list[Obj]:
    return objects(render({"serving": values}))


def test_autoscaling_profile_renders_an_hpa_and_leaves_replicas_to_it() -> None:
    objs = rendered_variant("autoscaling")
    hpa = one(objs, "HorizontalPodAutoscaler", "mlplatform-serving")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "mlplatform-serving",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    targets = {m["resource"]["name"]: m["resource"]["target"] for m in hpa["spec"]["metrics"]}
    assert targets == {
        "cpu": {"type": "Utilization", "averageUtilization": 60},
        "memory": {"type": "Utilization", "averageUtilization": 80},
    }
    # a replica count in the Deployment would fight the autoscaler at every upgrade
    assert "replicas" not in one(objs, "Deployment", "mlplatform-serving")["spec"]
    pdb = one(objs, "PodDisruptionBudget", "mlplatform-serving")
    assert pdb["spec"]["minAvailable"] == 2


def test_no_hpa_by_default(defaults: tuple[Obj, ...]) -> None:
    assert not find(defaults, "HorizontalPodAutoscaler")
    assert one(defaults, "Deployment", "mlplatform-serving")["spec"]["replicas"] == 2


def test_a_cpu_only_hpa_has_one_metric() -> None:
    objs = serving_objects({"autoscaling": {"enabled": True}})
    (metric,) = one(objs, "HorizontalPodAutoscaler", "mlplatform-serving")["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    for obj in objs:
        kubernetes_validate.validate(clean(obj), "1.30", strict=True)


@pytest.mark.parametrize(
    ("values", "pdb"),
    [
        ({}, True),  # two replicas, one may go
        ({"replicaCount": 1}, False),  # a PDB on a lone pod blocks every node drain
        ({"replicaCount": 1, "pdbEnabled": True}, True),  # asked for explicitly
        ({"replicaCount": 3, "pdbEnabled": False}, False),
        ({"replicaCount": 2, "pdbMinAvailable": 2}, False),  # no pod may ever go
        ({"replicaCount": 1, "autoscaling": {"enabled": True, "minReplicas": 2}}, True),
        ({"replicaCount": 3, "autoscaling": {"enabled": True, "minReplicas": 1}}, False),
    ],
)
def test_the_pdb_only_when_it_can_be_satisfied(values: dict[str, Any], pdb: bool) -> None:
    assert bool(find(serving_objects(values), "PodDisruptionBudget")) is pdb


def test_prestop_sleep_fits_in_the_grace_period(defaults: tuple[Obj, ...]) -> None:
    spec = one(defaults, "Deployment", "mlplatform-serving")["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    sleep = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    assert c["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    # endpoint removal takes a few seconds to reach every proxy; the shutdown needs time after
    assert sleep >= 5
    assert spec["terminationGracePeriodSeconds"] >= sleep + 20
    # a rollout never takes a pod away before its replacement is ready
    strategy = one(defaults, "Deployment", "mlplatform-serving")["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    off = serving_objects({"preStopSleepSeconds": 0})
    (c,) = one(off, "Deployment", "mlplatform-serving")["spec"]["template"]["spec"]["containers"]
    assert "lifecycle" not in c


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}, "maxReplicas"),
        (
            {
                "autoscaling": {
                    "enabled": True,
                    "targetCPUUtilizationPercentage": 0,
                    "targetMemoryUtilizationPercentage": 0,
                }
            },
            "needs targetCPUUtilizationPercentage",
        ),
        ({"preStopSleepSeconds": 30, "terminationGracePeriodSeconds": 30}, "longer than"),
    ],
)
def test_impossible_scaling_settings_fail_the_render(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        serving_objects(values)


def test_the_schema_refuses_a_pdb_mode_it_does_not_know() -> None:
    with pytest.raises(helm.HelmValuesError, match="pdbEnabled"):
        serving_objects({"pdbEnabled": "sometimes"})
