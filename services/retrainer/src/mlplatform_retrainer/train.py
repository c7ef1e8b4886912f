"""Training: pure functions from DataFrames to a fitted pipeline, metrics and reference data.

Nothing here touches the store or the network. The pipeline is
``embedding (StandardScaler + PCA) -> classifier``; the backup is a simpler, independent model
on the raw features that serving falls back to if the primary raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from mlplatform_common.quality import classification_metrics, to_builtin
from mlplatform_common.schema import embed, feature_schema

logger = logging.getLogger("mlplatform.retrainer")

ESTIMATORS: dict[str, Callable[[int], Any]] = {
    "logistic_regression": lambda seed: LogisticRegression(max_iter=2000, random_state=seed),
    "random_forest": lambda seed: RandomForestClassifier(n_estimators=200, random_state=seed),
}

STEPS = ("split", "embedding", "classifier", "backup", "evaluate", "reference data")


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained."""

    n_components: int = 10
    estimator: str = "logistic_regression"
    seed: int = 42
    test_size: float = 0.2
    validation_size: float = 0.2


@dataclass
class Splits:
    """A stratified train / validation / test split with a fixed seed."""

    X_train: pd.DataFrame
    X_val: pd.DataFrame
    X_test: pd.DataFrame
    y_train: pd.Series
    y_val: pd.Series
    y_test: pd.Series


@dataclass
class TrainingResult:
    """A fitted model and everything a manifest records about it."""

    pipeline: Pipeline
    backup: Pipeline
    metrics: dict[str, dict[str, float]]
    ref_data: pd.DataFrame
    schema: list[dict[str, Any]]
    classes: list[Any]
    n_components: int
    split_sizes: dict[str, int] = field(default_factory=dict)


def split(
    X: pd.DataFrame,
    y: pd.Series,
    config: TrainConfig,
    test: tuple[pd.DataFrame, pd.Series] | None = None,
) -> Splits:
    """Stratified split; the test part is the fixed holdout the quality gate reuses.

    With ``test`` given (retraining: the gate's holdout), all of ``X`` is split into train
    and validation only, in the same train:validation proportion as a first training.
    """
    if test is None:
        X_rest, X_test, y_rest, y_test = train_test_split(
            X, y, test_size=config.test_size, stratify=y, random_state=config.seed
        )
    else:
        X_rest, y_rest, (X_test, y_test) = X, y, test
    val_share = config.validation_size / (1 - config.test_size)
    X_train, X_val, y_train, y_val = train_test_split(
        X_rest, y_rest, test_size=val_share, stratify=y_rest, random_state=config.seed
    )
    return Splits(X_train, X_val, X_test, y_train, y_val, y_test)


def build_pipeline(config: TrainConfig, n_components: int) -> Pipeline:
    """The primary model: embedding (scaler + PCA) then the classifier."""
    if config.estimator not in ESTIMATORS:
        raise ValueError(
            f"unknown estimator {config.estimator!r}; choose one of {sorted(ESTIMATORS)}"
        )
    embedding = Pipeline(
        [
            ("scaler", StandardScaler()),
            ("pca", PCA(n_components=n_components, random_state=config.seed)),
        ]
    )
    return Pipeline(
        [("embedding", embedding), ("classifier", ESTIMATORS[config.estimator](config.seed))]
    )


def build_backup() -> Pipeline:
    """The fallback: Gaussian naive Bayes on scaled raw features, no embedding involved."""
    return Pipeline([("scaler", StandardScaler()), ("classifier", GaussianNB())])


def evaluate(model: Any, X: pd.DataFrame, y: pd.Series) -> dict[str, float]:
    """Score a fitted classifier on a labelled set."""
    proba = model.predict_proba(X) if hasattr(model, "predict_proba") else None
    classes = [to_builtin(c) for c in model.classes_]
    return classification_metrics(y, model.predict(X), proba, classes)


def train(
    X: pd.DataFrame,
    y: pd.Series,
    config: TrainConfig | None = None,
    on_step: Callable[[str], None] | None = None,
    test: tuple[pd.DataFrame, pd.Series] | None = None,
) -> TrainingResult:
    """Split, fit the primary and backup models, score them, and embed the training split.

    Args:
        X: numeric features.
        y: target labels.
        config: training settings.
        on_step: called with each finished step's name (for progress displays).
        test: a fixed test set (retraining); default: a stratified share of ``X``.
    """
    config = config or TrainConfig()
    done = on_step or (lambda _step: None)
    parts = split(X, y, config, test)
    done("split")
    n_components = min(config.n_components, X.shape[1], len(parts.X_train))
    if n_components < config.n_components:
        logger.warning(
            "n_components=%d is more than the data allows; using %d",
            config.n_components,
            n_components,
        )
    pipeline = build_pipeline(config, n_components)
    pipeline.named_steps["embedding"].fit(parts.X_train)
    done("embedding")
    pipeline.fit(parts.X_train, parts.y_train)
    done("classifier")
    backup = build_backup().fit(parts.X_train, parts.y_train)
    done("backup")
    metrics = {
        "test": evaluate(pipeline, parts.X_test, parts.y_test),
        "validation": evaluate(pipeline, parts.X_val, parts.y_val),
        "backup_test": evaluate(backup, parts.X_test, parts.y_test),
    }
    done("evaluate")
    ref_data = embed(pipeline, parts.X_train).reset_index(drop=True)
    ref_data["target"] = parts.y_train.to_numpy()
    done("reference data")
    return TrainingResult(
        pipeline=pipeline,
        backup=backup,
        metrics=metrics,
        ref_data=ref_data,
        schema=feature_schema(X),
        classes=[to_builtin(c) for c in np.asarray(pipeline.classes_)],
        n_components=n_components,
        split_sizes={
            "train": len(parts.X_train),
            "validation": len(parts.X_val),
            "test": len(parts.X_test),
        },
    )
