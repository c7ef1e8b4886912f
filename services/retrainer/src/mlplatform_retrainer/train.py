"""Training: pure functions from DataFrames to a fitted pipeline, metrics and reference data.

Nothing here touches the store or the network. Rows are encoded by the feature schema
(``schema.encode``: numbers, category codes, NaN for missing) and the pipeline is
``embedding (ColumnTransformer + PCA) -> estimator``: numbers imputed and scaled, categories
imputed and one-hot encoded (a value never seen gives zeros), then PCA, whose output is also
the space drift is measured in. The estimator is a classifier or a regressor, by the task. The
backup is a simpler, independent model on the same preprocessing that serving falls back to if
the primary raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.dummy import DummyRegressor
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlplatform_common.quality import classification_metrics, regression_metrics, to_builtin
from mlplatform_common.schema import (
    CLASSIFICATION,
    REGRESSION,
    embed,
    encoded_frame,
    feature_schema,
    is_category,
)

logger = logging.getLogger("mlplatform.retrainer")

ESTIMATORS: dict[str, dict[str, Callable[[int], Any]]] = {
    CLASSIFICATION: {
        "logistic_regression": lambda seed: LogisticRegression(max_iter=2000, random_state=seed),
        "random_forest": lambda seed: RandomForestClassifier(n_estimators=200, random_state=seed),
        "hist_gradient_boosting": lambda seed: HistGradientBoostingClassifier(random_state=seed),
    },
    REGRESSION: {
        "ridge": lambda seed: Ridge(),
        "random_forest": lambda seed: RandomForestRegressor(n_estimators=200, random_state=seed),
        "hist_gradient_boosting": lambda seed: HistGradientBoostingRegressor(random_state=seed),
    },
}
DEFAULT_ESTIMATOR = {CLASSIFICATION: "logistic_regression", REGRESSION: "ridge"}
BACKUP_ESTIMATOR = {CLASSIFICATION: "gaussian_nb", REGRESSION: "median"}

STEPS = ("split", "embedding", "estimator", "backup", "evaluate", "reference data")


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained. ``estimator``: a name of ``ESTIMATORS[task]``; default: the
    task's ``DEFAULT_ESTIMATOR``."""

    n_components: int = 10
    estimator: str | None = None
    seed: int = 42
    test_size: float = 0.2
    validation_size: float = 0.2

    def estimator_for(self, task: str) -> str:
        name = self.estimator or DEFAULT_ESTIMATOR[task]
        if name not in ESTIMATORS[task]:
            raise ValueError(
                f"unknown estimator {name!r} for {task}; choose one of {sorted(ESTIMATORS[task])}"
            )
        return name


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
    task: str = CLASSIFICATION
    estimator: str = ""


def split(
    X: pd.DataFrame,
    y: pd.Series,
    config: TrainConfig,
    test: tuple[pd.DataFrame, pd.Series] | None = None,
    task: str = CLASSIFICATION,
) -> Splits:
    """Stratified split for classification, random for regression; the test part is the fixed
    holdout the quality gate reuses.

    With ``test`` given (retraining: the gate's holdout), all of ``X`` is split into train
    and validation only, in the same train:validation proportion as a first training.
    """
    if test is None:
        X_rest, X_test, y_rest, y_test = train_test_split(
            X, y, test_size=config.test_size, stratify=_strata(y, task), random_state=config.seed
        )
    else:
        X_rest, y_rest, (X_test, y_test) = X, y, test
    val_share = config.validation_size / (1 - config.test_size)
    X_train, X_val, y_train, y_val = train_test_split(
        X_rest,
        y_rest,
        test_size=val_share,
        stratify=_strata(y_rest, task),
        random_state=config.seed,
    )
    return Splits(X_train, X_val, X_test, y_train, y_val, y_test)


def _strata(y: pd.Series, task: str) -> pd.Series | None:
    return y if task == CLASSIFICATION else None


def preprocessor(schema: list[dict[str, Any]]) -> ColumnTransformer:
    """Encoded rows -> model inputs: numbers imputed (where the schema allows missing) and
    scaled; category codes imputed and one-hot encoded over the schema's values, so the code
    of a value never seen gives zeros. Columns by position: ONNX graphs take one tensor."""
    numbers = [j for j, f in enumerate(schema) if not is_category(f)]
    categories = [j for j, f in enumerate(schema) if is_category(f)]
    steps: list[tuple[str, Any, list[int]]] = []
    if numbers:
        imputes = any(schema[j].get("nullable") for j in numbers)
        number_steps: list[tuple[str, Any]] = [("scale", StandardScaler())]
        if imputes:
            number_steps.insert(0, ("impute", SimpleImputer(strategy="median")))
        steps.append(("numbers", Pipeline(number_steps), numbers))
    if categories:
        values = [np.arange(len(schema[j]["categories"]), dtype=np.float64) for j in categories]
        onehot = OneHotEncoder(categories=values, handle_unknown="ignore", sparse_output=False)
        steps.append(
            (
                "categories",
                Pipeline([("impute", SimpleImputer(strategy="most_frequent")), ("onehot", onehot)]),
                categories,
            )
        )
    return ColumnTransformer(steps, sparse_threshold=0)


