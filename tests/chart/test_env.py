"""The environment the chart sets is the one the services' settings classes read, both ways."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic_settings import BaseSettings

from mlplatform_common.settings import CommonSettings
from mlplatform_reporter.settings import ReporterSettings
from mlplatform_retrainer.settings import RetrainerSettings
from mlplatform_serving.settings import ServingSettings
from mlplatform_webapp.settings import WebappSettings
from tests.chart.conftest import VARIANTS, containers, env_names, rendered_variant, workloads

# container name -> the settings class its process reads
SETTINGS: dict[str, type[BaseSettings]] = {
    "serving": ServingSettings,
    "webapp": WebappSettings,
    "reporter": ReporterSettings,
    "retrainer": RetrainerSettings,
    "bootstrap": RetrainerSettings,
    "batch": RetrainerSettings,  # python -m mlplatform_retrainer batch
}

# Settings the chart has no named value for, per container (each can still be set through the
# component's `extraEnv`, test_readme_settings). Anything a settings class reads must be set by
# the chart or listed here, so a new setting gets a decision.
TUNING = {"s3_region", "s3_timeout_seconds", "s3_retries"}
LEFT_AT_DEFAULT: dict[str, set[str]] = {
    "serving": TUNING
    | {
        "dev_mode",  # never in a cluster: secrets have no defaults there
        "model_version",  # the retrainer patches MODEL_VERSION in; unset = production alias
        "log_wait_max_seconds",  # back-pressure bound; 1 s keeps requests under clients' timeouts
        "opentelemetry",  # the chart's telemetry is Prometheus; no OpenTelemetry SDK in the image
        "keep_alive_seconds",
        "load_retry_seconds",
        "log_flush_rows",
        "log_flush_seconds",
        "log_buffer_max_rows",
        "log_buffer_max_mb",
        "log_write_max_rows",
        "recent_cache_rows",
        "recent_cache_mb",
        "feedback_lookup_days",
        "feedback_wait_seconds",
        "feedback_pending_seconds",
        "feedback_count_max_age",
        "alias_check_seconds",
        "low_confidence_threshold",
        "release",  # pushes nothing: its series get release and namespace from the scrape
        "dataset_max_mb",  # 100 MB uploads through the API; a cluster's ingress may cap lower
        "model_upload_max_mb",  # 200 MB: within the pod's 256 MiB /tmp, where the form waits
    },
    "webapp": {
        "dev_mode",
        # the web app never reads the store: it talks to the serving API only
        "store_url",
        "label_chunk_rows",  # 100 rows a request fits the writer key's default burst
        "s3_endpoint",
        "s3_access_key",
        "s3_secret_key",
        "s3_secure",
        "signing_key",
        *TUNING,
        "base_url_path",  # served at / behind the ingress
        "request_timeout_seconds",
        "cache_ttl_seconds",
        "retry_seconds",
        "batch_chunk_rows",
        "release",  # pushes nothing and acts on no Kubernetes object
        "namespace",
    },
    "reporter": TUNING
    | {
        "dev_mode",
        # closed days compacted by every report, in objects of up to 100k rows
        "log_compact",
        "log_compact_rows",
        "push_timeout_seconds",
        "feedback_lookback_hours",
        "min_drift_rows",
        "schedule_minutes",  # local `schedule` command only; the CronJob has its own
        "evidently_project",
        "writer_token",  # `simulate` only, a tool run by hand; the report writes no label
    },
    "retrainer": TUNING
    | {
        "dev_mode",
        "dataset_name",
        "seed",
        "quality_metric",
        # set only when retrainer.qualityThreshold is given: null keeps the task's default
        "quality_threshold",
        "quality_degradation",  # regression without a threshold; the default fits the demo
        "holdout_feedback_share",
        "lock_ttl_seconds",
        "serving_url",  # local rollout only; in the cluster the Deployment is patched
        "schedule_seconds",  # local `schedule` command only
        "dataset_max_mb",  # upload_dataset_file (a laptop's CLI); the CronJob downloads nothing
    },
}
LEFT_AT_DEFAULT["bootstrap"] = LEFT_AT_DEFAULT["retrainer"] | {
    # the retrainer's are its pod's mlplatform.io/force and mlplatform.io/action annotations
    # (serving's admin API)
    "force",
    "action",
    # `train --if-missing` neither rolls out nor pushes metrics
    "rollout",
    "release",
    "namespace",
    "serving_deployment",
    "serving_container",
    "admin_token",
    "pushgateway_url",
    "retrain_every",
    "drift_threshold",
    "quality_threshold",
    "gate_tolerance",
}
# `batch` reads the store and the registry only (CommonSettings); nothing of training,
# retraining, rollout or pushing.
LEFT_AT_DEFAULT["batch"] = (
    (set(RetrainerSettings.model_fields) - set(CommonSettings.model_fields))
    | TUNING
    | {"dev_mode", "release", "namespace"}
)
# HOME: for libraries that cache under ~ (the root filesystem is read-only); TZ: the extraEnv of
# ci/scheduling-values.yaml
NOT_MLPLATFORM = {"HOME", "TZ"}


def env_of(settings: type[BaseSettings]) -> dict[str, str]:
    """Environment variable -> field name, as pydantic-settings reads them."""
    out = {}
    for name, field in settings.model_fields.items():
        out[f"MLPLATFORM_{name.upper()}"] = name
        alias: Any = field.validation_alias
        for choice in getattr(alias, "choices", []):
            out[str(choice)] = name
    return out


def set_by_chart() -> dict[str, set[str]]:
    """Container name -> every variable set on it, over every variant."""
    seen: dict[str, set[str]] = {}
    for variant in VARIANTS:
        for _, spec in workloads(rendered_variant(variant)):
            for c in containers(spec):
                seen.setdefault(c["name"], set()).update(env_names(c))
    return seen


def test_only_our_service_containers_get_mlplatform_settings() -> None:
    for name, names in set_by_chart().items():
        if name not in SETTINGS:
            assert not {n for n in names if n.startswith("MLPLATFORM_")}, name


@pytest.mark.parametrize("container", list(SETTINGS))
def test_every_variable_set_is_read_and_every_setting_is_decided(container: str) -> None:
    reads = env_of(SETTINGS[container])
    names = set_by_chart()[container] - NOT_MLPLATFORM
    unknown = names - set(reads)
    assert not unknown, f"{container}: the chart sets variables nothing reads: {unknown}"
    fields = {reads[n] for n in names}
    undecided = set(SETTINGS[container].model_fields) - fields - LEFT_AT_DEFAULT[container]
    assert not undecided, f"{container}: settings neither set by the chart nor listed: {undecided}"
    stale = LEFT_AT_DEFAULT[container] & fields
    assert not stale, f"{container}: listed as left at default but set: {stale}"
    assert LEFT_AT_DEFAULT[container] <= set(SETTINGS[container].model_fields)


def test_the_chart_never_pins_the_model_version() -> None:
    for name, names in set_by_chart().items():
        assert "MODEL_VERSION" not in names and "MLPLATFORM_MODEL_VERSION" not in names, name
