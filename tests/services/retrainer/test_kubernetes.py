"""The Kubernetes path, checked at the HTTP boundary.

No Kubernetes API server can run on these machines, so a small recording HTTP server stands in
for one: the official ``kubernetes`` client sends its real requests to it, the tests check
method, path, content type and body, and validate what would be applied against the
Kubernetes schemas (kubernetes-validate). What the API server then does with it (rolling the
pods, running the Job) is Kubernetes' part and is not exercised here.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes import client

from mlplatform_common import actions
from mlplatform_retrainer.rollout import VERSION_ANNOTATION, rollout_kubernetes
from mlplatform_serving.launcher import FORCE_ANNOTATION, KubernetesApi, kubernetes_launcher
from tests.conftest import REPO
from tests.services.retrainer.conftest import NOT_FOUND, JsonApi, retrainer_settings
from tests.services.serving.conftest import serving_settings

K8S_VERSION = "1.33"
DEPLOYMENT = yaml.safe_load((REPO / "tests/testdata/serving-deployment.yaml").read_text())
CRONJOB = json.loads((REPO / "tests/testdata/retrainer-cronjob.json").read_text())


class FakeApiServer(JsonApi):
    """Records every request; answers the few the platform makes."""

    def answer(self, request: dict[str, Any]) -> tuple[int, Any]:
        method, path = request["method"], request["path"]
        if method == "GET" and path.endswith("/cronjobs/mlplatform-retrainer"):
            return 200, CRONJOB
        if method == "PATCH" and path.endswith("/deployments/mlplatform-serving"):
            return 200, DEPLOYMENT
        if method == "POST" and path.endswith("/jobs"):
            return 201, request["body"]
        return NOT_FOUND

    def api_client(self) -> client.ApiClient:
        config = client.Configuration()
        config.host = self.url
        return client.ApiClient(config)


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    server.thread.start()
    yield server
    server.stop()


def strategic_merge(deployment: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Apply the rollout patch as the API server's strategic merge does for these fields:
    annotations merge by key, containers by name, env entries by name."""
    out = copy.deepcopy(deployment)
    template = out["spec"]["template"]
    ptemplate = patch["spec"]["template"]
    template["metadata"].setdefault("annotations", {}).update(ptemplate["metadata"]["annotations"])
    for pc in ptemplate["spec"]["containers"]:
        container = next(c for c in template["spec"]["containers"] if c["name"] == pc["name"])
        env = {e["name"]: e for e in container.get("env", [])}
        env.update({e["name"]: e for e in pc["env"]})
        container["env"] = list(env.values())
    return out


