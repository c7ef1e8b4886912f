"""The report itself: DataFrames in, numbers and HTML out (Evidently 0.7).

Nothing here touches the store or the network. Three Evidently reports make one page:

- data drift in embedding space (``PCA_*``), the model version's reference set against the
  production window, both embedded with that version's embedding (rows encoded by the
  version's typed schema first, ``schema.encoded_frame``);
- data drift on the raw features, the version's training data against the production window,
  each column tested by its type (``DriftConfig``: numbers and categories);
- the task's quality on the labelled rows of the window: classification (with probabilities,
  so ROC AUC) or regression (MAE, RMSE, R², MAPE and Evidently's error distribution), once the
  window has ``min_labelled_rows`` of them.

Drift numbers are read from the Evidently snapshots. Quality numbers are computed here with
scikit-learn (``quality_metrics`` and ``regression_quality``, which also decide which of them a
window defines); the Evidently quality preset only draws its section, and a failure there (a
window of one class predicted right) loses that section alone, never the drift or the numbers.

The drift tests are fixed explicitly (settings and ``DriftConfig``), never left to Evidently's
size-based choice, so a score means the same thing in every run. Drift numbers are read from
each snapshot by metric name and parameters (``ValueDrift`` of column ``PCA_3``), never by
position.
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from evidently import (
    BinaryClassification,
    DataDefinition,
    Dataset,
    MulticlassClassification,
    Regression,
    Report,
)
from evidently.core.metric_types import render_widgets
from evidently.core.report import Snapshot
from evidently.legacy.renderers.html_widgets import group_widget, text_widget
from evidently.presets import ClassificationPreset, DataDriftPreset, RegressionPreset

from mlplatform_common.datalog import BATCH, SOURCE_COLUMN
from mlplatform_common.quality import regression_metrics
from mlplatform_common.schema import (
    CLASSIFICATION,
    FEATURE_LIMIT,
    REGRESSION,
    UNKNOWN,
    category_value,
    complete_rows,
    embed,
    embedding_columns,
    encoded_frame,
    is_category,
)

logger = logging.getLogger("mlplatform.reporter")

EMBEDDING = "embedding"
RAW = "raw"
TARGET = "target"
PREDICTION = "prediction"


NUMERICAL, CATEGORICAL = "numerical", "categorical"  # Evidently's column types

CATEGORY_METHOD = "chisquare"
CATEGORY_THRESHOLD = 0.05


@dataclass(frozen=True)
class DriftConfig:
    """How drift is tested: one fixed stat test per column type, and the share that means drift.

    - Numbers (every embedding column, and the raw number features): ``method`` at
      ``threshold``, from the settings (default ``ks``, two-sample Kolmogorov-Smirnov, a
      column drifts when its p-value < 0.05).
    - Categories (raw category features, told to Evidently as categorical): always
      ``chisquare``, Pearson's chi-square test of the window's value counts against the
      reference's shares, drifting when p < 0.05. Chosen over Jensen-Shannon because its
      score is a p-value read against the same 0.05 as ``ks``, so every
      ``mlplatform_feature_drift_score`` reads one way (lower is more drift); and because a
      value the version never saw (the log's ``schema.UNKNOWN``) has an expected count of 0,
      which gives p = 0: an unseen value always shows as drift, where Jensen-Shannon would
      weigh it by its share. Evidently's own choice switches to Jensen-Shannon above 1000
      rows; fixing it keeps one test at every window size.

    Missing cells are left out of both tests (Evidently drops them); a column with no value
    at all on one side is not tested and the report says so.
    """

    method: str = "ks"
    threshold: float = 0.05
    share_threshold: float = 0.5
    min_rows: int = 5
    category_method: str = CATEGORY_METHOD
    category_threshold: float = CATEGORY_THRESHOLD

    def tests(self) -> dict[str, dict[str, Any]]:
        """The test of each column type, as the report JSON records it."""
        return {
            NUMERICAL: {"method": self.method, "threshold": self.threshold},
            CATEGORICAL: {"method": self.category_method, "threshold": self.category_threshold},
        }

    def method_of(self, column_type: str) -> str:
        return self.category_method if column_type == CATEGORICAL else self.method


@dataclass
class DriftResult:
    """Drift of one space (``embedding`` or ``raw``)."""

    space: str
    method: str
    threshold: float
    share_threshold: float
    reference_rows: int
    current_rows: int
    drifted_columns: int
    share: float
    detected: bool
    scores: dict[str, float] = field(default_factory=dict)
    column_types: dict[str, str] = field(default_factory=dict)
    """Each tested column's type (``numerical`` or ``categorical``): which test it got."""
    tests: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The test of each column type present: ``{"categorical": {"method", "threshold"}}``."""
    untested: dict[str, str] = field(default_factory=dict)
    """Columns left out of the test, and why (no value on one side)."""


QUALITY_METRICS = ("accuracy", "precision", "recall", "f1", "balanced_accuracy", "roc_auc")
REGRESSION_METRICS = ("mae", "rmse", "r2", "mape")
TASK_METRICS = {CLASSIFICATION: QUALITY_METRICS, REGRESSION: REGRESSION_METRICS}
COMPLETE, PARTIAL, EMPTY = "complete", "partial", "empty"


@dataclass
class QualityResult:
    """The task's quality on the labelled rows of the window.

    A number the window cannot define is None, and ``missing`` says why (metric -> reason).
    Below ``min_rows`` labelled rows no number is reported at all (``withheld``).
    """

    rows: int
    task: str = CLASSIFICATION
    min_rows: int = 0
    """The labelled rows quality needs (``MLPLATFORM_MIN_LABELLED_ROWS``)."""
    accuracy: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    balanced_accuracy: float | None = None
    roc_auc: float | None = None
    roc_auc_rows: int = 0  # the labelled rows with probabilities it is computed on
    mae: float | None = None
    rmse: float | None = None
    r2: float | None = None
    mape: float | None = None  # a fraction (0.2 = 20%), as training records it
    missing: dict[str, str] = field(default_factory=dict)
    unknown_labels: list[str] = field(default_factory=list)
    unusable: int = 0
    """Regression: labelled rows left out because their label or prediction is not a number."""

    @property
    def metrics(self) -> tuple[str, ...]:
        return TASK_METRICS[self.task]

    @property
    def withheld(self) -> bool:
        """Too few labelled rows: no number is reported."""
        return self.rows < self.min_rows

    def numbers(self) -> dict[str, float]:
        """The defined metrics only, by name (what is pushed and stored)."""
        values = {name: getattr(self, name) for name in self.metrics}
        return {name: v for name, v in values.items() if v is not None}

    @property
    def status(self) -> str:
        """``complete`` (every metric), ``partial`` (some) or ``empty`` (none)."""
        defined = len(self.numbers())
        return COMPLETE if defined == len(self.metrics) else PARTIAL if defined else EMPTY

    def withhold(self) -> None:
        """Drop every number: too few rows to mean anything (one row right is "F1 = 1")."""
        for name in self.metrics:
            setattr(self, name, None)
        self.roc_auc_rows = 0
        self.missing = dict.fromkeys(self.metrics, f"fewer than {self.min_rows} labelled rows")

    def note(self) -> str | None:
        """One line on what is left out and why; None when nothing is."""
        if self.withheld:
            return (
                f"quality needs at least {self.min_rows} labelled rows "
                f"(MLPLATFORM_MIN_LABELLED_ROWS); the window has {self.rows}: no quality numbers"
            )
        if not self.missing:
            return None
        by_reason: dict[str, list[str]] = {}
        for name, reason in self.missing.items():
            by_reason.setdefault(reason, []).append(_LABELS[name])
        parts = [f"no {' or '.join(names)} ({reason})" for reason, names in by_reason.items()]
        return f"quality is {self.status} on the {self.rows} labelled rows: " + "; ".join(parts)


_LABELS = {
    "accuracy": "accuracy",
    "precision": "precision",
    "recall": "recall",
    "f1": "F1",
    "balanced_accuracy": "balanced accuracy",
    "roc_auc": "ROC AUC",
    "mae": "MAE",
    "rmse": "RMSE",
    "r2": "R²",
    "mape": "MAPE",
}


@dataclass
class ReportInput:
    """Everything one report needs, already read from the store."""

    model_version: str
    classes: list[Any]
    schema: list[dict[str, Any]]
    """The version's typed ``feature_schema`` (manifest): names, types, category values."""
    reference_embedding: pd.DataFrame
    """The version's ``ref_data.csv`` (``PCA_*`` and target)."""
    reference_raw: pd.DataFrame | None
    """The version's training data as ``parse_dataset`` reads it (numbers as floats,
    categories as text, missing as NaN), or None if it is not in the store."""
    production: pd.DataFrame
    """Logged predictions of the window: raw features, categories as text (``PCA_*`` is
    recomputed here)."""
    labelled: pd.DataFrame
    """Labelled rows of the window: ``target``, ``prediction`` and ``proba_json`` (may be NaN);
    for regression both are numbers, possibly as text."""
    window: dict[str, Any] = field(default_factory=dict)
    task: str = CLASSIFICATION
    model_name: str = "mlplatform"
    """The named model (``CommonSettings.model_name``), named in the report's header."""

    @property
    def features(self) -> list[str]:
        return [f["name"] for f in self.schema]

    @property
    def categorical(self) -> list[str]:
        return [f["name"] for f in self.schema if is_category(f)]


@dataclass
class ReportResult:
    """Numbers for the metrics and summary, the HTML page, and the Evidently snapshots."""

    model_version: str
    rows: dict[str, int]
    drift: dict[str, DriftResult]
    quality: QualityResult | None
    html: str
    notes: list[str]
    window: dict[str, Any]
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    quality_note: str | None = None
    """Why quality is empty or partial, or its section is not drawn; None when all is there."""
    task: str = CLASSIFICATION
    predictions: dict[str, Any] = field(default_factory=dict)
    """What the window predicted (``prediction_summary``), for the trends over time."""
    model_name: str = "mlplatform"
    """The named model reported on (``CommonSettings.model_name``; set by the job)."""

    def summary(self) -> dict[str, Any]:
        """The JSON-ready summary stored beside the HTML.

        ``quality`` holds only the numbers the window defines (None without labelled rows);
        ``quality_status`` is ``complete``, ``partial`` or ``empty`` and ``quality_note`` says
        what is left out and why.
        """
        q = self.quality
        counts: dict[str, Any] = {}
        if q is not None:
            counts = {"rows": q.rows, "min_rows": q.min_rows}
            if q.task == CLASSIFICATION:
                counts["roc_auc_rows"] = q.roc_auc_rows
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "task": self.task,
            "window": self.window,
            "rows": self.rows,
            "drift": {space: asdict(d) for space, d in self.drift.items()},
            "quality": {**counts, **q.numbers()} if q else None,
            "quality_status": q.status if q else EMPTY,
            "quality_note": self.quality_note,
            "notes": self.notes,
            "predictions": self.predictions,
        }


