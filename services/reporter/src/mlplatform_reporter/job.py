"""The reporter's I/O: read the store, run the report, archive it, push its numbers.

One run:

1. load the production model version (verified) and its reference data;
2. read the window's prediction log and labelled rows;
3. build the report (``report.py``);
4. write ``production/prod_data.csv`` in the course format (``write_prod_data``), then archive
   the report (``mlplatform_common.reports``): its HTML, then its summary last (a report
   without a summary is incomplete);
5. push the numbers to the Pushgateway under ``{job="mlplatform-reporter", instance="mlplatform",
   release, namespace, model}`` (``CommonSettings.push_grouping_key``), replacing this model's
   previous run's; ``last_success`` is part of that push, so it only ever moves when a run got
   this far;
6. delete the prediction log's days past the retention, then compact its closed days (off the
   serving's core: ``datalog.compact_predictions``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from prometheus_client import CollectorRegistry, Gauge, delete_from_gateway, push_to_gateway

from mlplatform_common import datalog, datasets, keys, reports
from mlplatform_common import metric_names as m
from mlplatform_common.errors import (
    ConfigurationError,
    DatasetError,
    ModelNotFound,
    ObjectNotFound,
    StorageUnavailable,
)
from mlplatform_common.registry import LoadedModel, ModelRegistry
from mlplatform_common.reports import ReportArchive
from mlplatform_common.schema import CLASSIFICATION
from mlplatform_common.storage import Store, open_store
from mlplatform_reporter.report import (
    DriftConfig,
    ReportInput,
    ReportResult,
    attach_probabilities,
    build_report,
    empty_report,
    prod_data,
)
from mlplatform_reporter.settings import ReporterSettings

logger = logging.getLogger("mlplatform.reporter")


@dataclass
class RunOutcome:
    """What one run wrote."""

    report_id: str
    result: ReportResult
    prod_data_rows: int
    pushed: bool
    expired: dict[str, int] | None = None  # the log's day partitions and objects deleted
    compacted: dict[str, int] | None = None  # the log's closed days rewritten (compact_log)


def report_id(ts: float) -> str:
    """A sortable report id from a time: ``20260604T101500123Z`` (UTC, milliseconds)."""
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%Y%m%dT%H%M%S") + f"{moment.microsecond // 1000:03d}Z"


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


def window(settings: ReporterSettings, store: Store, now: float) -> dict[str, Any]:
    """The window of this run: the last N hours, or since the previous report."""
    if settings.window_hours > 0:
        since: float | None = now - settings.window_hours * 3600
        mode = f"last {settings.window_hours:g} hours"
    else:
        previous = ReportArchive(store).latest()
        since = (previous or {}).get("window", {}).get("until")
        mode = "since the previous report" if since else "everything (first report)"
    return {
        "since": since,
        "until": now,
        "since_iso": _iso(since),
        "until_iso": _iso(now),
        "mode": mode,
    }


def _reference_raw(store: Store, manifest: dict[str, Any]) -> pd.DataFrame:
    """The version's training data (raw features, as ``parse_dataset`` reads them: numbers as
    floats, categories as text, missing as NaN), if it is still in the store and readable."""
    name = (manifest.get("training_data") or {}).get("dataset")
    if not name:
        return pd.DataFrame()
    try:
        dataset = datasets.load(
            store, name, target=manifest.get("target"), task=manifest.get("task")
        )
    except ObjectNotFound:
        logger.warning("training data %s of the production model is not in the store", name)
        return pd.DataFrame()
    except DatasetError as exc:
        logger.warning("training data of the production model is not readable: %s", exc)
        return pd.DataFrame()
    features = [f["name"] for f in manifest["feature_schema"]]
    if any(f not in dataset.X.columns for f in features):
        logger.warning("training data %s lacks some of the model's features", name)
        return pd.DataFrame()
    return dataset.X[features]


def _production_model(settings: ReporterSettings, store: Store) -> LoadedModel | None:
    """The production version, verified and loaded; None before the first model."""
    registry = ModelRegistry(store, settings.require_signing_key())
    try:
        version = registry.production_version()
    except ModelNotFound as exc:
        logger.warning("%s", exc.message)
        return None
    return registry.load(version)


def build(
    settings: ReporterSettings, store: Store, model: LoadedModel | None, win: dict[str, Any]
) -> ReportResult:
    """Read the window's predictions and labelled rows and run the report (reads only)."""
    if model is None:
        return empty_report("no model is in production yet", win)
    logger.info(
        "report for model %s, window %s .. %s", model.version, win["since_iso"], win["until_iso"]
    )
    since, until = win["since"], win["until"]
    lookback = since - settings.feedback_lookback_hours * 3600 if since else None
    predictions = datalog.read_predictions(store, lookback, until)
    in_window = predictions if since is None else predictions[predictions["ts"] > since]
    feedback = datalog.read_feedback(store, since, until, one_per_prediction=True)
    labelled = attach_probabilities(feedback, predictions)
    logger.info("read %d predictions and %d labelled rows", len(in_window), len(labelled))

    data = ReportInput(
        model_version=model.version,
        classes=model.classes,
        schema=model.manifest["feature_schema"],
        reference_embedding=model.ref_data,
        reference_raw=_reference_raw(store, model.manifest),
        production=in_window,
        labelled=labelled,
        window=win,
        task=model.manifest.get("task", CLASSIFICATION),
        model_name=settings.model_name,
    )
    config = DriftConfig(
        method=settings.drift_method,
        threshold=settings.drift_threshold,
        share_threshold=settings.drift_share_threshold,
        min_rows=settings.min_drift_rows,
    )
    return build_report(data, config, model.pipeline, min_labelled_rows=settings.min_labelled_rows)