def test_rollout_patches_the_serving_deployment_pod_template(api: FakeApiServer) -> None:
    settings = retrainer_settings(namespace="ml", serving_deployment="mlplatform-serving")
    rollout_kubernetes(settings, "v7", api_client=api.api_client())
    (request,) = api.requests
    assert request["method"] == "PATCH"
    assert request["path"] == "/apis/apps/v1/namespaces/ml/deployments/mlplatform-serving"
    assert request["headers"]["Content-Type"] == "application/strategic-merge-patch+json"
    patch = request["body"]
    assert patch == {
        "spec": {
            "template": {
                "metadata": {"annotations": {VERSION_ANNOTATION: "v7"}},
                "spec": {
                    "containers": [
                        {"name": "serving", "env": [{"name": "MODEL_VERSION", "value": "v7"}]}
                    ]
                },
            }
        }
    }
    patched = strategic_merge(DEPLOYMENT, patch)
    kubernetes_validate.validate(patched, K8S_VERSION, strict=True)
    env = patched["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "MODEL_VERSION", "value": "v7"} in env
    assert {"name": "MODEL_VERSION", "value": "v1"} not in env
    # A changed pod template is what makes Kubernetes roll the pods (and `rollout undo` revert).
    assert patched["spec"]["template"] != DEPLOYMENT["spec"]["template"]


def test_a_refused_patch_is_a_clear_error(api: FakeApiServer) -> None:
    from mlplatform_retrainer.rollout import RolloutFailed

    settings = retrainer_settings(namespace="ml", serving_deployment="missing")
    with pytest.raises(RolloutFailed, match="patching deployment/missing in ml failed: 404"):
        rollout_kubernetes(settings, "v7", api_client=api.api_client())
    assert api.requests[0]["path"] == "/apis/apps/v1/namespaces/ml/deployments/missing"


def test_serving_creates_a_job_from_the_retrainer_cronjob(api: FakeApiServer) -> None:
    settings = serving_settings(namespace="ml", retrainer_cronjob="mlplatform-retrainer")
    launch = kubernetes_launcher(settings, api=KubernetesApi(api.url, token="sa-token"))
    assert launch("50 labelled rows since v1 (k=50)", False) is True
    get, post = api.requests
    assert (get["method"], get["path"]) == (
        "GET",
        "/apis/batch/v1/namespaces/ml/cronjobs/mlplatform-retrainer",
    )
    assert (post["method"], post["path"]) == ("POST", "/apis/batch/v1/namespaces/ml/jobs")
    job = post["body"]
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    meta = job["metadata"]
    assert meta["name"].startswith("mlplatform-retrainer-auto-")
    assert meta["annotations"]["cronjob.kubernetes.io/instantiate"] == "manual"
    assert meta["ownerReferences"][0]["kind"] == "CronJob"
    assert meta["ownerReferences"][0]["uid"] == CRONJOB["metadata"]["uid"]
    assert get["headers"]["Authorization"] == post["headers"]["Authorization"] == "Bearer sa-token"
    assert (
        job["spec"]["template"]["spec"]
        == CRONJOB["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    )
    # a refused run (exit 2) fails this Job at once too, as the CronJob's own Jobs
    assert (
        job["spec"]["podFailurePolicy"]
        == CRONJOB["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]
    )


def test_admin_retrain_in_a_cluster_forces_the_job(api: FakeApiServer) -> None:
    launch = kubernetes_launcher(serving_settings(namespace="ml"), api=KubernetesApi(api.url))
    launch("requested through /admin/retrain", True)
    job = api.requests[-1]["body"]
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    # forced by the pod template's annotation, which the CronJob's pod reads as MLPLATFORM_FORCE:
    # the pod spec stays the CronJob's, as the chart's admission policy requires
    template = job["spec"]["template"]
    assert template["metadata"]["annotations"] == {FORCE_ANNOTATION: "true"}
    assert template["spec"] == CRONJOB["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    cron_template = CRONJOB["spec"]["jobTemplate"]["spec"]["template"]
    assert template["metadata"]["labels"] == cron_template["metadata"]["labels"]
    assert "annotations" not in cron_template["metadata"]  # the CronJob's own is not touched


def test_two_runs_started_in_one_second_get_two_jobs(api: FakeApiServer) -> None:
    launch = kubernetes_launcher(serving_settings(namespace="ml"), api=KubernetesApi(api.url))
    launch("an upload", action=actions.register("abc123"))
    launch("requested through /admin/promote", action=actions.promote("v2"))
    first, second = (r["body"]["metadata"]["name"] for r in api.requests if r["method"] == "POST")
    assert first != second and len(first) <= 63 and len(second) <= 63


def test_an_action_in_a_cluster_is_the_jobs_one_annotation(api: FakeApiServer) -> None:
    launch = kubernetes_launcher(serving_settings(namespace="ml"), api=KubernetesApi(api.url))
    launch("requested through /admin/rollback", action=actions.rollback())
    template = api.requests[-1]["body"]["spec"]["template"]
    assert template["metadata"]["annotations"] == {actions.ANNOTATION: "rollback"}
    assert template["spec"] == CRONJOB["spec"]["jobTemplate"]["spec"]["template"]["spec"]


@pytest.mark.parametrize(
    ("env", "force"),
    [({}, False), ({"MLPLATFORM_FORCE": ""}, False), ({"MLPLATFORM_FORCE": "true"}, True)],
)
def test_the_retrainer_reads_force_from_its_pod_annotation(
    env: dict[str, str], force: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the chart's downward-API entry gives "" when the pod has no mlplatform.io/force annotation
    monkeypatch.delenv("MLPLATFORM_FORCE", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert retrainer_settings().force is force


def test_a_missing_cronjob_is_a_clear_error(api: FakeApiServer) -> None:
    from mlplatform_serving.launcher import LaunchFailed

    launch = kubernetes_launcher(
        serving_settings(namespace="ml", retrainer_cronjob="nope"), api=KubernetesApi(api.url)
    )
    with pytest.raises(LaunchFailed, match="reading cronjob/nope failed: 404"):
        launch("k rows", False)
