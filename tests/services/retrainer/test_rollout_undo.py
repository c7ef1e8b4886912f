"""`kubectl rollout undo` brings the previous model back, the store follows, and it holds.

No Kubernetes API server runs here, so a small one stands in for the parts that matter: the
chart's own serving Deployment (rendered by Helm's engine) is kept as an object, every PATCH is
applied to it by kubectl's own strategic merge (``kubectl patch --local``, the code the API
server runs), each new pod template is a revision, and an undo puts the previous revision's
template back, which is what the Deployment controller does for ``kubectl rollout undo``. The
retrainer reaches it through its real client and a kubeconfig; serving is started from the pod
template's environment, as the kubelet would start it.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import Store
from mlplatform_retrainer.retrain import promote, run, unpin
from mlplatform_retrainer.rollout import RolloutFailed
from mlplatform_serving.app import create_app
from mlplatform_serving.launcher import KubernetesApi, kubernetes_launcher
from tests.chart.conftest import one, rendered_variant
from tests.conftest import REPO, SIGNING_KEY, free_port
from tests.services.retrainer.conftest import NOT_FOUND, JsonApi, add_feedback, retrainer_settings
from tests.services.serving.conftest import serving_settings

NAMESPACE, SERVING = "ml", "mlplatform-serving"
# kubectl v1.37.1, installed by `make test-deps` (scripts/chart_tools.py)
KUBECTL = str(REPO / ".tools" / "bin" / "kubectl")
CRONJOB = json.loads((REPO / "tests/testdata/retrainer-cronjob.json").read_text())


class ClusterStandIn(JsonApi):
    """The serving Deployment, its revisions, and the retrainer CronJob's Jobs."""

    def __init__(self) -> None:
        super().__init__()
        deployment = one(rendered_variant("defaults"), "Deployment", SERVING)
        deployment = {k: v for k, v in deployment.items() if not k.startswith("__")}
        deployment["metadata"]["namespace"] = NAMESPACE
        self.deployment: dict[str, Any] = deployment
        self.revisions: list[dict[str, Any]] = [copy.deepcopy(deployment["spec"]["template"])]
        self.patches: list[dict[str, Any]] = []
        self.jobs: list[dict[str, Any]] = []

    def answer(self, request: dict[str, Any]) -> tuple[int, Any]:
        method, path = request["method"], request["path"].split("?")[0]
        if path == f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{SERVING}":
            if method == "PATCH":
                assert (
                    request["headers"]["Content-Type"] == "application/strategic-merge-patch+json"
                )
                self.apply(request["body"])
            return 200, self.deployment
        if path.endswith("/cronjobs/mlplatform-retrainer"):
            return 200, CRONJOB
        if method == "POST" and path == f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs":
            self.jobs.append(request["body"])
            return 201, request["body"]
        return NOT_FOUND

    def apply(self, patch: dict[str, Any]) -> None:
        """kubectl's strategic merge of ``patch`` into the Deployment; a changed pod template
        is a new revision."""
        self.patches.append(patch)
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            json.dump(self.deployment, f)
            f.flush()
            merged = subprocess.run(
                [KUBECTL, "patch", "--local", "-f", f.name, "--type", "strategic", "-p",
                 json.dumps(patch), "-o", "json"],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
        self.deployment = json.loads(merged)
        if self.deployment["spec"]["template"] != self.revisions[-1]:
            self.revisions.append(copy.deepcopy(self.deployment["spec"]["template"]))

    def rollout_undo(self) -> None:
        """``kubectl rollout undo``: the previous revision's pod template comes back."""
        self.revisions.append(copy.deepcopy(self.revisions[-2]))
        self.deployment["spec"]["template"] = copy.deepcopy(self.revisions[-1])

    def pod_env(self) -> dict[str, str]:
        (container,) = self.deployment["spec"]["template"]["spec"]["containers"]
        return {e["name"]: e["value"] for e in container["env"] if "value" in e}


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ClusterStandIn]:
    stand_in = ClusterStandIn()
    stand_in.thread.start()
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": stand_in.url}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [
            {"name": "x", "context": {"cluster": "c", "user": "u", "namespace": NAMESPACE}}
        ],
        "current-context": "x",
    }
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    yield stand_in
    stand_in.stop()


def settings(**kw: Any) -> Any:
    return retrainer_settings(
        rollout="kubernetes", namespace=NAMESPACE, serving_deployment=SERVING, **kw
    )


