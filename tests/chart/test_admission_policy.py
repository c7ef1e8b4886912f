"""The retrain-job admission policy: serving's `create jobs` admits only the retrainer's Job.

No API server runs here, so the rendered ValidatingAdmissionPolicy is evaluated as the API server
does (match constraints, the binding's namespace, match conditions, variables, validations;
an error counts as a denial under failurePolicy Fail) by a real CEL engine, cel-python, on the
Job that serving's own launcher builds from the rendered CronJob.
"""

from __future__ import annotations

import copy
from typing import Any

import celpy
import pytest
from celpy import celtypes

from mlplatform_common import actions
from mlplatform_common.errors import EXIT_REFUSED, InvalidInput
from mlplatform_serving.launcher import FORCE_ANNOTATION, job_from_cronjob
from tests.chart.conftest import (
    NAMESPACE,
    VARIANTS,
    Obj,
    clean,
    find,
    objects,
    one,
    render,
    rendered_variant,
    validate,
    variant_values,
)

SERVING = f"system:serviceaccount:{NAMESPACE}:mlplatform-serving"
CRONJOB_UID = "3c0a9d4e-0000-4000-8000-00000000c0de"
# what the API server adds to a Job before validating admission (the Job registry's selector
# generation; pod-spec defaulting applies alike to the stored CronJob and is left out)
JOB_UID = "9b1e2f3a-0000-4000-8000-0000000000j0"


def cel(expression: str, activation: dict[str, Any]) -> Any:
    env = celpy.Environment()
    program = env.program(env.compile(expression))
    result = program.evaluate(
        {k: v if k == "variables" else celpy.json_to_cel(v) for k, v in activation.items()}
    )
    if isinstance(result, celpy.CELEvalError):
        raise result
    return result


def holds(expression: str, activation: dict[str, Any]) -> bool:
    """A validation or match condition: true only when the expression is the boolean true."""
    result = cel(expression, activation)
    return isinstance(result, celtypes.BoolType) and bool(result)


def stored_cronjob(objs: tuple[Obj, ...] | list[Obj]) -> Obj:
    """The rendered retrainer CronJob as the API server returns it (namespace, uid)."""
    cronjob = copy.deepcopy(clean(one(objs, "CronJob", "mlplatform-retrainer")))
    cronjob["metadata"] |= {"namespace": NAMESPACE, "uid": CRONJOB_UID}
    return cronjob


def as_admitted(job: Obj) -> Obj:
    """The Job as validating admission sees it: uid, generated selector and labels, defaults."""
    job = copy.deepcopy(job)
    name = job["metadata"]["name"]
    job["metadata"]["uid"] = JOB_UID
    labels = job["spec"]["template"].setdefault("metadata", {}).setdefault("labels", {})
    for key, value in {
        "controller-uid": JOB_UID,
        "batch.kubernetes.io/controller-uid": JOB_UID,
        "job-name": name,
        "batch.kubernetes.io/job-name": name,
    }.items():
        labels.setdefault(key, value)
    job["spec"].setdefault(
        "selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": JOB_UID}}
    )
    job["spec"] = {
        "parallelism": 1,
        "completions": 1,
        "completionMode": "NonIndexed",
        "suspend": False,
        **job["spec"],
    }
    return job


def admission(
    objs: tuple[Obj, ...] | list[Obj], job: Obj, username: str = SERVING, operation: str = "CREATE"
) -> list[str] | None:
    """None when the policy does not apply, else the messages of the failed validations."""
    (policy,) = find(objs, "ValidatingAdmissionPolicy")
    (binding,) = find(objs, "ValidatingAdmissionPolicyBinding")
    spec = policy["spec"]
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert spec["failurePolicy"] == "Fail"
    assert spec["paramKind"] == {"apiVersion": "batch/v1", "kind": "CronJob"}
    # the param: the CronJob the binding names, in the release's namespace
    ref = binding["spec"]["paramRef"]
    assert ref["parameterNotFoundAction"] == "Deny"
    (params,) = [
        o
        for o in [stored_cronjob(objs)]
        if (o["metadata"]["name"], o["metadata"]["namespace"]) == (ref["name"], ref["namespace"])
    ]
    rules = spec["matchConstraints"]["resourceRules"]
    if not any(
        "batch" in r["apiGroups"]
        and "v1" in r["apiVersions"]
        and "jobs" in r["resources"]
        and operation in r["operations"]
        for r in rules
    ):
        return None
    selector = binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"]
    if selector != {"kubernetes.io/metadata.name": job["metadata"]["namespace"]}:
        return None
    activation: dict[str, Any] = {
        "object": job,
        "params": params,
        "request": {"operation": operation, "userInfo": {"username": username}},
    }
    if not all(holds(c["expression"], activation) for c in spec["matchConditions"]):
        return None
    variables = celtypes.MapType()  # in order: a variable may use the ones before it
    for variable in spec["variables"]:
        variables[celtypes.StringType(variable["name"])] = cel(
            variable["expression"], {**activation, "variables": variables}
        )
    activation["variables"] = variables
    failed = []
    for validation in spec["validations"]:
        try:
            ok = holds(validation["expression"], activation)
        except celpy.CELEvalError:
            ok = False  # failurePolicy Fail: an error denies
        if not ok:
            failed.append(validation["message"])
    return failed


