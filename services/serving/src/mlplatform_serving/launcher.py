"""Starting a retrainer run from serving, without waiting for it: a retrain, or an action
(``mlplatform_common.actions``: promote, pin, rollback, register an upload).

In Kubernetes: a Job created from the retrainer CronJob, as ``kubectl create job
--from=cronjob/<retrainer>`` does. Locally: a ``python -m mlplatform_retrainer run`` process.
"""

from __future__ import annotations

import copy
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import httpx

from mlplatform_common import actions
from mlplatform_common.actions import Action
from mlplatform_common.errors import ConfigurationError, MLPlatformError
from mlplatform_serving.settings import ServingSettings

logger = logging.getLogger("mlplatform.serving")


class Launcher(Protocol):
    def __call__(self, reason: str, force: bool = False, action: Action | None = None) -> bool:
        """Start one retrainer run (``force``: retrain without a trigger; ``action``: do that
        instead of a retrain); True once started."""
        ...


SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# A forced retrain is this pod-template annotation, which the CronJob's container reads as
# MLPLATFORM_FORCE (downward API): the Job's pod spec stays the CronJob's exactly, as the chart's
# admission policy requires of every Job serving creates.
FORCE_ANNOTATION = "mlplatform.io/force"


class LaunchFailed(MLPlatformError):
    status_code = 502


class KubernetesApi:
    """The two Kubernetes API calls serving makes, over httpx with the pod's service account.

    Not the ``kubernetes`` client: with its dependencies it is a quarter of the serving image,
    for two requests. Method names follow that client's, so a reader (and the chart's
    RBAC test) sees the same verbs.
    """

    def __init__(self, base_url: str, token: str | Path | None = None, ca: str | bool = True):
        self.base_url = base_url.rstrip("/")
        self.token = token  # a projected token file is re-read: it rotates
        self.client = httpx.Client(base_url=self.base_url, verify=ca, timeout=10)

    @classmethod
    def in_cluster(cls) -> KubernetesApi:
        host, port = (
            os.environ.get("KUBERNETES_SERVICE_HOST"),
            os.environ.get("KUBERNETES_SERVICE_PORT"),
        )
        if not host or not port:
            raise ConfigurationError(
                "MLPLATFORM_RETRAIN_LAUNCHER=kubernetes but this is not a pod "
                "(KUBERNETES_SERVICE_HOST is not set)"
            )
        host = f"[{host}]" if ":" in host else host
        return cls(
            f"https://{host}:{port}", SERVICE_ACCOUNT / "token", str(SERVICE_ACCOUNT / "ca.crt")
        )

    def _headers(self) -> dict[str, str]:
        token = self.token.read_text().strip() if isinstance(self.token, Path) else self.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _call(self, method: str, path: str, what: str, body: Any = None) -> dict[str, Any]:
        try:
            r = self.client.request(method, path, json=body, headers=self._headers())
        except httpx.HTTPError as exc:
            raise LaunchFailed(f"{what} failed: the API server did not answer ({exc})") from None
        if r.status_code >= 300:
            reason = (
                r.json().get("reason", r.reason_phrase)
                if r.headers.get("content-type", "").startswith("application/json")
                else r.reason_phrase
            )
            raise LaunchFailed(f"{what} failed: {r.status_code} {reason}")
        answer: dict[str, Any] = r.json()
        return answer

    def read_namespaced_cron_job(self, name: str, namespace: str) -> dict[str, Any]:
        return self._call(
            "GET",
            f"/apis/batch/v1/namespaces/{namespace}/cronjobs/{name}",
            f"reading cronjob/{name}",
        )

    def create_namespaced_job(
        self, namespace: str, body: dict[str, Any], what: str
    ) -> dict[str, Any]:
        return self._call("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", what, body)


def job_from_cronjob(
    cronjob: dict[str, Any],
    reason: str,
    now: float | None = None,
    force: bool = False,
    action: Action | None = None,
) -> dict[str, Any]:
    """The Job that ``kubectl create job --from=cronjob/NAME`` would create; ``force`` and
    ``action`` add only the pod-template annotations ``FORCE_ANNOTATION`` and
    ``actions.ANNOTATION``."""
    meta = cronjob["spec"]["jobTemplate"].get("metadata") or {}
    name = cronjob["metadata"]["name"]
    spec = copy.deepcopy(cronjob["spec"]["jobTemplate"]["spec"])
    extra = {FORCE_ANNOTATION: "true"} if force else {}
    if action is not None:
        extra[actions.ANNOTATION] = str(action)
    if extra:
        template_meta = spec["template"].setdefault("metadata", {})
        template_meta["annotations"] = {**(template_meta.get("annotations") or {}), **extra}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            # a random tail: two runs started in one second (an upload and a promote) would
            # otherwise get one name, and the API server refuses the second
            "name": f"{name[:40]}-auto-{int(now or time.time())}-{secrets.token_hex(2)}",
            "namespace": cronjob["metadata"].get("namespace"),
            "labels": dict(meta.get("labels") or {}),
            "annotations": {
                **(meta.get("annotations") or {}),
                "cronjob.kubernetes.io/instantiate": "manual",
                "mlplatform.io/reason": reason[:250],
            },
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "CronJob",
                    "name": name,
                    "uid": cronjob["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
    }


def kubernetes_launcher(settings: ServingSettings, api: KubernetesApi | None = None) -> Launcher:
    """Create a Job from the retrainer CronJob (in-cluster credentials unless ``api`` is given)."""
    api = api or KubernetesApi.in_cluster()

    def launch(reason: str, force: bool = False, action: Action | None = None) -> bool:
        what = f"creating a Job from cronjob/{settings.retrainer_cronjob}"
        cronjob = api.read_namespaced_cron_job(settings.retrainer_cronjob, settings.namespace)
        # force (/admin/retrain): the Job retrains even without a trigger
        job = job_from_cronjob(cronjob, reason, force=force, action=action)
        api.create_namespaced_job(settings.namespace, job, what)
        logger.info("started job/%s: %s", job["metadata"]["name"], reason)
        return True

    return launch


def local_launcher(settings: ServingSettings) -> Launcher:
    """Start the retrainer as a detached local process."""

    def launch(reason: str, force: bool = False, action: Action | None = None) -> bool:
        env = {
            **os.environ,
            "MLPLATFORM_SERVING_URL": os.environ.get(
                "MLPLATFORM_SERVING_URL", f"http://127.0.0.1:{settings.port}"
            ),
            actions.ENV: "" if action is None else str(action),
        }
        cmd = [sys.executable, "-m", "mlplatform_retrainer", "run", *(["--force"] if force else [])]
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        logger.info("started retrainer pid %d: %s", proc.pid, reason)

        def reap() -> None:  # wait for it, or it stays a zombie process until serving exits
            code = proc.wait()
            log = logger.info if code == 0 else logger.warning
            log("retrainer pid %d exited with status %d", proc.pid, code)

        threading.Thread(target=reap, name=f"retrainer-{proc.pid}", daemon=True).start()
        return True

    return launch


def make_launcher(settings: ServingSettings) -> Launcher | None:
    """The launcher the settings ask for (``none``: retrains are started elsewhere)."""
    if settings.retrain_launcher == "none":
        return None
    if settings.retrain_launcher == "local":
        return local_launcher(settings)
    if settings.retrain_launcher == "kubernetes":
        return kubernetes_launcher(settings)
    raise ConfigurationError(
        f"MLPLATFORM_RETRAIN_LAUNCHER={settings.retrain_launcher!r}: use none, local or kubernetes"
    )
