"""Chart fixtures: the chart rendered by Helm's own engine (helm-python-sdk), per values variant.

Variants are the chart's defaults plus every ``charts/mlplatform/ci/*-values.yaml``. ``render``
is ``helm install`` against a cluster: Helm's ``lookup`` reaches a stand-in Kubernetes API
(FakeCluster) where the release namespace exists and holds the Secrets given (none: a fresh
install). ``render(..., cluster=False)`` renders with no cluster at all, as ``helm template`` and
Argo CD do.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO
from tests.services.retrainer.conftest import NOT_FOUND, JsonApi

CHART = REPO / "charts" / "mlplatform"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
VARIANTS: dict[str, Path | None] = {
    "defaults": None,
    **{p.name.removesuffix("-values.yaml"): p for p in CI_VALUES},
}
RELEASE = "mlplatform"
NAMESPACE = "ml"
OUR_IMAGES = (
    "mlplatform-serving",
    "mlplatform-webapp",
    "mlplatform-reporter",
    "mlplatform-retrainer",
)
Obj = dict[str, Any]


def variant_values(variant: str) -> dict[str, Any]:
    path = VARIANTS[variant]
    return {} if path is None else yaml.safe_load(path.read_text()) or {}


class FakeCluster(JsonApi):
    """The API calls Helm's ``lookup`` makes: discovery of v1, the release namespace, and GETs
    of the Secrets in ``secrets`` (name -> data, base64 values); anything else is not found."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: dict[str, dict[str, str]] = {}
        self.thread.start()

    def answer(self, request: dict[str, Any]) -> tuple[int, Any]:
        path = request["path"].split("?")[0]
        if path == "/api/v1":
            kinds = [("namespaces", "Namespace", False), ("secrets", "Secret", True)]
            resources = [
                {
                    "name": n,
                    "singularName": k.lower(),
                    "namespaced": ns,
                    "kind": k,
                    "verbs": ["get"],
                }
                for n, k, ns in kinds
            ]
            return 200, {"kind": "APIResourceList", "groupVersion": "v1", "resources": resources}
        if path == f"/api/v1/namespaces/{NAMESPACE}":
            return 200, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        prefix = f"/api/v1/namespaces/{NAMESPACE}/secrets/"
        if path.startswith(prefix) and path[len(prefix) :] in self.secrets:
            name = path[len(prefix) :]
            meta = {"name": name, "namespace": NAMESPACE}
            return 200, {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": meta,
                "data": self.secrets[name],
            }
        return NOT_FOUND

    def kubeconfig(self) -> str:
        return yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                "users": [{"name": "fake", "user": {"token": "fake"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                "current-context": "fake",
            }
        )


@cache
def fake_cluster() -> FakeCluster:
    return FakeCluster()  # one per test session; its thread is a daemon


def render(
    values: dict[str, Any] | None = None,
    *,
    cluster: bool = True,
    secrets: dict[str, dict[str, str]] | None = None,
    **opts: Any,
) -> dict[str, str]:
    """Template path -> rendered text (raises the Helm error on a failed render).

    ``cluster``: ``helm install``/``upgrade`` against the stand-in cluster holding ``secrets``;
    false: no cluster (``helm template``, Argo CD).
    """
    options: dict[str, Any] = {"name": RELEASE, "namespace": NAMESPACE, "is_install": True}
    options.update(opts)
    with helm.Chart.load(CHART) as chart:
        if not cluster:
            return chart.render(values or {}, **options)
        api = fake_cluster()
        api.secrets = secrets or {}
        with helm.Config(kubeconfig_content=api.kubeconfig(), namespace=NAMESPACE) as config:
            return config.render(chart, values or {}, **options)


def objects(manifests: dict[str, str]) -> list[Obj]:
    """Every Kubernetes object of a render (NOTES.txt excluded), each tagged with its template."""
    out: list[Obj] = []
    for template, text in sorted(manifests.items()):
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {}).setdefault("annotations", {})
                out.append({**doc, "__template": template})
    return out


@cache
def rendered_variant(variant: str) -> tuple[Obj, ...]:
    return tuple(objects(render(variant_values(variant))))


