"""Rolling a new version out: tell local serving to reload, or patch the Deployment.

In Kubernetes the version lives in the serving Deployment's pod template (``MODEL_VERSION``
and an annotation), so patching it makes Kubernetes roll the pods, and
``kubectl rollout undo deployment/<serving>`` brings the previous version back.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from mlplatform_common.errors import ConfigurationError, MLPlatformError
from mlplatform_retrainer.settings import RetrainerSettings

logger = logging.getLogger("mlplatform.retrainer")

VERSION_ANNOTATION = "mlplatform.io/model-version"


class RolloutFailed(MLPlatformError):
    status_code = 502


def deployment_patch(container: str, version: str) -> dict[str, Any]:
    """The strategic merge patch that pins a version in the pod template."""
    return {
        "spec": {
            "template": {
                "metadata": {"annotations": {VERSION_ANNOTATION: version}},
                "spec": {
                    "containers": [
                        {"name": container, "env": [{"name": "MODEL_VERSION", "value": version}]}
                    ]
                },
            }
        }
    }


def rollout_kubernetes(settings: RetrainerSettings, version: str, api_client: Any = None) -> None:
    """Patch the serving Deployment (in-cluster config unless an ``api_client`` is given)."""
    from kubernetes import client, config

    if api_client is None:
        config.load_incluster_config()
        api_client = client.ApiClient()
    apps = client.AppsV1Api(api_client)
    try:
        apps.patch_namespaced_deployment(
            settings.serving_deployment,
            settings.namespace,
            deployment_patch(settings.serving_container, version),
        )
    except client.ApiException as exc:
        raise RolloutFailed(
            f"patching deployment/{settings.serving_deployment} in {settings.namespace} failed: "
            f"{exc.status} {exc.reason}"
        ) from None
    logger.info("patched deployment/%s: MODEL_VERSION=%s", settings.serving_deployment, version)


def rollout_local(settings: RetrainerSettings, version: str, signature: str | None = None) -> None:
    """Ask the local serving process to load the version. With the manifest's ``signature``,
    a serving on another store (which has a different model under that version) refuses."""
    url = settings.serving_url.rstrip("/") + "/admin/reload"
    headers = {"Authorization": f"Bearer {settings.require_admin_token()}"}
    body = (
        {"version": version} if signature is None else {"version": version, "signature": signature}
    )
    try:
        r = httpx.post(url, json=body, headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        raise RolloutFailed(f"serving at {settings.serving_url} did not answer: {exc}") from None
    if r.status_code != 200:
        raise RolloutFailed(f"serving refused to reload {version}: {r.status_code} {r.text[:200]}")
    logger.info("serving at %s reloaded %s", settings.serving_url, version)


def roll_out(settings: RetrainerSettings, version: str, signature: str | None = None) -> str:
    """Make serving use ``version`` the configured way; return the way used. ``signature``:
    the version's manifest HMAC, which a local serving checks against its own store."""
    how = settings.resolved_rollout()
    if how == "kubernetes":
        rollout_kubernetes(settings, version)
    elif how == "local":
        rollout_local(settings, version, signature)
    elif how != "none":
        raise ConfigurationError(f"unknown rollout {how!r}: use local, kubernetes or none")
    return how
