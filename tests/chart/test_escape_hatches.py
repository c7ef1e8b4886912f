"""What an operator sets per component: placement, pod metadata, environment, service accounts,
images and resources; and every setting the README documents is reachable from values."""

from __future__ import annotations

import re
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tests.chart.conftest import (
    CHART,
    VARIANTS,
    Obj,
    clean,
    containers,
    env_value,
    find,
    objects,
    one,
    pod_labels,
    render,
    rendered_variant,
    workloads,
)
from tests.chart.test_env import SETTINGS, env_of
from tests.conftest import REPO

# values key of each component -> the pods it places (Pod names without the release prefix)
COMPONENTS = {
    "serving": "serving",
    "webapp": "webapp",
    "reporter": "reporter",
    "retrainer": "retrainer",
    "bootstrap": "bootstrap-1",
    "seaweedfs": "seaweedfs",
    "prometheus": "prometheus",
    "pushgateway": "pushgateway",
    "grafana": "grafana",
    "reporter.evidentlyUi": "evidently",
}


def nested(path: str, value: Any) -> dict[str, Any]:
    """``nested("reporter.evidentlyUi", {...})`` -> ``{"reporter": {"evidentlyUi": {...}}}``."""
    for key in reversed(path.split(".")):
        value = {key: value}
    return value  # type: ignore[no-any-return]


def workload(objs: list[Obj] | tuple[Obj, ...], name: str) -> tuple[Obj, Obj]:
    (found,) = [(o, s) for o, s in workloads(objs) if o["metadata"]["name"] == f"mlplatform-{name}"]
    return found


def with_evidently(values: dict[str, Any]) -> dict[str, Any]:
    reporter = values.setdefault("reporter", {})
    reporter.setdefault("evidentlyUi", {})["enabled"] = True
    return values


