"""Rolling a new version out: tell local serving to reload, or patch the Deployment.

In Kubernetes the version lives in the serving Deployment's pod template (``MODEL_VERSION``
and an annotation), so patching it makes Kubernetes roll the pods, and
``kubectl rollout undo deployment/<serving>`` brings the previous version back; the next
retrainer run then moves the production alias to it (``retrain.follow_deployment``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

from mlplatform_common.errors import ConfigurationError, MLPlatformError
from mlplatform_retrainer.settings import RetrainerSettings

logger = logging.getLogger("mlplatform.retrainer")

VERSION_ANNOTATION = "mlplatform.io/model-version"
T = TypeVar("T")


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


def _apps(api_client: Any) -> Any:
    """The apps/v1 API: the given ``api_client``, else the pod's service account, else (run
    from a workstation) the kubeconfig (``KUBECONFIG``), as kubectl finds it."""
    from kubernetes import client, config

    if api_client is None:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            # KUBECONFIG as it is now (the client reads it once, at import)
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
        api_client = client.ApiClient()
    return client.AppsV1Api(api_client)


def _pinned(deployment: Any, container: str) -> str | None:
    """The ``MODEL_VERSION`` a Deployment's pod template gives the container, or None."""
    for c in deployment.spec.template.spec.containers or []:
        if c.name == container:
            return next((e.value for e in c.env or [] if e.name == "MODEL_VERSION"), None)
    return None


def _call(what: str, call: Callable[[], T]) -> T:
    """One Kubernetes API call; any way it fails (refused, unreachable, no credentials) is a
    ``RolloutFailed`` naming it, which the callers handle (the alias is put back)."""
    import urllib3
    from kubernetes import client, config

    try:
        return call()
    except client.ApiException as exc:
        raise RolloutFailed(f"{what} failed: {exc.status} {exc.reason}") from None
    except (urllib3.exceptions.HTTPError, OSError, config.ConfigException) as exc:
        raise RolloutFailed(
            f"{what} failed: the Kubernetes API was not reached ({type(exc).__name__}: {exc})"
        ) from None


def served_version(settings: RetrainerSettings, api_client: Any = None) -> str | None:
    """The version the serving Deployment's pod template pins (None: it follows the alias).
    After ``kubectl rollout undo`` this is the version rolled back to."""
    name, namespace = settings.serving_deployment, settings.namespace
    deployment = _call(
        f"reading deployment/{name} in {namespace}",
        lambda: _apps(api_client).read_namespaced_deployment(name, namespace),
    )
    return _pinned(deployment, settings.serving_container)


def rollout_kubernetes(
    settings: RetrainerSettings,
    version: str,
    api_client: Any = None,
    replacing: str | None = None,
) -> None:
    """Patch the serving Deployment's pod template to ``version``. A template that pins no
    version yet (the chart's own) first gets ``replacing`` pinned, in a revision of its own:
    ``kubectl rollout undo`` then returns to a template that serves ``replacing``, not to one
    that follows the alias (which names ``version`` by then)."""
    apps = _call("connecting to the Kubernetes API", lambda: _apps(api_client))
    name, namespace = settings.serving_deployment, settings.namespace
    pins = [version]
    if replacing and replacing != version and served_version(settings, apps.api_client) is None:
        pins.insert(0, replacing)
    for pin in pins:
        patch = deployment_patch(settings.serving_container, pin)
        _call(
            f"patching deployment/{name} in {namespace}",
            lambda: apps.patch_namespaced_deployment(name, namespace, patch),  # noqa: B023
        )
    if len(pins) > 1:
        logger.info("pinned %s in deployment/%s first, for rollout undo", replacing, name)
    logger.info("patched deployment/%s: MODEL_VERSION=%s", name, version)


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


def roll_out(
    settings: RetrainerSettings,
    version: str,
    signature: str | None = None,
    replacing: str | None = None,
) -> str:
    """Make serving use ``version`` the configured way; return the way used. ``signature``:
    the version's manifest HMAC, which a local serving checks against its own store;
    ``replacing``: the version served until now (``rollout_kubernetes``)."""
    how = settings.resolved_rollout()
    if how == "kubernetes":
        rollout_kubernetes(settings, version, replacing=replacing)
    elif how == "local":
        rollout_local(settings, version, signature)
    elif how != "none":
        raise ConfigurationError(f"unknown rollout {how!r}: use local, kubernetes or none")
    return how