# The prometheus-operator CRDs' fields the chart uses (monitoring.coreos.com/v1; kubernetes-validate
# has only Kubernetes' own kinds): a strict shape, so a misspelt field fails as it would on apply.
_STR = {"type": "string"}
_STRMAP = {"type": "object", "additionalProperties": _STR}
_RELABEL = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sourceLabels": {"type": "array", "items": _STR},
        "separator": _STR,
        "targetLabel": _STR,
        "regex": _STR,
        "replacement": _STR,
        "action": {"enum": ["replace", "keep", "drop", "labelmap", "labeldrop", "labelkeep"]},
    },
}
_ENDPOINT = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "port": _STR,
        "path": _STR,
        "scheme": {"enum": ["http", "https"]},
        "interval": {"type": "string", "pattern": "^(0|(([0-9]+)(ms|s|m|h|d|w|y))+)$"},
        "scrapeTimeout": _STR,
        "honorLabels": {"type": "boolean"},
        "relabelings": {"type": "array", "items": _RELABEL},
    },
}
_SELECTORS = {
    "selector": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"matchLabels": _STRMAP},
    },
    "namespaceSelector": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"matchNames": {"type": "array", "items": _STR}, "any": {"type": "boolean"}},
    },
}
_RULE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["expr"],
    "properties": {
        "alert": _STR,
        "record": _STR,
        "expr": _STR,
        "for": _STR,
        "keep_firing_for": _STR,
        "labels": _STRMAP,
        "annotations": _STRMAP,
    },
}
_SPECS = {
    "ServiceMonitor": {
        "required": ["selector", "endpoints"],
        "properties": {
            **_SELECTORS,
            "jobLabel": _STR,
            "endpoints": {"type": "array", "items": _ENDPOINT},
        },
    },
    "PodMonitor": {
        "required": ["selector", "podMetricsEndpoints"],
        "properties": {
            **_SELECTORS,
            "podMetricsEndpoints": {"type": "array", "items": _ENDPOINT, "minItems": 1},
        },
    },
    "PrometheusRule": {
        "required": ["groups"],
        "properties": {
            "groups": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name", "rules"],
                    "properties": {
                        "name": _STR,
                        "interval": _STR,
                        "rules": {"type": "array", "items": _RULE, "minItems": 1},
                    },
                },
            }
        },
    },
}


def validate(obj: Obj, version: str) -> None:
    """Strict validation: Kubernetes' kinds by kubernetes-validate, prometheus-operator's by
    the CRD shapes above (raises on an invalid object, an unknown field or an unknown kind)."""
    if obj.get("apiVersion") == "monitoring.coreos.com/v1" and obj.get("kind") in _SPECS:
        schema = {
            "type": "object",
            "additionalProperties": False,
            "required": ["apiVersion", "kind", "metadata", "spec"],
            "properties": {
                "apiVersion": _STR,
                "kind": _STR,
                "metadata": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {"name": _STR, "labels": _STRMAP, "annotations": _STRMAP},
                },
                "spec": {"type": "object", "additionalProperties": False, **_SPECS[obj["kind"]]},
            },
        }
        jsonschema.validate(obj, schema)
        return
    kubernetes_validate.validate(obj, version, strict=True)


def without_runbooks(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The groups with every rule's runbook_url annotation taken out."""
    out = copy.deepcopy(groups)
    for group in out:
        for rule in group["rules"]:
            annotations = rule.get("annotations", {})
            annotations.pop("runbook_url", None)
            if "annotations" in rule and not annotations:
                del rule["annotations"]
    return out


def clean(obj: Obj) -> Obj:
    """The object as Kubernetes sees it (without the test's template tag)."""
    return {k: v for k, v in obj.items() if k != "__template"}


def find(objs: tuple[Obj, ...] | list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [
        o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objs: tuple[Obj, ...] | list[Obj], kind: str, name: str) -> Obj:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(obj: Obj) -> Obj | None:
    """The pod spec of a workload (Deployment, StatefulSet, Job, CronJob, Pod), else None."""
    kind = obj["kind"]
    if kind == "Pod":
        return obj["spec"]  # type: ignore[no-any-return]
    if kind in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
        return obj["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return None


def pod_labels(obj: Obj) -> dict[str, str]:
    kind = obj["kind"]
    if kind == "Pod":
        return obj["metadata"].get("labels", {})  # type: ignore[no-any-return]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]  # type: ignore[no-any-return]
    return obj["spec"]["template"]["metadata"]["labels"]  # type: ignore[no-any-return]


def workloads(objs: tuple[Obj, ...] | list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """(object, pod spec) for every workload."""
    for o in objs:
        spec = pod_spec(o)
        if spec is not None:
            yield o, spec


def ingress_backend(ingress: Obj, path: str) -> str | None:
    """The Service an Ingress sends a request path to, by networking.k8s.io/v1's rules: an
    Exact path matches itself, a Prefix path whole path elements; the longest match wins, and
    Exact wins a tie."""
    elements = [e for e in path.split("/") if e]
    best: tuple[int, bool, str] | None = None
    for rule in ingress["spec"]["rules"]:
        for p in rule["http"]["paths"]:
            exact = p["pathType"] == "Exact"
            prefix = [e for e in p["path"].split("/") if e]
            if path == p["path"] if exact else elements[: len(prefix)] == prefix:
                candidate = (len(p["path"].rstrip("/")), exact, p["backend"]["service"]["name"])
                best = max(best, candidate) if best else candidate
    return best[2] if best else None


def containers(spec: Obj) -> list[Obj]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_names(container: Obj) -> list[str]:
    return [e["name"] for e in container.get("env", [])]


def env_value(container: Obj, name: str) -> Any:
    (entry,) = [e for e in container.get("env", []) if e["name"] == name]
    return entry.get("value", entry.get("valueFrom"))


@pytest.fixture(params=list(VARIANTS), ids=list(VARIANTS))
def variant(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def rendered(variant: str) -> tuple[Obj, ...]:
    return rendered_variant(variant)


@pytest.fixture
def defaults() -> tuple[Obj, ...]:
    return rendered_variant("defaults")