def test_the_scheduling_profile_reaches_every_pod() -> None:
    objs = rendered_variant("scheduling")
    placed = {name for name in COMPONENTS.values()}
    seen = set()
    for obj, spec in workloads(objs):
        name = obj["metadata"]["name"].removeprefix("mlplatform-")
        # every image through the mirror, every pod with both pull secrets
        for c in containers(spec):
            assert c["image"].startswith("registry.example.com/"), c["image"]
        assert spec["imagePullSecrets"] == [{"name": "mirror-pull"}, {"name": "ghcr-pull"}], name
        if name not in placed:
            continue
        seen.add(name)
        assert spec["nodeSelector"] == {"node-pool": "ml"}, name
        assert spec["tolerations"][0]["key"] == "dedicated", name
        assert spec["priorityClassName"] == "ml-platform", name
        labels = pod_labels(obj)
        assert labels["cost-center"] == "ml-42", name
        assert labels["app.kubernetes.io/component"] == name.removesuffix("-1"), name
        meta = obj["spec"]["template"]["metadata"] if obj["kind"] != "CronJob" else None
        meta = meta or obj["spec"]["jobTemplate"]["spec"]["template"]["metadata"]
        assert meta["annotations"]["example.com/owner"] == "ml-team", name
        (c,) = spec["containers"]
        assert env_value(c, "TZ") == "UTC", name
        if name == "evidently":
            continue
        assert spec["affinity"]["nodeAffinity"], name
        (spread,) = spec["topologySpreadConstraints"]
        # a constraint given without a labelSelector spreads the component's own pods
        assert spread["topologyKey"] == "topology.kubernetes.io/zone"
        assert spread["labelSelector"]["matchLabels"].items() <= labels.items(), name
        assert c["envFrom"] == [{"configMapRef": {"name": "ml-extra"}}], name
        account = one(objs, "ServiceAccount", spec["serviceAccountName"])
        role = "arn:aws:iam::111122223333:role/ml"
        assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == role, name
    assert seen == placed
    # the serving pods' GPU, as Kubernetes takes an extended resource
    _, serving = workload(objs, "serving")
    assert serving["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_the_chart_s_own_annotations_and_selector_labels_win() -> None:
    values = {
        "serving": {
            "podLabels": {"app.kubernetes.io/component": "other", "team": "ml"},
            "podAnnotations": {"prometheus.io/scrape": "false", "team": "ml"},
        }
    }
    dep = one(objects(render(values)), "Deployment", "mlplatform-serving")
    meta = dep["spec"]["template"]["metadata"]
    assert meta["labels"]["app.kubernetes.io/component"] == "serving"
    assert meta["labels"]["team"] == "ml"
    assert meta["annotations"]["prometheus.io/scrape"] == "true"  # serving is still scraped
    assert meta["annotations"]["team"] == "ml"


def test_serving_spreads_over_nodes_unless_told_otherwise(defaults: tuple[Obj, ...]) -> None:
    _, spec = workload(defaults, "serving")
    (spread,) = spec["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
    for name in ("webapp", "prometheus", "grafana"):
        _, other = workload(defaults, name)
        assert "topologySpreadConstraints" not in other, name
        for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
            assert key not in other, (name, key)


@pytest.mark.parametrize("component", list(COMPONENTS))
def test_extra_env_replaces_a_chart_variable_instead_of_repeating_it(component: str) -> None:
    _, spec = workload(objects(render(with_evidently({}))), COMPONENTS[component])
    (c,) = spec["containers"]
    if "env" not in c:  # Prometheus and the Pushgateway take flags only
        values = nested(component, {"extraEnv": [{"name": "TZ", "value": "UTC"}]})
        (c,) = workload(objects(render(values)), COMPONENTS[component])[1]["containers"]
        assert c["env"] == [{"name": "TZ", "value": "UTC"}]
        return
    first = c["env"][0]["name"]  # a variable the chart sets
    values = with_evidently(nested(component, {"extraEnv": [{"name": first, "value": "mine"}]}))
    _, spec = workload(objects(render(values)), COMPONENTS[component])
    (c,) = spec["containers"]
    names = [e["name"] for e in c["env"]]
    assert names.count(first) == 1, names  # server-side apply refuses duplicate names
    assert env_value(c, first) == "mine"
    assert len(names) == len(set(names))


def test_a_service_account_made_beforehand() -> None:
    values = {
        "serving": {"serviceAccount": {"create": False, "name": "ml-serving"}},
        "webapp": {"serviceAccount": {"create": False}},
    }
    objs = objects(render(values))
    assert not find(objs, "ServiceAccount", "mlplatform-serving")
    assert not find(objs, "ServiceAccount", "mlplatform-webapp")
    _, spec = workload(objs, "serving")
    assert spec["serviceAccountName"] == "ml-serving"
    # its Role is bound to the account the pods run as
    binding = one(objs, "RoleBinding", "mlplatform-serving")
    assert binding["subjects"][0]["name"] == "ml-serving"
    _, webapp = workload(objs, "webapp")
    assert webapp["serviceAccountName"] == "default"


def test_store_annotations_and_the_component_s_own_annotations_merge() -> None:
    values = {
        "store": {"serviceAccountAnnotations": {"a": "store", "b": "store"}},
        "serving": {"serviceAccount": {"annotations": {"b": "serving", "c": "serving"}}},
        "grafana": {"serviceAccount": {"name": "dashboards", "annotations": {"g": "1"}}},
    }
    objs = objects(render(values))
    serving = one(objs, "ServiceAccount", "mlplatform-serving")["metadata"]["annotations"]
    assert serving == {"a": "store", "b": "serving", "c": "serving"}
    reporter = one(objs, "ServiceAccount", "mlplatform-reporter")["metadata"]["annotations"]
    assert reporter == {"a": "store", "b": "store"}
    # only the pods that use the store get the store's annotations
    grafana = one(objs, "ServiceAccount", "dashboards")["metadata"]["annotations"]
    assert grafana == {"g": "1"}
    assert workload(objs, "grafana")[1]["serviceAccountName"] == "dashboards"


def test_resources_take_what_kubernetes_takes() -> None:
    values = {
        # no CPU limit (no throttling: Helm drops a default set to null), a GPU
        "serving": {
            "resources": {
                "requests": {"cpu": "250m", "memory": "512Mi"},
                "limits": {"cpu": None, "memory": "1Gi", "nvidia.com/gpu": 1},
            }
        },
        "webapp": {"resources": {"requests": {"cpu": 0.5, "memory": "256Mi"}}},
        "grafana": {"resources": {}},
    }
    objs = objects(render(values))
    _, spec = workload(objs, "serving")
    assert spec["containers"][0]["resources"]["limits"] == {"memory": "1Gi", "nvidia.com/gpu": 1}
    for obj in objs:
        kubernetes_validate.validate(clean(obj), "1.30", strict=True)


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"serving": {"resources": {"limits": {"cpu": "lots"}}}}, "cpu"),
        ({"serving": {"resources": {"limits": {"gpu": 1}}}}, "gpu"),  # not domain-qualified
        ({"serving": {"tolerations": [{"key": "a", "operator": "Maybe"}]}}, "operator"),
        ({"serving": {"extraEnv": [{"name": "A", "value": 1}]}}, "value"),  # not a string
        ({"serving": {"extraEnv": [{"value": "x"}]}}, "name"),
        ({"webapp": {"nodeSelector": {"pool": 1}}}, "pool"),
        ({"grafana": {"serviceAccount": {"role": "x"}}}, "role"),
        ({"serving": {"topologySpreadConstraints": [{"maxSkew": 1}]}}, "topologyKey"),
    ],
)
def test_the_schema_refuses_what_kubernetes_would(values: dict[str, Any], fragment: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=fragment):
        render(values)


