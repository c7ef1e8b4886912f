"""RBAC is least privilege: exactly the verbs and resources the services' code calls."""

from __future__ import annotations

import re

import pytest

from mlplatform_serving.launcher import job_from_cronjob
from tests.chart.conftest import VARIANTS, Obj, find, one, pod_spec, rendered_variant, workloads
from tests.conftest import REPO

SERVING_SRC = REPO / "services" / "serving" / "src" / "mlplatform_serving"
RETRAINER_SRC = REPO / "services" / "retrainer" / "src" / "mlplatform_retrainer"

# kubernetes-client method -> verb; resource names are the client's plural nouns
VERBS = {"read": "get", "create": "create", "patch": "patch", "list": "list", "delete": "delete"}
PLURALS = {"cron_job": ("batch", "cronjobs"), "job": ("batch", "jobs")}
PLURALS["deployment"] = ("apps", "deployments")


def api_calls(package_dir: object) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of every ``<verb>_namespaced_<kind>`` call in a package."""
    calls = set()
    for path in package_dir.rglob("*.py"):  # type: ignore[attr-defined]
        for verb, kind in re.findall(r"\.(\w+?)_namespaced_(\w+?)\(", path.read_text()):
            group, resource = PLURALS[kind]
            calls.add((group, resource, VERBS[verb]))
    return calls


def rules(role: Obj) -> set[tuple[str, str, str, tuple[str, ...]]]:
    out = set()
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    out.add((group, resource, verb, tuple(rule.get("resourceNames", ()))))
    return out


def test_the_code_calls_what_the_roles_grant() -> None:
    # if a service starts calling another API, this fails until the Role says so
    assert api_calls(SERVING_SRC) == {("batch", "cronjobs", "get"), ("batch", "jobs", "create")}
    assert api_calls(RETRAINER_SRC) == {
        ("apps", "deployments", "get"),
        ("apps", "deployments", "patch"),
    }


# Rules no code calls but an admission plugin checks: OwnerReferencesPermissionEnforcement
# (OpenShift) admits an object whose ownerReference sets blockOwnerDeletion only from a user who
# may `update` the owner's finalizers. Each is tied to the code that needs it below.
ADMISSION_ONLY = {
    "mlplatform-serving": {("batch", "cronjobs/finalizers", "update", ("mlplatform-retrainer",))}
}


def test_admission_only_rules_are_needed_by_the_code() -> None:
    # serving's Job is owned by the retrainer CronJob with blockOwnerDeletion; without it the
    # finalizers rule would be a grant nothing needs, and this fails until it goes
    job = job_from_cronjob(
        {
            "metadata": {"name": "mlplatform-retrainer", "namespace": "ml", "uid": "u"},
            "spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": []}}}}},
        },
        "k rows",
    )
    (owner,) = job["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["blockOwnerDeletion"]) == ("CronJob", True)


def test_roles_grant_exactly_those_calls() -> None:
    objs = rendered_variant("defaults")
    assert rules(one(objs, "Role", "mlplatform-serving")) == {
        ("batch", "cronjobs", "get", ("mlplatform-retrainer",)),
        # a created Job's name is generated: Kubernetes cannot limit `create` by name (the
        # admission policy narrows it: test_admission_policy.py)
        ("batch", "jobs", "create", ()),
        *ADMISSION_ONLY["mlplatform-serving"],
    }
    assert rules(one(objs, "Role", "mlplatform-retrainer")) == {
        ("apps", "deployments", "get", ("mlplatform-serving",)),
        ("apps", "deployments", "patch", ("mlplatform-serving",)),
    }
    # Kubernetes pod discovery: list, then watch; only in the release's namespace
    assert rules(one(objs, "Role", "mlplatform-prometheus")) == {
        ("", "pods", "list", ()),
        ("", "pods", "watch", ()),
    }
    assert {r["metadata"]["name"] for r in find(objs, "Role")} == {
        "mlplatform-serving",
        "mlplatform-retrainer",
        "mlplatform-prometheus",
    }


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_nothing_cluster_wide_and_each_binding_matches_its_account(variant: str) -> None:
    objs = rendered_variant(variant)
    assert not find(objs, "ClusterRole") and not find(objs, "ClusterRoleBinding")
    # the only cluster-scoped objects narrow what serving may do; they grant nothing
    cluster_scoped = {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    assert {
        o["kind"] for o in objs if o["kind"].startswith(("Cluster", "Validating", "Mutating"))
    } <= cluster_scoped
    for binding in find(objs, "RoleBinding"):
        name = binding["metadata"]["name"]
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": name,
        }
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": "ml"}]
        assert find(objs, "ServiceAccount", name)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_only_pods_that_call_the_api_get_a_token(variant: str) -> None:
    objs = rendered_variant(variant)
    for sa in find(objs, "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False
    mounted = set()
    for obj, spec in workloads(objs):
        assert "automountServiceAccountToken" in spec, obj["metadata"]["name"]
        if spec["automountServiceAccountToken"]:
            mounted.add(obj["metadata"]["name"])
        if obj["kind"] != "Pod":
            assert spec["serviceAccountName"].startswith("mlplatform-")
    expected = {"mlplatform-serving", "mlplatform-retrainer"}
    if find(objs, "Deployment", "mlplatform-prometheus"):
        expected.add("mlplatform-prometheus")
    assert mounted == expected
    # the account that holds each Role is the one its pods run as
    for name in expected:
        (obj,) = [o for o in objs if o["metadata"]["name"] == name and pod_spec(o)]
        assert pod_spec(obj)["serviceAccountName"] == name  # type: ignore[index]
