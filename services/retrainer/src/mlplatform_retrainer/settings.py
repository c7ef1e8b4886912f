"""Retrainer settings (env prefix ``MLPLATFORM_``)."""

from __future__ import annotations

import os
from functools import lru_cache

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from mlplatform_common import datasets
from mlplatform_common.errors import ConfigurationError
from mlplatform_common.quality import DEFAULT_METRIC
from mlplatform_common.schema import CLASSIFICATION, REGRESSION
from mlplatform_common.settings import DEV_ADMIN_TOKEN, CommonSettings

TASK_METRICS = {
    CLASSIFICATION: ("f1", "accuracy", "balanced_accuracy", "precision", "recall", "roc_auc"),
    REGRESSION: ("rmse", "mae", "r2", "mape"),
}
"""The metrics each task's gate and quality trigger can compare by."""


class RetrainerSettings(CommonSettings):
    """Training and retraining."""

    dataset_name: str = "breast_cancer"
    """Name of the reference data set in the store (``datasets/<name>/raw.csv``)."""

    n_components: int = 10
    """PCA components of the embedding."""

    estimator: str | None = None
    """Primary estimator. Classification: ``logistic_regression`` (default),
    ``random_forest``, ``hist_gradient_boosting``; regression: ``ridge`` (default),
    ``random_forest``, ``hist_gradient_boosting``. A retrain whose production task has no
    estimator of this name trains production's estimator."""

    dataset_max_mb: float = Field(default=datasets.DEFAULT_MAX_MB, gt=0)
    """Largest data set ``upload_dataset_file`` stores and ``train --data-url`` downloads."""

    task: str | None = None
    """``classification`` or ``regression`` for ``train``; default: read from the target
    (``schema.infer_task``). Retraining keeps the task of the version in production."""

    seed: int = 42
    """Seed of the stratified split and of the estimators."""

    retrain_every: int = 50
    """Trigger: at least this many labelled rows since the last retrain (the course's k)."""

    drift_threshold: float = 0.5
    """Trigger: the latest report's drift share is above this."""

    quality_metric: str | None = None
    """Metric the quality trigger and the gate look at; default: the task's
    (``quality.DEFAULT_METRIC``: ``f1`` for classification, ``rmse`` for regression). One of
    the task's metrics (classification: accuracy, balanced_accuracy, precision, recall, f1,
    roc_auc; regression: mae, rmse, r2, mape), compared in its direction (higher is better
    for scores, lower for errors)."""

    quality_threshold: float | None = None
    """Trigger: the latest report's quality metric is worse than this (below it for a score,
    above it for an error). Default: 0.8 for classification; for regression the production
    version's own test value of the metric made worse by ``quality_degradation``."""

    quality_degradation: float = 0.25
    """Regression without ``quality_threshold``: the trigger fires when the report's metric is
    this share worse than the production version's test value (an RMSE of 54 against a test
    RMSE of 43 with 0.25: 54 > 43 * 1.25)."""

    gate_tolerance: float = 0.02
    """Promote the candidate unless it is worse than production by more than this. One
    misclassified row moves F1 by about 0.007 on the shipped data's 114-row test split, so a
    tighter tolerance rejects candidates over noise."""

    holdout_feedback_share: float = 0.2
    """Share of the most recent labelled rows kept out of training for the gate's holdout."""

    lock_ttl_seconds: float = 1800.0
    """A retrain lock older than this is considered abandoned."""

    rollout: str = "auto"
    """How serving picks up a new version: ``local`` (POST /admin/reload), ``kubernetes``
    (patch the Deployment), ``none``; ``auto`` = kubernetes inside a cluster, else local."""

    serving_url: str = "http://127.0.0.1:8080"
    """Serving API, for the local rollout."""

    admin_token: SecretStr | None = None
    """Bearer token for serving's /admin/reload (dev mode falls back to the dev token)."""

    serving_deployment: str = "mlplatform-serving"
    """Deployment patched on rollout."""

    serving_container: str = "serving"
    """Container in that Deployment that gets ``MODEL_VERSION``."""

    pushgateway_url: str | None = None
    """Pushgateway for the retrain metrics (unset: not pushed)."""

    force: bool = False
    """Retrain even without a trigger. In the chart the CronJob's pod reads it from its own
    annotation ``mlplatform.io/force`` (downward API), which serving's /admin/retrain puts on the
    Job's pod template; empty (no annotation) is false."""

    action: str | None = None
    """Do this instead of a retrain (``mlplatform_common.actions``: promote:vN, pin:vN,
    rollback, register:<upload id>). Serving's admin API starts such runs; in the chart the pod
    reads it from its annotation ``mlplatform.io/action``; empty (no annotation) is none."""

    schedule_seconds: float = 60.0
    """``schedule``: how often the trigger check runs."""

    @field_validator("quality_metric", "quality_threshold", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # the chart renders an unset value as ""
        return None if value == "" else value

    @field_validator("force", "action", mode="before")
    @classmethod
    def _absent_annotation_is_unset(cls, value: object, info: ValidationInfo) -> object:
        # the downward API gives "" for an annotation the pod does not carry
        if value != "":
            return value
        return False if info.field_name == "force" else None

    def resolved_rollout(self) -> str:
        if self.rollout != "auto":
            return self.rollout
        return "kubernetes" if os.environ.get("KUBERNETES_SERVICE_HOST") else "local"

    def metric_for(self, task: str) -> str:
        """The gate's and the quality trigger's metric for ``task``; a metric of another task
        is refused (an RMSE cannot gate a classifier)."""
        metric = self.quality_metric or DEFAULT_METRIC[task]
        if metric not in TASK_METRICS[task]:
            raise ConfigurationError(
                f"MLPLATFORM_QUALITY_METRIC={metric!r} is not a {task} metric; "
                f"choose one of {', '.join(TASK_METRICS[task])}"
            )
        return metric

    def require_admin_token(self) -> str:
        token = self.secret_or_dev(self.admin_token, DEV_ADMIN_TOKEN)
        if token is None:
            raise ConfigurationError(
                "MLPLATFORM_ADMIN_TOKEN is not set: cannot tell serving to reload"
            )
        return token


@lru_cache
def get_settings() -> RetrainerSettings:
    """Cached settings; tests call ``get_settings.cache_clear()`` after changing the env."""
    return RetrainerSettings()