def test_global_is_admitted_for_a_parent_chart() -> None:
    objs = objects(render({"global": {"imageRegistry": "mirror.local:5000/", "other": {"x": 1}}}))
    (prometheus,) = workload(objs, "prometheus")[1]["containers"]
    assert prometheus["image"] == "mirror.local:5000/prom/prometheus:v3.5.0"
    (serving,) = workload(objs, "serving")[1]["containers"]
    assert serving["image"].startswith("mirror.local:5000/mlplatform-serving:")


# -- every setting the README documents is reachable from values --------------------------------

# Settings that are not a release's to set, with the reason.
NOT_PER_RELEASE = {
    "MLPLATFORM_DEV_MODE": "make dev only: a cluster never runs with well-known dev secrets",
    "MLPLATFORM_MODEL_VERSION": "the retrainer patches it into serving's pod template",
    "MLPLATFORM_FORCE": "per Job: the pod's mlplatform.io/force annotation (/admin/retrain) or "
    "make retrain-now FORCE=1 (a CronJob with it would always retrain)",
    "MLPLATFORM_SERVING_URL": "local rollout only; in a cluster the retrainer patches the Deployment",
    "MLPLATFORM_SCHEDULE_MINUTES": "the local `schedule` command; the CronJob has its schedule",
}
# The container each component's values key reaches.
CONTAINERS = {"serving": "serving", "webapp": "webapp", "reporter": "reporter"}
CONTAINERS |= {"retrainer": "retrainer", "bootstrap": "bootstrap"}


def readme_settings() -> set[str]:
    text = (REPO / "README.md").read_text()
    return set(re.findall(r"MLPLATFORM_[A-Z0-9_]*[A-Z0-9]", text))


def named_by_chart() -> dict[str, set[str]]:
    """Variable -> containers the chart sets it on from a named value, over every variant."""
    out: dict[str, set[str]] = {}
    for variant in VARIANTS:
        for _, spec in workloads(rendered_variant(variant)):
            for c in containers(spec):
                for e in c.get("env", []):
                    out.setdefault(e["name"], set()).add(c["name"])
    return out


def test_the_readme_documents_settings() -> None:
    assert len(readme_settings()) > 30


