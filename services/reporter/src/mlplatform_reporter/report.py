"""The report itself: DataFrames in, numbers and HTML out (Evidently 0.7).

Nothing here touches the store or the network. Three Evidently reports make one page:

- data drift in embedding space (``PCA_*``), the model version's reference set against the
  production window, both embedded with that version's embedding;
- data drift on the raw features, the version's training data against the production window;
- classification quality on the labelled rows of the window (with probabilities, so ROC AUC).

Drift numbers are read from the Evidently snapshots. Quality numbers are computed here with
scikit-learn (``quality_metrics``, which also decides which of them a window defines); the
Evidently quality preset only draws its section, and a failure there (a window of one class
predicted right) loses that section alone, never the drift or the numbers.

The drift test is fixed explicitly (settings), never left to Evidently's size-based choice, so
a score means the same thing in every run. Drift numbers are read from each snapshot by metric
name and parameters (``ValueDrift`` of column ``PCA_3``), never by position.
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


QUALITY_METRICS = ("accuracy", "precision", "recall", "f1", "balanced_accuracy", "roc_auc")
COMPLETE, PARTIAL, EMPTY = "complete", "partial", "empty"


@dataclass
class QualityResult:
    """Classification quality on the labelled rows of the window.

    A number the window cannot define is None, and ``missing`` says why (metric -> reason).
    """

    rows: int
    accuracy: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    balanced_accuracy: float | None = None
    roc_auc: float | None = None
    roc_auc_rows: int = 0  # the labelled rows with probabilities it is computed on
    missing: dict[str, str] = field(default_factory=dict)
    unknown_labels: list[str] = field(default_factory=list)

    def numbers(self) -> dict[str, float]:
        """The defined metrics only, by name (what is pushed and stored)."""
        values = {name: getattr(self, name) for name in QUALITY_METRICS}
        return {name: v for name, v in values.items() if v is not None}

    @property
    def status(self) -> str:
        """``complete`` (every metric), ``partial`` (some) or ``empty`` (none)."""
        defined = len(self.numbers())
        return COMPLETE if defined == len(QUALITY_METRICS) else PARTIAL if defined else EMPTY

    def note(self) -> str | None:
        """One line on what is left out and why; None when nothing is."""
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
}


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
    quality_note: str | None = None
    """Why quality is empty or partial, or its section is not drawn; None when all is there."""

    def summary(self) -> dict[str, Any]:
        """The JSON-ready summary stored beside the HTML.

        ``quality`` holds only the numbers the window defines (None without labelled rows);
        ``quality_status`` is ``complete``, ``partial`` or ``empty`` and ``quality_note`` says
        what is left out and why.
        """
        q = self.quality
        return {
            "model_version": self.model_version,
            "window": self.window,
            "rows": self.rows,
            "drift": {space: asdict(d) for space, d in self.drift.items()},
            "quality": (
                {"rows": q.rows, "roc_auc_rows": q.roc_auc_rows, **q.numbers()} if q else None
            ),
            "quality_status": q.status if q else EMPTY,
            "quality_note": self.quality_note,
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
    rows = complete_rows(feedback, [{"name": f} for f in features])
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
    production = complete_rows(data.production, [{"name": f} for f in data.features])
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
    quality_note: str | None
    if labelled.empty:
        quality_note = f"no labelled rows of model {data.model_version} in the window: no quality"
        notes.append(quality_note)
    else:
        quality = quality_metrics(labelled, data.classes)
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
        # that section, never the numbers above or the drift.
        try:
            snap = quality_snapshot(labelled, data.classes, quality)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}".strip()
            logger.warning("quality section left out of the report: %s", reason)
            lost = f"Evidently could not draw the quality section ({reason})"
            quality_note = f"{quality_note}; {lost}" if quality_note else lost
        else:
            snapshots["quality"] = snap
            sections.append((f"Classification quality ({quality.rows} labelled rows)", snap))
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
    )