def write_prod_data(store: Store, model: LoadedModel) -> int:
    """Write the course's ``prod_data.csv``: every labelled row so far, in this version's
    embedding. Returns its number of rows."""
    everything = datalog.read_feedback(store, one_per_prediction=True)
    export = prod_data(model.pipeline, everything, model.manifest["feature_schema"])
    store.put(keys.PROD_DATA, export.to_csv(index=False).encode(), "text/csv")
    logger.info("wrote %s (%d rows)", keys.PROD_DATA, len(export))
    return len(export)


def archive(store: Store, result: ReportResult, rid: str) -> None:
    """Write ``report.html``, then ``summary.json`` (the marker of a complete report)."""
    ReportArchive(store).write(rid, result.html, {"id": rid, **result.summary()})
    logger.info("wrote %s", keys.report_file(rid, reports.HTML))


QUALITY_GAUGES = {
    "f1": (m.MODEL_F1, "F1"),
    "precision": (m.MODEL_PRECISION, "Precision"),
    "recall": (m.MODEL_RECALL, "Recall"),
    "accuracy": (m.MODEL_ACCURACY, "Accuracy"),
    "balanced_accuracy": (m.MODEL_BALANCED_ACCURACY, "Balanced accuracy"),
    "roc_auc": (m.MODEL_ROC_AUC, "ROC AUC"),
    "mae": (m.MODEL_MAE, "Mean absolute error (target units)"),
    "rmse": (m.MODEL_RMSE, "Root mean squared error (target units)"),
    "r2": (m.MODEL_R2, "R² (coefficient of determination)"),
    "mape": (m.MODEL_MAPE, "Mean absolute percentage error (a fraction: 0.2 is 20%)"),
}
"""Each quality number's gauge: ``mlplatform_model_<metric>``, as the classification ones
always were, every one labelled with the task."""