def serve(store: Store, cluster: ClusterStandIn, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    """Serving as a pod of the Deployment's current template runs (its MODEL_VERSION), its
    launcher talking to the stand-in instead of the in-cluster API."""
    monkeypatch.setattr(
        "mlplatform_serving.app.make_launcher",
        lambda s: kubernetes_launcher(s, KubernetesApi(cluster.url)),
    )
    app = create_app(
        serving_settings(
            model_version=cluster.pod_env().get("MODEL_VERSION"),
            retrain_launcher="kubernetes",
            namespace=NAMESPACE,
            alias_check_seconds=3600,
        ),
        store,
    )
    return TestClient(app)


def test_rollout_undo_serves_the_previous_version_and_the_alias_follows_and_holds(
    v1_store: Store, cluster: ClusterStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = ModelRegistry(v1_store, SIGNING_KEY)
    assert "MODEL_VERSION" not in cluster.pod_env()  # the chart pins no version itself

    add_feedback(v1_store, 40)
    assert run(settings(), store=v1_store).outcome == "promoted"
    assert registry.production_version() == "v2"
    # The chart's template followed the alias: v1 was pinned in a revision of its own first.
    assert cluster.pod_env()["MODEL_VERSION"] == "v2"
    pinned = [r["spec"]["containers"][0].get("env", []) for r in cluster.revisions]
    assert [
        next((e["value"] for e in env if e["name"] == "MODEL_VERSION"), None) for env in pinned
    ] == [
        None,
        "v1",
        "v2",
    ]

    cluster.rollout_undo()
    assert cluster.pod_env()["MODEL_VERSION"] == "v1"
    with serve(v1_store, cluster, monkeypatch) as c:
        service = c.app.state.service  # type: ignore[attr-defined]
        assert c.get("/health").json()["model_version"] == "v1"  # the previous model is back
        service.check_alias()
        ready = c.get("/ready").json()
        assert (ready["production_alias"], ready["alias_matches"]) == ("v2", False)
        assert "rolled back" in ready["alias_detail"]
        assert "mlplatform_model_alias_mismatch 1.0" in c.get("/metrics").text
        # one retrainer run is started to reconcile (a second check starts none)
        service.check_alias()
        (job,) = cluster.jobs
        assert "reconcile" in job["metadata"]["annotations"]["mlplatform.io/reason"]

        # That run (the CronJob's, or the one serving started) moves the alias to what is served.
        result = run(settings(), store=v1_store)
        assert result.followed == "v1"
        alias = registry.production()
        assert alias is not None and alias["version"] == "v1"
        assert alias["reconciled_from"] == "v2" and "rollout undo" in alias["hold"]["reason"]
        service.check_alias()
        assert c.get("/ready").json()["alias_matches"] is True
        assert "mlplatform_model_alias_mismatch 0.0" in c.get("/metrics").text
        models = c.get("/models").json()
        assert models["production"]["version"] == models["serving"] == "v1"
        assert c.get("/model").json()["production_version"] == "v1"

    # It holds: a retrain whose candidate passes the gate keeps it for review.
    patches = len(cluster.patches)
    add_feedback(v1_store, 40, seed=1, start=100)
    held = run(settings(), store=v1_store)
    assert held.outcome == "held", held.describe()
    assert held.version == "v3" and "rollout undo" in " ".join(held.reasons)
    assert registry.production_version() == "v1"
    assert len(cluster.patches) == patches and cluster.pod_env()["MODEL_VERSION"] == "v1"

    # Until the user lifts it: then the next retrain promotes and rolls out again.
    assert unpin(settings(), store=v1_store)["rollout"] == "unchanged"
    assert run(settings(), store=v1_store, force=True).outcome == "promoted"
    assert registry.production_version() == "v4" == cluster.pod_env()["MODEL_VERSION"]


def test_a_failed_patch_leaves_the_alias_on_what_the_deployment_runs(
    v1_store: Store, cluster: ClusterStandIn
) -> None:
    add_feedback(v1_store, 40)
    wrong = settings().model_copy(update={"serving_deployment": "not-there"})
    with pytest.raises(Exception, match="not-there"):
        run(wrong, store=v1_store)
    registry = ModelRegistry(v1_store, SIGNING_KEY)
    assert registry.production_version() == "v1"  # v2 is published, not served
    assert "v2" in registry.versions()


def test_an_unreachable_api_server_fails_the_rollout_cleanly_and_leaves_the_alias(
    v1_store: Store, cluster: ClusterStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # urllib3's MaxRetryError was not a RolloutFailed: the alias stayed promoted over a
    # Deployment still running v1, and the next run "followed" it back as a rollout undo.
    nowhere = yaml.safe_load(Path(os.environ["KUBECONFIG"]).read_text())
    nowhere["clusters"][0]["cluster"]["server"] = f"http://127.0.0.1:{free_port()}"
    (tmp_path / "nowhere").write_text(yaml.safe_dump(nowhere))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nowhere"))
    add_feedback(v1_store, 40)
    with pytest.raises(RolloutFailed, match="Kubernetes API was not reached"):
        run(settings(), store=v1_store)
    registry = ModelRegistry(v1_store, SIGNING_KEY)
    assert registry.production_version() == "v1" and registry.hold() is None


def test_a_failed_promotion_by_hand_leaves_the_alias_and_a_bad_pin_stops_no_run(
    v1_store: Store, cluster: ClusterStandIn
) -> None:
    registry = ModelRegistry(v1_store, SIGNING_KEY)
    assert run(settings(), store=v1_store, force=True).outcome == "promoted"  # v2
    wrong = settings().model_copy(update={"serving_deployment": "not-there"})
    with pytest.raises(RolloutFailed, match="not-there"):
        promote(wrong, "v1", store=v1_store)
    assert registry.production_version() == "v2" and registry.hold() is None
    # A Deployment pinned by hand to a version that does not exist: logged, not followed,
    # and the run goes on (it used to fail every scheduled run).
    cluster.apply(
        {"spec": {"template": {"spec": {"containers": [
            {"name": "serving", "env": [{"name": "MODEL_VERSION", "value": "v9"}]}
        ]}}}}
    )  # fmt: skip
    result = run(settings(), store=v1_store)
    assert result.outcome == "skipped" and result.followed is None
    assert registry.production_version() == "v2"