# -- pure data preparation ---------------------------------------------------------------------


def prediction_summary(production: pd.DataFrame, task: str) -> dict[str, Any]:
    """The window's predictions: ``counts`` per class for a classifier; for a regression the
    ``count``, ``mean`` and the 10th, 50th and 90th percentiles of the values."""
    if production.empty or "prediction" not in production.columns:
        return {}
    predicted = production["prediction"].dropna()
    if task != CLASSIFICATION:
        values = pd.to_numeric(predicted, errors="coerce").dropna()
        if values.empty:
            return {}
        q = values.quantile([0.1, 0.5, 0.9])
        return {
            "count": len(values),
            "mean": round(float(values.mean()), 6),
            "p10": round(float(q.loc[0.1]), 6),
            "p50": round(float(q.loc[0.5]), 6),
            "p90": round(float(q.loc[0.9]), 6),
        }
    counts = predicted.astype(str).value_counts()
    return {"counts": {str(k): int(v) for k, v in counts.sort_index().items()}}


def attach_probabilities(feedback: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """Add each labelled row's ``proba_json`` from the prediction log (by ``prediction_id``)."""
    out = feedback.copy()
    if predictions.empty or "proba_json" not in predictions.columns:
        out["proba_json"] = None
        return out
    lookup = predictions.drop_duplicates("prediction_id", keep="last").set_index("prediction_id")
    out["proba_json"] = out["prediction_id"].map(lookup["proba_json"])
    return out


def raw_features(frame: pd.DataFrame, schema: list[dict[str, Any]]) -> pd.DataFrame:
    """The raw features as the drift compares them: numbers as floats, categories as text
    (``category_value``), a value outside the version's categories as ``UNKNOWN``, missing
    cells as NaN. The log already writes categories so; training data gets the same form."""
    out = pd.DataFrame(index=frame.index)
    for spec in schema:
        name, col = spec["name"], frame[spec["name"]]
        if is_category(spec):
            text = col.map(category_value, na_action="ignore")
            known = text.isna() | text.isin(spec["categories"])
            out[name] = text.where(known, UNKNOWN).astype(object)
        else:
            out[name] = pd.to_numeric(col, errors="coerce").astype(float)
    return out


def embed_rows(pipeline: Any, rows: pd.DataFrame, schema: list[dict[str, Any]]) -> pd.DataFrame:
    """Raw rows in the version's embedding: encoded by its schema (``encoded_frame``), as the
    pipeline was fitted, then its embedding step."""
    return embed(pipeline, encoded_frame(rows, schema))


def prod_data(pipeline: Any, feedback: pd.DataFrame, schema: list[dict[str, Any]]) -> pd.DataFrame:
    """The course's ``prod_data.csv``: ``PCA_1..PCA_n,target,prediction`` of every labelled row,
    embedded with the given version's embedding from the raw features that were logged."""
    rows = complete_rows(feedback, schema)
    probe = pd.DataFrame(np.zeros((1, len(schema))), columns=[f["name"] for f in schema])
    n = pipeline.named_steps["embedding"].transform(probe).shape[1]
    if rows.empty:
        return pd.DataFrame(columns=[*embedding_columns(n), TARGET, PREDICTION])
    out = embed_rows(pipeline, rows, schema).reset_index(drop=True)
    out[TARGET] = rows[TARGET].astype(str).to_numpy()
    out[PREDICTION] = rows[PREDICTION].astype(str).to_numpy()
    return out


def quality_frame(labelled: pd.DataFrame, classes: list[Any]) -> tuple[pd.DataFrame, np.ndarray]:
    """``target``, ``prediction`` as label strings plus one probability column per class.

    Returns the frame and which of its rows have usable probabilities: a probability vector
    of the right length (a row labelled with its features has none). None is usable when
    the class names clash with the frame's own columns.
    """
    names = [str(c) for c in classes]
    frame = pd.DataFrame(
        {
            TARGET: labelled[TARGET].astype(str).to_numpy(),
            PREDICTION: labelled[PREDICTION].astype(str).to_numpy(),
        }
    )
    matrix = np.full((len(frame), len(names)), np.nan)
    for row, raw in enumerate(labelled.get("proba_json", pd.Series([None] * len(labelled)))):
        try:
            vector = json.loads(raw) if isinstance(raw, str) else None
        except json.JSONDecodeError:
            vector = None
        if isinstance(vector, list) and len(vector) == len(names):
            with contextlib.suppress(TypeError, ValueError):  # a non-number: none for the row
                matrix[row] = [float(v) for v in vector]
    has = np.isfinite(matrix).all(axis=1)
    if {TARGET, PREDICTION} & set(names):
        return frame, np.zeros(len(frame), dtype=bool)
    for i, name in enumerate(names):
        frame[name] = matrix[:, i]
    return frame, has


# -- reading a snapshot ------------------------------------------------------------------------


def metric_results(snapshot: Snapshot) -> list[dict[str, Any]]:
    """The snapshot's metric results, each with ``name`` (the metric type, e.g. ``F1Score``),
    ``config`` (its parameters) and ``value``."""
    out = []
    for item in snapshot.dict()["metrics"]:
        if not item:
            continue
        config = dict(item.get("config") or {})
        name = str(config.get("type", "")).rsplit(":", 1)[-1]
        out.append({"name": name, "config": config, "value": item.get("value")})
    return out


def metric_value(results: list[dict[str, Any]], name: str, **params: Any) -> Any:
    """The value of the metric called ``name`` whose parameters include ``params``.

    Raises:
        KeyError: no such metric in the snapshot.
    """
    for item in results:
        if item["name"] == name and all(item["config"].get(k) == v for k, v in params.items()):
            return item["value"]
    raise KeyError(f"metric {name}({params}) is not in the snapshot")


# -- the Evidently reports ---------------------------------------------------------------------


def drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: list[str],
    space: str,
    config: DriftConfig,
    categorical: list[str] | tuple[str, ...] = (),
) -> tuple[DriftResult, Snapshot]:
    """Evidently data drift of ``columns``, each with its type's fixed test (``DriftConfig``).

    Evidently is told which columns are categorical and which numerical (its
    ``DataDefinition``), so it never guesses a type from the values. A column with no value
    in the reference or in the window (all missing) is left out of the test and named in
    ``untested``: Evidently refuses an empty column.

    Raises:
        ValueError: no column has values on both sides.
    """
    kinds = {c: CATEGORICAL if c in set(categorical) else NUMERICAL for c in columns}
    untested: dict[str, str] = {}
    for col in columns:
        for side, frame in (("reference", reference), ("production window", current)):
            if col not in untested and not frame[col].notna().any():
                untested[col] = f"no value in the {side} (every cell missing)"
    tested = [c for c in columns if c not in untested]
    if not tested:
        raise ValueError(f"no {space} column has values in both the reference and the window")
    numerical = [c for c in tested if kinds[c] == NUMERICAL]
    categories = [c for c in tested if kinds[c] == CATEGORICAL]
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categories)
    preset = DataDriftPreset(
        columns=tested,
        num_method=config.method,
        num_threshold=config.threshold,
        cat_method=config.category_method,
        cat_threshold=config.category_threshold,
        drift_share=config.share_threshold,
    )
    # An unseen category has an expected count of 0: chi-square divides by it (p = 0, drift).
    with np.errstate(divide="ignore", invalid="ignore"):
        snapshot = Report([preset]).run(
            Dataset.from_pandas(current[tested].reset_index(drop=True), data_definition=definition),
            Dataset.from_pandas(
                reference[tested].reset_index(drop=True), data_definition=definition
            ),
        )
    results = metric_results(snapshot)
    counted = metric_value(results, "DriftedColumnsCount")
    scores = {
        col: float(
            metric_value(results, "ValueDrift", column=col, method=config.method_of(kinds[col]))
        )
        for col in tested
    }
    share = float(counted["share"])
    tests = {kind: test for kind, test in config.tests().items() if kind in kinds.values()}
    return (
        DriftResult(
            space=space,
            method=config.method,
            threshold=config.threshold,
            share_threshold=config.share_threshold,
            reference_rows=len(reference),
            current_rows=len(current),
            drifted_columns=int(counted["count"]),
            share=share,
            detected=share >= config.share_threshold,
            scores=scores,
            column_types={c: kinds[c] for c in tested},
            tests=tests,
            untested=untested,
        ),
        snapshot,
    )