def metrics_registry(result: ReportResult, success_ts: float) -> CollectorRegistry:
    """The report's numbers as Prometheus gauges (docs/architecture.md, "Metric names"), each
    labelled with the model's task (``classification`` or ``regression``) but the success
    time; an empty ``task`` (no model yet) is no label."""
    reg = CollectorRegistry()
    task = result.task
    rows = Gauge(
        m.REPORT_ROWS,
        "Rows in the last report, by data set.",
        ["dataset", "task"],
        registry=reg,
    )
    for dataset, n in result.rows.items():
        rows.labels(dataset=dataset, task=task).set(n)
    if result.drift:
        share = Gauge(
            m.DRIFT_SHARE,
            "Share of drifted columns in the last report.",
            ["space", "task"],
            registry=reg,
        )
        count = Gauge(
            m.DRIFTED_COLUMNS,
            "Drifted columns in the last report.",
            ["space", "task"],
            registry=reg,
        )
        score = Gauge(
            m.FEATURE_DRIFT_SCORE,
            "Per-column drift score of the column type's fixed stat test (ks and chisquare: "
            "p-value, lower is more drift), the test in `method`.",
            ["feature", "space", "method", "task"],
            registry=reg,
        )
        for space, drift in result.drift.items():
            share.labels(space=space, task=task).set(drift.share)
            count.labels(space=space, task=task).set(drift.drifted_columns)
            for feature, value in drift.scores.items():
                kind = drift.column_types.get(feature, "numerical")
                method = (drift.tests.get(kind) or {}).get("method", drift.method)
                score.labels(feature=feature, space=space, method=method, task=task).set(value)
    if result.quality is not None:
        # Only the numbers the window defines: an undefined one pushed as 0 would read as a
        # model that got everything wrong (and fire the quality alert and trigger). Below the
        # minimum of labelled rows there are none.
        for key, value in result.quality.numbers().items():
            name, what = QUALITY_GAUGES[key]
            Gauge(
                name, f"{what} on the labelled rows of the last report.", ["task"], registry=reg
            ).labels(task=task).set(value)
    Gauge(m.REPORT_LAST_SUCCESS, "When the last report succeeded (Unix time).", registry=reg).set(
        success_ts
    )
    return reg


def push(settings: ReporterSettings, reg: CollectorRegistry) -> bool:
    """Replace this job's group on the Pushgateway; False when pushing is switched off."""
    if not settings.pushgateway_url:
        logger.info("no Pushgateway configured: metrics not pushed")
        return False
    try:
        push_to_gateway(
            settings.pushgateway_url,
            job=m.REPORTER_JOB,
            grouping_key=settings.push_grouping_key(),
            registry=reg,
            timeout=settings.push_timeout_seconds,
        )
    except OSError as exc:
        raise StorageUnavailable(
            f"Pushgateway {settings.pushgateway_url} did not take the metrics: {exc}"
        ) from None
    logger.info("pushed metrics to %s", settings.pushgateway_url)
    if legacy := settings.legacy_push_grouping_key():
        try:  # best effort: the numbers are pushed; a stale old group is not worth a failure
            delete_from_gateway(
                settings.pushgateway_url,
                job=m.REPORTER_JOB,
                grouping_key=legacy,
                timeout=settings.push_timeout_seconds,
            )
        except OSError as exc:
            logger.warning("could not delete the group pushed before model names: %s", exc)
    return True


def send_to_evidently_ui(settings: ReporterSettings, result: ReportResult) -> None:
    """Add the snapshots to a project of an Evidently UI, as the course's ``evidently ui``."""
    if not settings.evidently_ui_url or not result.snapshots:
        return
    from evidently.ui.workspace import RemoteWorkspace

    workspace = RemoteWorkspace(settings.evidently_ui_url)
    projects = workspace.search_project(settings.evidently_project)
    project = projects[0] if projects else workspace.create_project(settings.evidently_project)
    for part, snapshot in result.snapshots.items():
        workspace.add_run(project.id, snapshot, name=f"{result.model_version} {part}")
    logger.info("added %d snapshots to Evidently UI", len(result.snapshots))