def build_pipeline(
    config: TrainConfig, n_components: int, schema: list[dict[str, Any]], task: str
) -> Pipeline:
    """The primary model: embedding (preprocessing + PCA) then the task's estimator."""
    name = config.estimator_for(task)
    embedding = Pipeline(
        [
            ("prep", preprocessor(schema)),
            ("pca", PCA(n_components=n_components, random_state=config.seed)),
        ]
    )
    return Pipeline([("embedding", embedding), ("estimator", ESTIMATORS[task][name](config.seed))])


def build_backup(schema: list[dict[str, Any]], task: str) -> Pipeline:
    """The fallback, on the same preprocessing and no embedding: Gaussian naive Bayes for
    classes, the training median for quantities."""
    estimator = GaussianNB() if task == CLASSIFICATION else DummyRegressor(strategy="median")
    return Pipeline([("prep", preprocessor(schema)), ("estimator", estimator)])


def embedding_rank(schema: list[dict[str, Any]]) -> int:
    """The most PCA components the preprocessed rows can fill: one per number, and one fewer
    than its values per category (a one-hot group sums to one, so once centred one of its
    columns is the others'). Components past it hold rounding noise, which trees split on and
    drift tests read."""
    return sum(max(len(f["categories"]) - 1, 1) if is_category(f) else 1 for f in schema)


def evaluate(
    model: Any, X: pd.DataFrame, y: pd.Series, task: str = CLASSIFICATION
) -> dict[str, float]:
    """Score a fitted model on encoded, labelled rows, by the task's metrics."""
    if task == REGRESSION:
        return regression_metrics(y, model.predict(X))
    proba = model.predict_proba(X) if hasattr(model, "predict_proba") else None
    classes = [to_builtin(c) for c in model.classes_]
    return classification_metrics(y, model.predict(X), proba, classes)


def train(
    X: pd.DataFrame,
    y: pd.Series,
    config: TrainConfig | None = None,
    on_step: Callable[[str], None] | None = None,
    test: tuple[pd.DataFrame, pd.Series] | None = None,
    task: str = CLASSIFICATION,
) -> TrainingResult:
    """Split, fit the primary and backup models, score them, and embed the training split.

    Args:
        X: features as ``load_dataset`` gives them (numbers, category text, NaN).
        y: target labels (classification) or values (regression).
        config: training settings.
        on_step: called with each finished step's name (for progress displays).
        test: a fixed test set, as read (retraining); default: a share of ``X``.
        task: ``classification`` or ``regression``.
    """
    config = config or TrainConfig()
    done = on_step or (lambda _step: None)
    estimator = config.estimator_for(task)
    schema = feature_schema(X)
    Xe = encoded_frame(X, schema)
    if test is not None:
        test = (encoded_frame(test[0], schema), test[1])
    parts = split(Xe, y, config, test, task)
    done("split")
    n_components = min(config.n_components, embedding_rank(schema), len(parts.X_train))
    if n_components < config.n_components:
        logger.warning(
            "n_components=%d is more than the data allows; using %d",
            config.n_components,
            n_components,
        )
    pipeline = build_pipeline(config, n_components, schema, task)
    pipeline.named_steps["embedding"].fit(parts.X_train)
    done("embedding")
    pipeline.fit(parts.X_train, parts.y_train)
    done("estimator")
    backup = build_backup(schema, task).fit(parts.X_train, parts.y_train)
    done("backup")
    metrics = {
        "test": evaluate(pipeline, parts.X_test, parts.y_test, task),
        "validation": evaluate(pipeline, parts.X_val, parts.y_val, task),
        "backup_test": evaluate(backup, parts.X_test, parts.y_test, task),
    }
    done("evaluate")
    ref_data = embed(pipeline, parts.X_train).reset_index(drop=True)
    ref_data["target"] = parts.y_train.to_numpy()
    done("reference data")
    classes = (
        [to_builtin(c) for c in np.asarray(pipeline.classes_)] if task == CLASSIFICATION else []
    )
    return TrainingResult(
        pipeline=pipeline,
        backup=backup,
        metrics=metrics,
        ref_data=ref_data,
        schema=schema,
        classes=classes,
        n_components=n_components,
        split_sizes={
            "train": len(parts.X_train),
            "validation": len(parts.X_val),
            "test": len(parts.X_test),
        },
        task=task,
        estimator=estimator,
    )