@pytest.fixture(scope="module")
def objs() -> tuple[Obj, ...]:
    return rendered_variant("defaults")


def launched(objs: tuple[Obj, ...], force: bool = False) -> Obj:
    """The Job serving's launcher creates, as admission sees it."""
    return as_admitted(job_from_cronjob(stored_cronjob(objs), "50 labelled rows", force=force))


def test_the_policy_and_binding_are_valid_kubernetes_objects(objs: tuple[Obj, ...]) -> None:
    for kind in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):
        (obj,) = find(objs, kind)
        assert obj["apiVersion"] == "admissionregistration.k8s.io/v1"
        assert obj["metadata"]["name"] == f"mlplatform-{NAMESPACE}-retrain-jobs"
        for version in ("1.30", "1.37"):
            validate(clean(obj), version)


@pytest.mark.parametrize("force", [False, True])
def test_the_launchers_job_is_admitted(objs: tuple[Obj, ...], force: bool) -> None:
    assert admission(objs, launched(objs, force)) == []


def test_the_launchers_job_keeps_the_cronjobs_failure_policy(objs: tuple[Obj, ...]) -> None:
    # a refused action (exit 2) fails the created Job at once, as it does the CronJob's own
    job = launched(objs)
    cron_spec = stored_cronjob(objs)["spec"]["jobTemplate"]["spec"]
    assert job["spec"]["podFailurePolicy"] == cron_spec["podFailurePolicy"]
    (rule, _) = job["spec"]["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [EXIT_REFUSED]
    assert job["spec"]["backoffLimit"] == cron_spec["backoffLimit"]
    validate(clean(job), "1.30")


ACTIONS = [
    actions.promote("v3"),
    actions.promote("v12", pin=True),
    actions.rollback(),
    actions.register("01jf3k9x2mz"),
    actions.train("wine"),
    actions.train("breast_cancer"),
    actions.train("churn-2024"),
    actions.train("a" * 64),
]


@pytest.mark.parametrize("action", ACTIONS, ids=str)
def test_a_job_for_an_action_is_admitted_and_read_by_the_retrainer(
    objs: tuple[Obj, ...], action: actions.Action
) -> None:
    job = as_admitted(job_from_cronjob(stored_cronjob(objs), "promote", action=action))
    assert admission(objs, job) == []
    template = job["spec"]["template"]
    assert template["metadata"]["annotations"][actions.ANNOTATION] == str(action)
    (container,) = template["spec"]["containers"]
    (entry,) = [e for e in container["env"] if e["name"] == actions.ENV]
    assert entry["valueFrom"]["fieldRef"]["fieldPath"] == (
        f"metadata.annotations['{actions.ANNOTATION}']"
    )
    assert actions.parse(template["metadata"]["annotations"][actions.ANNOTATION]) == action


@pytest.mark.parametrize(
    "value",
    [
        "retrain",
        "promote:latest",
        "promote:v3;x",
        "register:../../x",
        "register:A",
        "rollback:v1",
        "train:",
        "train:Wine",
        "train:-wine",
        "train:wine_",
        "train:../x",
        "train:wine;rollback",
        "train:" + "a" * 65,
        "",
    ],
)
def test_any_other_action_is_denied_and_refused(objs: tuple[Obj, ...], value: str) -> None:
    # the policy and actions.parse agree: what one refuses, the other does too
    job = launched(objs)
    job["spec"]["template"]["metadata"].setdefault("annotations", {})[actions.ANNOTATION] = value
    assert len(admission(objs, job)) == 1
    with pytest.raises(InvalidInput, match=actions.ENV):
        actions.parse(value)


def test_the_forced_job_differs_from_the_cronjob_by_one_annotation(objs: tuple[Obj, ...]) -> None:
    cron_template = stored_cronjob(objs)["spec"]["jobTemplate"]["spec"]["template"]
    template = job_from_cronjob(stored_cronjob(objs), "forced", force=True)["spec"]["template"]
    assert template["spec"] == cron_template["spec"]
    assert template["metadata"]["annotations"] == {
        **cron_template["metadata"].get("annotations", {}),
        FORCE_ANNOTATION: "true",
    }
    assert template["metadata"]["labels"] == cron_template["metadata"]["labels"]
    # and the retrainer's container reads that annotation as its force setting
    (container,) = cron_template["spec"]["containers"]
    (entry,) = [e for e in container["env"] if e["name"] == "MLPLATFORM_FORCE"]
    assert entry == {
        "name": "MLPLATFORM_FORCE",
        "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{FORCE_ANNOTATION}']"}},
    }


