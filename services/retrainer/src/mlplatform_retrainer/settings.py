"""Retrainer settings (env prefix ``MLPLATFORM_``)."""

from __future__ import annotations

from functools import lru_cache

from mlplatform_common.settings import CommonSettings


class RetrainerSettings(CommonSettings):
    """Training and retraining."""

    dataset_name: str = "breast_cancer"
    """Name of the reference data set in the store (``datasets/<name>/raw.csv``)."""

    n_components: int = 10
    """PCA components of the embedding."""

    estimator: str = "logistic_regression"
    """Primary classifier: ``logistic_regression`` or ``random_forest``."""

    seed: int = 42
    """Seed of the stratified split and of the estimators."""


@lru_cache
def get_settings() -> RetrainerSettings:
    """Cached settings; tests call ``get_settings.cache_clear()`` after changing the env."""
    return RetrainerSettings()
