"""The report itself: DataFrames in, numbers and HTML out (Evidently 0.7).

Nothing here touches the store or the network. Three Evidently reports make one page:

- data drift in embedding space (``PCA_*``), the model version's reference set against the
  production window, both embedded with that version's embedding;
- data drift on the raw features, the version's training data against the production window;
- classification quality on the labelled rows of the window (with probabilities, so ROC AUC).

The drift test is fixed explicitly (settings), never left to Evidently's size-based choice, so
a score means the same thing in every run. Numbers are read from each snapshot by metric name
and parameters (``ValueDrift`` of column ``PCA_3``), never by position. Evidently 0.7 has no
balanced accuracy; it is computed here as (TPR + TNR) / 2 (binary) or the mean per-class recall.
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
    Report,
)
from evidently.core.metric_types import render_widgets
from evidently.core.report import Snapshot
from evidently.legacy.renderers.html_widgets import group_widget, text_widget
from evidently.presets import ClassificationPreset, DataDriftPreset

from mlplatform_common.schema import FEATURE_LIMIT, complete_rows, embed, embedding_columns

logger = logging.getLogger("mlplatform.reporter")

EMBEDDING = "embedding"
RAW = "raw"
TARGET = "target"
PREDICTION = "prediction"


@dataclass(frozen=True)
class DriftConfig:
    """How drift is tested: one stat test for every column, and the share that means drift."""

    method: str = "ks"
    threshold: float = 0.05
    share_threshold: float = 0.5
    min_rows: int = 5


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


@dataclass
class QualityResult:
    """Classification quality on the labelled rows of the window."""

    rows: int
    accuracy: float
    precision: float
    recall: float
    f1: float
    balanced_accuracy: float
    roc_auc: float | None = None
    roc_auc_rows: int = 0  # the labelled rows with probabilities it is computed on


@dataclass
class ReportInput:
    """Everything one report needs, already read from the store."""

    model_version: str
    classes: list[Any]
    features: list[str]
    reference_embedding: pd.DataFrame
    """The version's ``ref_data.csv`` (``PCA_*`` and target)."""
    reference_raw: pd.DataFrame | None
    """The version's training data (raw features), or None if it is not in the store."""
    production: pd.DataFrame
    """Logged predictions of the window: raw features (``PCA_*`` is recomputed here)."""
    labelled: pd.DataFrame
    """Labelled rows of the window: ``target``, ``prediction`` and ``proba_json`` (may be NaN)."""
    window: dict[str, Any] = field(default_factory=dict)


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

    def summary(self) -> dict[str, Any]:
        """The JSON-ready summary stored beside the HTML."""
        return {
            "model_version": self.model_version,
            "window": self.window,
            "rows": self.rows,
            "drift": {space: asdict(d) for space, d in self.drift.items()},
            "quality": asdict(self.quality) if self.quality else None,
            "notes": self.notes,
        }


# -- pure data preparation ---------------------------------------------------------------------


def attach_probabilities(feedback: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """Add each labelled row's ``proba_json`` from the prediction log (by ``prediction_id``)."""
    out = feedback.copy()
    if predictions.empty or "proba_json" not in predictions.columns:
        out["proba_json"] = None
        return out
    lookup = predictions.drop_duplicates("prediction_id", keep="last").set_index("prediction_id")
    out["proba_json"] = out["prediction_id"].map(lookup["proba_json"])
    return out


def prod_data(pipeline: Any, feedback: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """The course's ``prod_data.csv``: ``PCA_1..PCA_n,target,prediction`` of every labelled row,
    embedded with the given version's embedding from the raw features that were logged."""
    rows = complete_rows(feedback, features)
    probe = pd.DataFrame(np.zeros((1, len(features))), columns=features)
    n = pipeline.named_steps["embedding"].transform(probe).shape[1]
    if rows.empty:
        return pd.DataFrame(columns=[*embedding_columns(n), TARGET, PREDICTION])
    out = embed(pipeline, rows[features]).reset_index(drop=True)
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
) -> tuple[DriftResult, Snapshot]:
    """Evidently data drift of ``columns`` with the configured stat test."""
    definition = DataDefinition(numerical_columns=columns)
    preset = DataDriftPreset(
        columns=columns,
        method=config.method,
        threshold=config.threshold,
        drift_share=config.share_threshold,
    )
    snapshot = Report([preset]).run(
        Dataset.from_pandas(current[columns].reset_index(drop=True), data_definition=definition),
        Dataset.from_pandas(reference[columns].reset_index(drop=True), data_definition=definition),
    )
    results = metric_results(snapshot)
    counted = metric_value(results, "DriftedColumnsCount")
    scores = {
        col: float(metric_value(results, "ValueDrift", column=col, method=config.method))
        for col in columns
    }
    share = float(counted["share"])
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
        ),
        snapshot,
    )