@pytest.mark.parametrize("variable", sorted(readme_settings()))
def test_every_readme_setting_is_reachable_from_values(variable: str) -> None:
    if variable in NOT_PER_RELEASE:
        return
    readers = [
        key for key, container in CONTAINERS.items() if variable in env_of(SETTINGS[container])
    ]
    assert readers, f"{variable}: in the README, read by no service the chart runs"
    named = named_by_chart().get(variable, set())
    for key in readers:
        # extraEnv reaches it on every reader; a named value may set it already
        values = {key: {"extraEnv": [{"name": variable, "value": "42"}]}}
        _, spec = workload(objects(render(values)), COMPONENTS[key])
        (c,) = spec["containers"]
        assert [e["name"] for e in c["env"]].count(variable) == 1, (variable, key)
        assert env_value(c, variable) == "42", (variable, key)
    # the common ones have a named value (the issue's list)
    common = {
        "MLPLATFORM_MAX_BATCH_ROWS",
        "MLPLATFORM_MAX_BODY_BYTES",
        "MLPLATFORM_DRIFT_METHOD",
        "MLPLATFORM_DRIFT_THRESHOLD",
        "MLPLATFORM_DRIFT_SHARE_THRESHOLD",
        "MLPLATFORM_ESTIMATOR",
        "MLPLATFORM_N_COMPONENTS",
        "MLPLATFORM_WORKERS",
        "MLPLATFORM_RETRAIN_EVERY",
        "MLPLATFORM_WINDOW_HOURS",
    }
    if variable in common:
        assert named, f"{variable}: no named value sets it"


def test_named_values_reach_their_variables() -> None:
    values = {
        "serving": {"maxBatchRows": 500, "maxBodyBytes": 1048576, "accessLog": True},
        "reporter": {
            "driftMethod": "wasserstein",
            "driftThreshold": 0.1,
            "driftShareThreshold": 0.3,
            "minLabelledRows": 10,
        },
        "retrainer": {"estimator": "random_forest", "nComponents": 5},
    }
    objs = objects(render(values))
    (serving,) = workload(objs, "serving")[1]["containers"]
    assert env_value(serving, "MLPLATFORM_MAX_BATCH_ROWS") == "500"
    assert env_value(serving, "MLPLATFORM_MAX_BODY_BYTES") == "1048576"
    assert env_value(serving, "MLPLATFORM_ACCESS_LOG") == "true"
    (reporter,) = workload(objs, "reporter")[1]["containers"]
    assert env_value(reporter, "MLPLATFORM_DRIFT_METHOD") == "wasserstein"
    assert env_value(reporter, "MLPLATFORM_DRIFT_THRESHOLD") == "0.1"
    assert env_value(reporter, "MLPLATFORM_DRIFT_SHARE_THRESHOLD") == "0.3"
    assert env_value(reporter, "MLPLATFORM_MIN_LABELLED_ROWS") == "10"
    for name in ("retrainer", "bootstrap-1"):  # the first model is trained the same way
        (c,) = workload(objs, name)[1]["containers"]
        assert env_value(c, "MLPLATFORM_ESTIMATOR") == "random_forest"
        assert env_value(c, "MLPLATFORM_N_COMPONENTS") == "5"
    # the default body limit renders as an integer, not in exponent form
    (default,) = workload(rendered_variant("defaults"), "serving")[1]["containers"]
    assert env_value(default, "MLPLATFORM_MAX_BODY_BYTES") == "16777216"


def test_values_file_documents_the_escape_hatches() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key in COMPONENTS:
        node = values
        for part in key.split("."):
            node = node[part]
        for hatch in ("nodeSelector", "tolerations", "affinity", "topologySpreadConstraints"):
            assert hatch in node, (key, hatch)
        for hatch in ("podAnnotations", "podLabels", "priorityClassName", "extraEnv"):
            assert hatch in node, (key, hatch)
        assert "extraEnvFrom" in node and "resources" in node, key
        if key != "reporter.evidentlyUi":  # runs as the reporter's account
            assert set(node["serviceAccount"]) == {"create", "name", "annotations"}, key