def regression_quality(labelled: pd.DataFrame) -> QualityResult:
    """MAE, RMSE, R² and MAPE of the labelled rows, as training computes them
    (``quality.regression_metrics``); targets are stored as text and read with
    ``pd.to_numeric``. A row whose label or prediction is not a finite number is left out
    (``unusable``). MAPE is undefined when a true value is 0, R² on fewer than two rows."""
    truth = pd.to_numeric(labelled[TARGET], errors="coerce").to_numpy(dtype=float)
    pred = pd.to_numeric(labelled[PREDICTION], errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(truth) & np.isfinite(pred)
    quality = QualityResult(rows=int(ok.sum()), task=REGRESSION, unusable=int((~ok).sum()))
    if not quality.rows:
        quality.missing = dict.fromkeys(
            REGRESSION_METRICS, "no labelled row has numbers as label and prediction"
        )
        return quality
    for name, value in regression_metrics(truth[ok], pred[ok]).items():
        setattr(quality, name, value)
    if quality.mape is None:
        quality.missing["mape"] = "a true value is 0, where the percentage error is undefined"
    if quality.r2 is None:
        quality.missing["r2"] = "it needs at least two labelled rows"
    return quality


def regression_frame(labelled: pd.DataFrame) -> pd.DataFrame:
    """``target`` and ``prediction`` as numbers, the rows ``regression_quality`` uses."""
    frame = pd.DataFrame(
        {
            TARGET: pd.to_numeric(labelled[TARGET], errors="coerce").to_numpy(dtype=float),
            PREDICTION: pd.to_numeric(labelled[PREDICTION], errors="coerce").to_numpy(dtype=float),
        }
    )
    return frame[np.isfinite(frame).all(axis=1)].reset_index(drop=True)


def regression_snapshot(labelled: pd.DataFrame) -> Snapshot:
    """Evidently's regression preset (MAE, RMSE, MAPE, R², the error distribution and
    predicted against actual), for the HTML page only."""
    definition = DataDefinition(
        regression=[Regression(target=TARGET, prediction=PREDICTION)],
        numerical_columns=[TARGET, PREDICTION],
    )
    frame = regression_frame(labelled)
    return Report([RegressionPreset()]).run(
        Dataset.from_pandas(frame, data_definition=definition), None
    )


def quality_metrics(labelled: pd.DataFrame, classes: list[Any]) -> QualityResult:
    """Every quality number the labelled rows define, and why each other one is left out.

    The one place that decides which metrics a window defines. scikit-learn's definitions
    with ``zero_division=np.nan``: a ratio over nothing (precision with no row predicted the
    class, recall with no row of it) is undefined and left out, never reported as 0 or 1,
    since a made-up 0 would fire the retrainer's quality trigger on a model that was right.

    - accuracy: the share of rows predicted right; defined for any row.
    - precision, recall, F1: binary problems score the second class as positive, as
      training does; more classes take the macro average over the model's classes seen in
      the window, a class whose ratio is undefined left out of it (as scikit-learn does).
    - balanced accuracy: the mean recall of the model's classes among the true labels (one
      class present: its recall), as ``balanced_accuracy_score``.
    - ROC AUC: on the rows with probabilities, and only when their true labels hold every
      class (binary: the positive class's probability; more: the macro one-vs-rest mean).

    A true label or prediction outside the model's classes counts as a miss for the class on
    the other side of the row, and is named in the note.

    Args:
        labelled: ``target``, ``prediction`` and optionally ``proba_json`` per row.
        classes: the model's classes, in its probability order.

    Returns:
        The numbers (None where undefined) with the reason for each one left out.
    """
    from sklearn import metrics as skm  # here: only the quality part needs it

    frame, has_probas = quality_frame(labelled, classes)
    names = [str(c) for c in classes]
    truth, pred = frame[TARGET].to_numpy(), frame[PREDICTION].to_numpy()
    quality = QualityResult(rows=len(frame))
    missing = quality.missing
    if quality.rows == 0:
        for name in QUALITY_METRICS:
            missing[name] = "no labelled rows"
        return quality
    quality.unknown_labels = sorted((set(truth) | set(pred)) - set(names))
    quality.accuracy = float(np.mean(truth == pred))

    seen = [c for c in names if c in set(truth) | set(pred)]
    per_class = dict.fromkeys(("precision", "recall", "f1"), np.array([]))
    support = np.array([], dtype=int)
    if seen:
        p, r, f, support = skm.precision_recall_fscore_support(
            truth, pred, labels=seen, average=None, zero_division=np.nan
        )
        per_class = {"precision": p, "recall": r, "f1": f}
    binary = len(names) == 2
    positive = names[-1]
    for name, values in per_class.items():
        chosen = values[seen.index(positive)] if binary and positive in seen else np.nan
        if not binary:
            chosen = np.nanmean(values) if np.isfinite(values).any() else np.nan
        if np.isfinite(chosen):
            setattr(quality, name, float(chosen))
        elif binary and positive not in seen:
            missing[name] = f"no row has {positive}, the positive class, as label or prediction"
        elif binary:
            missing[name] = {  # F1 is defined whenever the class is seen
                "precision": f"no row was predicted {positive}, the positive class",
                "recall": f"no row has the true label {positive}, the positive class",
            }.get(name, f"{name} of {positive} is 0/0")
        else:
            missing[name] = f"no row has one of the model's classes as {_SIDE[name]}"
    recalls = per_class["recall"][np.asarray(support) > 0]
    if recalls.size:
        quality.balanced_accuracy = float(np.mean(recalls))
    else:
        missing["balanced_accuracy"] = "no row's true label is one of the model's classes"

    # Rows labelled with their features have no probabilities; a true label the model does
    # not know cannot be ranked against its classes.
    scored = has_probas & np.isin(truth, names)
    present = set(truth[scored])
    if not scored.any():
        missing["roc_auc"] = "no labelled row has the model's probabilities"
    elif len(present) < len(names):
        held = ", ".join(sorted(present))
        missing["roc_auc"] = (
            f"the {int(scored.sum())} labelled rows with probabilities all have the true "
            f"label {held}: it needs both classes"
            if binary
            else f"the labelled rows with probabilities hold only {held}: it needs every class"
        )
    else:
        proba = frame.loc[scored, names].to_numpy()
        t = truth[scored]
        if binary:
            auc = skm.roc_auc_score(t == positive, proba[:, 1])
        else:  # scikit-learn's macro one-vs-rest, without its rows-sum-to-one check
            auc = np.mean([skm.roc_auc_score(t == c, proba[:, i]) for i, c in enumerate(names)])
        quality.roc_auc, quality.roc_auc_rows = float(auc), int(scored.sum())
    return quality


_SIDE = {"precision": "prediction", "recall": "true label", "f1": "true label or prediction"}


def quality_snapshot(
    labelled: pd.DataFrame, classes: list[Any], quality: QualityResult
) -> Snapshot:
    """Evidently's classification preset on the labelled rows, for the HTML page only.

    Probabilities go in when ROC AUC is defined on every row. It may raise on windows the
    numbers above handle (one class predicted right: "Cannot compute TPR"); the caller
    decides what a failure costs.
    """
    frame, _ = quality_frame(labelled, classes)
    names = [str(c) for c in classes]
    with_probas = quality.roc_auc is not None and quality.roc_auc_rows == quality.rows
    task: BinaryClassification | MulticlassClassification
    if len(names) == 2:
        task = BinaryClassification(
            target=TARGET,
            prediction_labels=PREDICTION,
            prediction_probas=names[1] if with_probas else None,
            pos_label=names[1],
        )
    else:
        task = MulticlassClassification(
            target=TARGET,
            prediction_labels=PREDICTION,
            prediction_probas=names if with_probas else None,
        )
    columns = [TARGET, PREDICTION, *(names if with_probas else [])]
    definition = DataDefinition(classification=[task], categorical_columns=[TARGET, PREDICTION])
    return Report([ClassificationPreset()]).run(
        Dataset.from_pandas(frame[columns].reset_index(drop=True), data_definition=definition),
        None,
    )


def _header(data: ReportInput, rows: dict[str, int], notes: list[str]) -> str:
    window = data.window
    lines = [
        f"**Model:** {data.model_name} {data.model_version} ({data.task})",
        f"**Window:** {window.get('since_iso') or 'the beginning'} to "
        f"{window.get('until_iso', '-')} ({window.get('mode', '-')})",
        f"**Rows:** {rows['production']} predictions, {rows['labelled']} labelled, "
        f"{rows['reference']} reference",
    ]
    lines += [f"- {note}" for note in notes]
    return "\n\n".join(lines)


def build_report(
    data: ReportInput, config: DriftConfig, pipeline: Any, *, min_labelled_rows: int
) -> ReportResult:
    """Run every part that has enough data and render them as one HTML page.

    Args:
        data: the reference and production frames.
        config: the drift tests.
        pipeline: the model version's fitted pipeline (its embedding step is used).
        min_labelled_rows: below this many labelled rows (usable ones, for regression) no
            quality number is reported, only the count and how many are needed.
    """
    notes: list[str] = []
    production = complete_rows(data.production, data.schema)
    if len(production) < len(data.production):
        notes.append(
            f"{len(data.production) - len(production)} logged rows lack some feature, or have "
            f"one that is not finite or beyond ±{FEATURE_LIMIT:g}, and were left out"
        )
    if SOURCE_COLUMN in production.columns:  # logs from before the flag have none
        batch = int((production[SOURCE_COLUMN] == BATCH).sum())
        if batch:
            notes.append(
                f"{batch} of the {len(production)} production rows were scored by batch jobs "
                f"({SOURCE_COLUMN}={BATCH}); the drift counts them like online traffic"
            )
    # Quality is the reported version's: labels of predictions another version made (before
    # a retrain or a rollback) say nothing about it.
    labelled = data.labelled
    if not labelled.empty and "model_version" in labelled.columns:
        theirs = labelled["model_version"].astype(str) != data.model_version
        if theirs.any():
            others = ", ".join(sorted(set(labelled.loc[theirs, "model_version"].astype(str))))
            notes.append(
                f"{int(theirs.sum())} labelled rows of predictions by other versions ({others}) "
                "are not in the quality of this one"
            )
            labelled = labelled.loc[~theirs]
    rows = {
        "production": len(production),
        "labelled": len(labelled),
        "reference": len(data.reference_embedding),
    }
    drift: dict[str, DriftResult] = {}
    snapshots: dict[str, Snapshot] = {}
    sections = []

    if len(production) < config.min_rows:
        notes.append(
            "no production data in the window yet"
            if production.empty
            else f"only {len(production)} production rows: drift needs at least {config.min_rows}"
        )
    else:
        current = embed_rows(pipeline, production, data.schema)
        pca = [c for c in current.columns if c in data.reference_embedding.columns]
        result, snap = drift_report(data.reference_embedding, current, pca, EMBEDDING, config)
        drift[EMBEDDING], snapshots[EMBEDDING] = result, snap
        sections.append((f"Data drift: embedding space ({len(pca)} components)", snap))
        if data.reference_raw is not None and not data.reference_raw.empty:
            try:
                result, snap = drift_report(
                    raw_features(data.reference_raw, data.schema),
                    raw_features(production, data.schema),
                    data.features,
                    RAW,
                    config,
                    categorical=data.categorical,
                )
            except ValueError as exc:
                notes.append(f"no raw-feature drift: {exc}")
            else:
                drift[RAW], snapshots[RAW] = result, snap
                kinds = list(result.column_types.values())
                sections.append(
                    (
                        f"Data drift: raw features ({kinds.count(NUMERICAL)} numerical, "
                        f"{kinds.count(CATEGORICAL)} categorical)",
                        snap,
                    )
                )
                notes += [
                    f"raw feature {col} is not tested for drift: {why}"
                    for col, why in result.untested.items()
                ]
        else:
            notes.append("the version's training data is not in the store: no raw-feature drift")

    quality = None
    quality_note: str | None
    if labelled.empty:
        quality_note = f"no labelled rows of model {data.model_version} in the window: no quality"
        notes.append(quality_note)
    else:
        regression = data.task == REGRESSION
        quality = (
            regression_quality(labelled) if regression else quality_metrics(labelled, data.classes)
        )
        quality.min_rows = min_labelled_rows
        if quality.unusable:
            notes.append(
                f"{quality.unusable} labelled rows whose label or prediction is not a number "
                "are not in the regression quality"
            )
        if quality.withheld:
            quality.withhold()
        quality_note = quality.note()
        if quality.unknown_labels:
            notes.append(
                f"labels the model does not know ({', '.join(quality.unknown_labels)}) count "
                "as misses"
            )
        if quality.roc_auc is not None and quality.roc_auc_rows < quality.rows:
            notes.append(
                f"ROC AUC on the {quality.roc_auc_rows} of {quality.rows} labelled rows that have "
                "the model's probabilities and a known true label (the others were labelled "
                "with their features)"
            )
        if quality.balanced_accuracy is not None:
            notes.append(
                f"balanced accuracy (mean per-class recall) = {quality.balanced_accuracy:.4f}"
            )
        # Evidently draws the section only; its failure on a degenerate window must cost
        # that section, never the numbers above or the drift. Below the minimum it is not
        # drawn: its numbers would be the misleading ones withheld.
        if not quality.withheld:
            title = "Regression" if regression else "Classification"
            try:
                snap = (
                    regression_snapshot(labelled)
                    if regression
                    else quality_snapshot(labelled, data.classes, quality)
                )
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}".strip()
                logger.warning("quality section left out of the report: %s", reason)
                lost = f"Evidently could not draw the quality section ({reason})"
                quality_note = f"{quality_note}; {lost}" if quality_note else lost
            else:
                snapshots["quality"] = snap
                sections.append((f"{title} quality ({quality.rows} labelled rows)", snap))
        if quality_note:
            notes.append(quality_note)

    widgets = [text_widget(title="mlplatform report", text=_header(data, rows, notes))]
    for title, snap in sections:
        widgets.append(group_widget(title=title, widgets=snap.to_snapshot_model().widgets))
    page = render_widgets(widgets, as_iframe=False)
    title = html.escape(f"mlplatform report — model {data.model_version}")
    page = page.replace("<title>", f"<title>{title} ", 1) if "<title>" in page else page
    return ReportResult(
        model_version=data.model_version,
        rows=rows,
        drift=drift,
        quality=quality,
        html=page,
        notes=notes,
        window=data.window,
        snapshots=snapshots,
        quality_note=quality_note,
        task=data.task,
        predictions=prediction_summary(production, data.task),
    )


def empty_report(reason: str, window: dict[str, Any]) -> ReportResult:
    """A report with nothing to measure (no model in production yet)."""
    page = render_widgets(
        [text_widget(title="mlplatform report", text=f"Nothing to report: {reason}.")],
        as_iframe=False,
    )
    return ReportResult(
        model_version="",
        rows={"production": 0, "labelled": 0, "reference": 0},
        drift={},
        quality=None,
        html=page,
        notes=[reason],
        window=window,
        quality_note=reason,
        task="",
    )