def _pod(job: Obj) -> Obj:
    return job["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def _other_image(job: Obj) -> None:
    _pod(job)["containers"][0]["image"] = "busybox:1.36"


def _other_account(job: Obj) -> None:
    _pod(job)["serviceAccountName"] = "mlplatform-prometheus"


def _secret_volume(job: Obj) -> None:
    _pod(job)["volumes"].append({"name": "auth", "secret": {"secretName": "mlplatform-auth"}})
    _pod(job)["containers"][0]["volumeMounts"].append({"name": "auth", "mountPath": "/auth"})


def _env_force(job: Obj) -> None:  # how a forced Job was built before: no longer the CronJob's
    _pod(job)["containers"][0]["env"].append({"name": "MLPLATFORM_FORCE", "value": "true"})


def _other_command(job: Obj) -> None:
    _pod(job)["containers"][0]["command"] = ["sh", "-c", "cat /var/run/secrets/*/token"]


def _no_owner(job: Obj) -> None:
    del job["metadata"]["ownerReferences"]


def _other_owner(job: Obj) -> None:
    job["metadata"]["ownerReferences"][0]["name"] = "mlplatform-reporter"


def _other_uid(job: Obj) -> None:
    job["metadata"]["ownerReferences"][0]["uid"] = "00000000-0000-4000-8000-000000000000"


def _not_controller(job: Obj) -> None:
    job["metadata"]["ownerReferences"][0]["controller"] = False


def _second_owner(job: Obj) -> None:
    job["metadata"]["ownerReferences"].append(
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "1"}
    )


def _serving_label(job: Obj) -> None:  # would be let through serving's NetworkPolicy
    job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] = "serving"


def _extra_label(job: Obj) -> None:
    job["spec"]["template"]["metadata"]["labels"]["role"] = "store-admin"


def _other_annotation(job: Obj) -> None:
    job["spec"]["template"]["metadata"].setdefault("annotations", {})["x"] = "y"


def _force_false(job: Obj) -> None:
    job["spec"]["template"]["metadata"].setdefault("annotations", {})[FORCE_ANNOTATION] = "yes"


def _finalizer(job: Obj) -> None:
    job["spec"]["template"]["metadata"]["finalizers"] = ["example.com/keep"]


def _parallel(job: Obj) -> None:
    job["spec"]["parallelism"] = 20


def _manual_selector(job: Obj) -> None:
    job["spec"]["manualSelector"] = True


def _no_deadline(job: Obj) -> None:
    del job["spec"]["activeDeadlineSeconds"]


def _no_failure_policy(job: Obj) -> None:  # a refused action would be retried backoffLimit times
    del job["spec"]["podFailurePolicy"]


def _failures_ignored(job: Obj) -> None:  # retried until the deadline, never counted
    job["spec"]["podFailurePolicy"]["rules"] = [
        {"action": "Ignore", "onExitCodes": {"operator": "NotIn", "values": [0]}}
    ]


@pytest.mark.parametrize(
    "change",
    [
        _other_image,
        _other_account,
        _secret_volume,
        _env_force,
        _other_command,
        _no_owner,
        _other_owner,
        _other_uid,
        _not_controller,
        _second_owner,
        _serving_label,
        _extra_label,
        _other_annotation,
        _force_false,
        _finalizer,
        _parallel,
        _manual_selector,
        _no_deadline,
        _no_failure_policy,
        _failures_ignored,
    ],
)
def test_any_other_job_from_serving_is_denied(objs: tuple[Obj, ...], change: Any) -> None:
    job = launched(objs)
    change(job)
    failed = admission(objs, job)
    assert failed, f"{change.__name__}: admitted"
    assert len(failed) == 1, failed  # each change trips exactly the rule that owns it


def test_a_job_of_anyone_else_is_not_matched(objs: tuple[Obj, ...]) -> None:
    job = launched(objs)
    _other_image(job)
    _no_owner(job)
    for user in (
        "system:serviceaccount:ml:mlplatform-retrainer",
        "system:serviceaccount:other:mlplatform-serving",
        "system:serviceaccount:kube-system:cronjob-controller",
        "kubernetes-admin",
    ):
        assert admission(objs, job, username=user) is None, user
    assert admission(objs, job) is not None  # serving's own is


def test_the_policy_follows_the_serving_account_name() -> None:
    objs = objects(render({"serving": {"serviceAccount": {"name": "ml-api"}}}))
    job = launched(objs)
    assert admission(objs, job, username=f"system:serviceaccount:{NAMESPACE}:ml-api") == []
    _other_image(job)
    assert admission(objs, job, username=f"system:serviceaccount:{NAMESPACE}:ml-api")
    assert admission(objs, job, username=SERVING) is None


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_profile_has_the_policy_unless_it_turns_it_off(variant: str) -> None:
    objs = rendered_variant(variant)
    policies = find(objs, "ValidatingAdmissionPolicy")
    bindings = find(objs, "ValidatingAdmissionPolicyBinding")
    launcher = variant_values(variant).get("serving", {}).get("retrainLauncher", {})
    off = launcher.get("admissionPolicy", {}).get("enabled") is False
    assert (len(policies), len(bindings)) == ((0, 0) if off else (1, 1))
    if not off:
        assert admission(objs, launched(objs)) == []