def run(
    settings: ReporterSettings, *, store: Store | None = None, now: float | None = None
) -> RunOutcome:
    """One report: build, archive, push, then drop the log's expired days. Raises on any
    failure (nothing is pushed then)."""
    now = time.time() if now is None else now
    check_retention(settings)
    store = store or open_store(settings, ensure=True)
    win = window(settings, store, now)
    model = _production_model(settings, store)
    result = replace(build(settings, store, model, win), model_name=settings.model_name)
    exported = write_prod_data(store, model) if model is not None else 0
    rid = report_id(now)
    archive(store, result, rid)
    try:
        send_to_evidently_ui(settings, result)
    except Exception as exc:  # an optional dashboard must not fail the report
        logger.warning("Evidently UI at %s: %s", settings.evidently_ui_url, exc)
    pushed = push(settings, metrics_registry(result, time.time()))
    expired = expire_log(settings, store, now)
    return RunOutcome(rid, result, exported, pushed, expired, compact_log(settings, store, now))


def check_retention(settings: ReporterSettings) -> None:
    """Refuse a log retention shorter than what a report reads."""
    keep, floor = settings.log_retention_days, settings.retention_floor_days()
    if keep < 0 or 0 < keep < floor:
        raise ConfigurationError(
            f"MLPLATFORM_LOG_RETENTION_DAYS: {keep:g} days would delete rows a report still "
            f"reads; use 0 (keep every day) or at least {floor:g} (the window "
            f"{settings.window_hours:g} h + the feedback lookback "
            f"{settings.feedback_lookback_hours:g} h + one day partition)"
        )


def expire_log(settings: ReporterSettings, store: Store, now: float) -> dict[str, int] | None:
    """Delete the prediction log's day partitions older than the retention (None: kept); the
    retention was checked when the run began (``check_retention``)."""
    if not settings.log_retention_days:
        return None
    dropped = datalog.drop_expired_predictions(store, settings.log_retention_days, now)
    if dropped["partitions"]:
        logger.info(
            "prediction log: deleted %d day partitions (%d objects) older than %g days",
            dropped["partitions"],
            dropped["objects"],
            settings.log_retention_days,
        )
    return dropped


def compact_log(settings: ReporterSettings, store: Store, now: float) -> dict[str, int] | None:
    """Rewrite the prediction log's closed days as ZSTD objects (None: switched off). After the
    retention, so no expired day is rewritten first."""
    if not settings.log_compact:
        return None
    done = datalog.compact_predictions(store, now, max_rows=settings.log_compact_rows)
    if done["days"]:
        logger.info(
            "prediction log: compacted %d closed days (%d batches into %d objects; %d left "
            "by a stopped compaction deleted)",
            done["days"],
            done["batches"],
            done["objects"],
            done["leftovers"],
        )
    return done


def describe(outcome: RunOutcome) -> str:
    """A short summary for the terminal."""
    r = outcome.result
    lines = [
        f"report {outcome.report_id} (model {r.model_name} {r.model_version or '-'}, "
        f"{r.task or '-'}): "
        f"{r.rows['production']} predictions, {r.rows['labelled']} labelled"
    ]
    for space, d in r.drift.items():
        flag = "DRIFT" if d.detected else "no drift"
        lines.append(
            f"  drift {space}: {d.drifted_columns} columns, share {d.share:.2f} ({flag}; "
            f"{d.method}, column threshold {d.threshold}, share threshold {d.share_threshold})"
        )
    if r.quality:
        numbers = " ".join(f"{k}={v:.3f}" for k, v in r.quality.numbers().items())
        lines.append(
            f"  quality ({r.quality.status}, {r.quality.rows} labelled rows, at least "
            f"{r.quality.min_rows}): {numbers or '-'}"
        )
    lines += [f"  note: {n}" for n in r.notes]
    lines.append(f"  prod_data.csv: {outcome.prod_data_rows} rows; pushed: {outcome.pushed}")
    if outcome.expired is not None:
        lines.append(
            f"  prediction log: {outcome.expired['partitions']} expired day partitions deleted"
        )
    if outcome.compacted is not None and outcome.compacted["days"]:
        c = outcome.compacted
        lines.append(
            f"  prediction log: {c['days']} closed days compacted ({c['batches']} batches into "
            f"{c['objects']} objects)"
        )
    return "\n".join(lines)
