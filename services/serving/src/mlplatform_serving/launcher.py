"""Starting a retrain from serving, without waiting for it.

In Kubernetes: a Job created from the retrainer CronJob, as ``kubectl create job
--from=cronjob/<retrainer>`` does. Locally: a ``python -m mlplatform_retrainer run`` process.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from mlplatform_common.errors import ConfigurationError, MLPlatformError
from mlplatform_serving.settings import ServingSettings

logger = logging.getLogger("mlplatform.serving")

Launcher = Callable[[str, bool], bool]


class LaunchFailed(MLPlatformError):
    status_code = 502


def job_from_cronjob(cronjob: Any, reason: str, now: float | None = None) -> dict[str, Any]:
    """The Job that ``kubectl create job --from=cronjob/NAME`` would create."""
    template = cronjob.spec.job_template
    meta = template.metadata
    name = cronjob.metadata.name
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": f"{name[:40]}-auto-{int(now or time.time())}",
            "namespace": cronjob.metadata.namespace,
            "labels": dict(meta.labels or {}) if meta else {},
            "annotations": {
                **(dict(meta.annotations or {}) if meta else {}),
                "cronjob.kubernetes.io/instantiate": "manual",
                "mlplatform.io/reason": reason[:250],
            },
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "CronJob",
                    "name": name,
                    "uid": cronjob.metadata.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": cronjob.spec.job_template.spec,
    }


def kubernetes_launcher(settings: ServingSettings, api_client: Any = None) -> Launcher:
    """Create a Job from the retrainer CronJob (in-cluster config unless a client is given)."""
    from kubernetes import client, config

    if api_client is None:
        config.load_incluster_config()
        api_client = client.ApiClient()
    batch = client.BatchV1Api(api_client)

    def launch(reason: str, force: bool) -> bool:
        # The retrainer itself re-checks the triggers under its lock; `force` only matters
        # locally, where it becomes `run --force`. In a cluster /admin/retrain sets the env.
        try:
            cronjob = batch.read_namespaced_cron_job(
                settings.retrainer_cronjob, settings.namespace, _request_timeout=10
            )
            job = job_from_cronjob(cronjob, reason)
            if force:
                for c in job["spec"].template.spec.containers:
                    c.env = [*(c.env or []), client.V1EnvVar(name="MLPLATFORM_FORCE", value="true")]
            body: Any = job  # the client serializes dicts holding its model objects
            batch.create_namespaced_job(settings.namespace, body, _request_timeout=10)
        except client.ApiException as exc:
            raise LaunchFailed(
                f"creating a Job from cronjob/{settings.retrainer_cronjob} failed: "
                f"{exc.status} {exc.reason}"
            ) from None
        logger.info("started job/%s: %s", job["metadata"]["name"], reason)
        return True

    return launch


def local_launcher(settings: ServingSettings) -> Launcher:
    """Start the retrainer as a detached local process."""

    def launch(reason: str, force: bool) -> bool:
        env = {
            **os.environ,
            "MLPLATFORM_SERVING_URL": os.environ.get(
                "MLPLATFORM_SERVING_URL", f"http://127.0.0.1:{settings.port}"
            ),
        }
        cmd = [sys.executable, "-m", "mlplatform_retrainer", "run", *(["--force"] if force else [])]
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        logger.info("started retrainer pid %d: %s", proc.pid, reason)
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