def quality_report(labelled: pd.DataFrame, classes: list[Any]) -> tuple[QualityResult, Snapshot]:
    """Evidently classification quality of the labelled rows (target vs prediction).

    Binary problems score the second class as positive, as training does.
    """
    frame, has_probas = quality_frame(labelled, classes)
    names = [str(c) for c in classes]
    binary = len(names) == 2

    def run(rows: pd.DataFrame, with_probas: bool) -> Snapshot:
        task: BinaryClassification | MulticlassClassification
        if binary:
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
            Dataset.from_pandas(rows[columns].reset_index(drop=True), data_definition=definition),
            None,
        )

    # ROC AUC needs both classes among the rows with probabilities. Rows without (labelled
    # with their features) are in every other number; ROC AUC is then on the others alone.
    scored = frame.loc[has_probas]
    roc_rows = len(scored) if scored[TARGET].nunique() >= 2 else 0
    snapshot = run(frame, with_probas=roc_rows == len(frame))
    results = metric_results(snapshot)
    roc_auc = None
    if roc_rows == len(frame):
        roc_auc = float(metric_value(results, "RocAuc"))
    elif roc_rows:
        roc_auc = float(metric_value(metric_results(run(scored, with_probas=True)), "RocAuc"))
    # (TPR + TNR) / 2; a rate with no rows to measure it on (one class only in the window) is
    # NaN and left out, as scikit-learn's balanced_accuracy_score does.
    if binary:
        rates = [float(metric_value(results, "TPR")), float(metric_value(results, "TNR"))]
    else:
        present = set(frame[TARGET])
        by_label = metric_value(results, "RecallByLabel")
        rates = [float(v) for k, v in by_label.items() if str(k) in present]
    balanced = float(np.nanmean(rates)) if not np.isnan(rates).all() else 0.0
    quality = QualityResult(
        rows=len(frame),
        accuracy=float(metric_value(results, "Accuracy")),
        precision=float(metric_value(results, "Precision")),
        recall=float(metric_value(results, "Recall")),
        f1=float(metric_value(results, "F1Score")),
        balanced_accuracy=balanced,
        roc_auc=roc_auc,
        roc_auc_rows=roc_rows if roc_auc is not None else 0,
    )
    return quality, snapshot


def _header(data: ReportInput, rows: dict[str, int], notes: list[str]) -> str:
    window = data.window
    lines = [
        f"**Model version:** {data.model_version}",
        f"**Window:** {window.get('since_iso') or 'the beginning'} to "
        f"{window.get('until_iso', '-')} ({window.get('mode', '-')})",
        f"**Rows:** {rows['production']} predictions, {rows['labelled']} labelled, "
        f"{rows['reference']} reference",
    ]
    lines += [f"- {note}" for note in notes]
    return "\n\n".join(lines)


def build_report(data: ReportInput, config: DriftConfig, pipeline: Any) -> ReportResult:
    """Run every part that has enough data and render them as one HTML page.

    Args:
        data: the reference and production frames.
        config: the drift test.
        pipeline: the model version's fitted pipeline (its embedding step is used).
    """
    notes: list[str] = []
    production = complete_rows(data.production, data.features)
    if len(production) < len(data.production):
        notes.append(
            f"{len(data.production) - len(production)} logged rows lack some feature, or have "
            f"one that is not finite or beyond ±{FEATURE_LIMIT:g}, and were left out"
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
        current = embed(pipeline, production[data.features])
        pca = [c for c in current.columns if c in data.reference_embedding.columns]
        result, snap = drift_report(data.reference_embedding, current, pca, EMBEDDING, config)
        drift[EMBEDDING], snapshots[EMBEDDING] = result, snap
        sections.append((f"Data drift: embedding space ({len(pca)} components)", snap))
        if data.reference_raw is not None and not data.reference_raw.empty:
            result, snap = drift_report(data.reference_raw, production, data.features, RAW, config)
            drift[RAW], snapshots[RAW] = result, snap
            sections.append((f"Data drift: raw features ({len(data.features)})", snap))
        else:
            notes.append("the version's training data is not in the store: no raw-feature drift")

    quality = None
    if labelled.empty:
        notes.append(f"no labelled rows of model {data.model_version} in the window: no quality")
    else:
        quality, snap = quality_report(labelled, data.classes)
        snapshots["quality"] = snap
        sections.append((f"Classification quality ({quality.rows} labelled rows)", snap))
        if quality.roc_auc is None:
            notes.append("no ROC AUC: the labelled rows with probabilities hold one class or none")
        elif quality.roc_auc_rows < quality.rows:
            notes.append(
                f"ROC AUC on the {quality.roc_auc_rows} of {quality.rows} labelled rows that have "
                "the model's probabilities (the others were labelled with their features)"
            )
        notes.append(
            f"balanced accuracy (TPR + TNR) / 2 = {quality.balanced_accuracy:.4f}"
            if len(data.classes) == 2
            else f"balanced accuracy (mean per-class recall) = {quality.balanced_accuracy:.4f}"
        )

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
    )
