"""One retrain run: triggers, lock, candidate training, the gate, publishing and rollout.

``run`` is what the CronJob (and serving, every k labelled rows) starts. It holds the store
lock for its whole duration, so at most one retrain runs at a time. ``retrain`` is its steps:
gather the candidate's data (``_labelled_rows``, ``_candidate_data``), train, score and gate
(``_score_and_gate``), publish and promote (``_publish_and_promote``), mark the rows answered
(``_write_watermark``), roll out (``_roll_out_or_restore``); ``run`` then records the run
(``_write_run_record``, ``_count_and_push_metrics``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import sklearn.base
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    delete_from_gateway,
    push_to_gateway,
)

from mlplatform_common import datalog, datasets, keys
from mlplatform_common import metric_names as names
from mlplatform_common.errors import (
    ConfigurationError,
    MLPlatformError,
    ModelNotFound,
    ObjectNotFound,
)
from mlplatform_common.lock import LockHeld, StoreLock
from mlplatform_common.quality import HIGHER_IS_BETTER, better
from mlplatform_common.registered import RegisteredModel, raw_rows
from mlplatform_common.registry import LoadedModel, ModelRegistry, utcnow, version_number
from mlplatform_common.reports import ReportArchive
from mlplatform_common.schema import (
    CLASSIFICATION,
    FEATURE_LIMIT,
    REGRESSION,
    Dataset,
    complete_rows,
    encode,
    encoded_frame,
    feature_schema,
)
from mlplatform_common.storage import Store, open_store
from mlplatform_retrainer import register as registration
from mlplatform_retrainer.gate import (
    BASELINE_PRODUCTION,
    BASELINE_REFIT,
    HOLDOUT_ALL,
    HOLDOUT_LABELLED,
    MIN_LABELLED_HOLDOUT,
    GateResult,
    decide,
    recent_split,
)
from mlplatform_retrainer.job import publish, train_with_progress
from mlplatform_retrainer.rollout import RolloutFailed, roll_out, served_version
from mlplatform_retrainer.settings import RetrainerSettings
from mlplatform_retrainer.train import (
    DEFAULT_ESTIMATOR,
    ESTIMATORS,
    Splits,
    TrainConfig,
    TrainingResult,
    evaluate,
    split,
)

logger = logging.getLogger("mlplatform.retrainer")

CLASSIFICATION_QUALITY_THRESHOLD = 0.8
"""The quality trigger's default for classification: the report's metric below it."""
REGISTERED = "registered"
"""A manifest's ``origin`` for a model trained elsewhere (``mlplatform register``) and its
refits."""


@dataclass
class RunResult:
    """What one run did."""

    outcome: str  # promoted | held | rejected | skipped | locked
    reasons: list[str] = field(default_factory=list)
    version: str | None = None
    production: str | None = None
    gate: GateResult | None = None
    rollout: str | None = None
    new_rows: int = 0
    rollout_error: str | None = None
    followed: str | None = None
    """The version the alias was moved to because the Deployment serves it (rollout undo)."""
    metric: str | None = None
    """The metric the quality trigger and the gate compared by, for the production's task."""
    model: str = keys.DEFAULT_MODEL
    """The named model the run worked on (``CommonSettings.model_name``)."""

    def describe(self) -> str:
        parts = [f"retrain {self.outcome} (model {self.model})"]
        if self.followed:
            parts.append(f"production alias moved to {self.followed}, which serving runs")
        if self.reasons:
            parts.append("trigger: " + "; ".join(self.reasons))
        if self.gate:
            parts.append(self.gate.reason)
        if self.version:
            parts.append(
                f"published {self.version}"
                + (f", rolled out ({self.rollout})" if self.rollout else "")
            )
        return " | ".join(parts)


def _since(store: Store, registry: ModelRegistry) -> float:
    """Labelled rows after this time are new: the watermark, else the production training."""
    try:
        return float(store.get_json(keys.WATERMARK)["feedback_until"])
    except (ObjectNotFound, KeyError, TypeError, ValueError):
        pass
    try:
        manifest = registry.manifest(registry.production_version())
        return datetime.fromisoformat(manifest["created_at"]).timestamp()
    except ModelNotFound:
        return 0.0


def _acted_on(store: Store) -> str | None:
    """The report whose numbers the last retrain already answered (in the watermark)."""
    try:
        report_id = store.get_json(keys.WATERMARK).get("report_id")
    except (ObjectNotFound, AttributeError, ValueError):
        return None
    return str(report_id) if report_id is not None else None


def triggers(
    settings: RetrainerSettings, store: Store, registry: ModelRegistry, force: bool
) -> tuple[list[str], int, str | None]:
    """Every reason to retrain now, how many labelled rows are new, and the latest report's
    id. A report triggers once: a retrain after it has answered it, whatever its outcome,
    and the next report (on the data since) decides again."""
    reasons = ["forced"] if force else []
    new_rows = datalog.count_feedback(store, _since(store, registry))
    k = settings.retrain_every
    if k > 0 and new_rows >= k:
        reasons.append(f"{new_rows} new labelled rows (k={k})")
    report = ReportArchive(store).latest()
    report_id = str(report["id"]) if report and report.get("id") is not None else None
    if report and report_id is not None and report_id == _acted_on(store):
        logger.info("report %s was answered by a retrain already", report_id)
    elif report:
        drift = report.get("drift") or {}
        space = drift.get("embedding") or next(iter(drift.values()), None)
        share = space.get("share") if isinstance(space, dict) else None
        if share is not None and share > settings.drift_threshold:
            reasons.append(
                f"drift share {share:.2f} > {settings.drift_threshold} in report {report.get('id')}"
            )
        quality = report.get("quality") or {}
        reason = _quality_trigger(settings, registry, quality, report.get("id"))
        if reason:
            reasons.append(reason)
    return reasons, new_rows, report_id


def production_task(registry: ModelRegistry) -> str:
    """The task of the version in production (versions published before tasks classified)."""
    try:
        manifest = registry.manifest(registry.production_version())
    except ModelNotFound:
        return CLASSIFICATION
    return str(manifest.get("task") or CLASSIFICATION)


def quality_threshold(
    settings: RetrainerSettings, task: str, metric: str, manifest: dict[str, Any] | None
) -> float | None:
    """The value of ``metric`` the quality trigger fires beyond: ``quality_threshold`` if set;
    else 0.8 for classification; for regression the production version's test value made
    ``quality_degradation`` worse (x(1 + d) for an error, x(1 - d) for a score); None when
    the manifest has no test value of the metric."""
    if settings.quality_threshold is not None:
        return settings.quality_threshold
    if task == CLASSIFICATION:
        return CLASSIFICATION_QUALITY_THRESHOLD
    test = ((manifest or {}).get("metrics") or {}).get("test") or {}
    if test.get(metric) is None:
        return None
    d = settings.quality_degradation
    return float(test[metric]) * ((1 - d) if HIGHER_IS_BETTER[metric] else (1 + d))


def _quality_trigger(
    settings: RetrainerSettings, registry: ModelRegistry, quality: dict[str, Any], report: Any
) -> str | None:
    """Why the report's quality triggers a retrain (worse than the threshold in the metric's
    direction), or None."""
    try:
        manifest: dict[str, Any] | None = registry.manifest(registry.production_version())
    except ModelNotFound:
        manifest = None
    task = str((manifest or {}).get("task") or CLASSIFICATION)
    metric = settings.metric_for(task)
    value = quality.get(metric)
    threshold = quality_threshold(settings, task, metric, manifest)
    if value is None or threshold is None or better(metric, value, threshold):
        return None
    sign = "<" if HIGHER_IS_BETTER[metric] else ">"
    return f"{metric} {value:.3f} {sign} {threshold:.4g} in report {report}"


def _gate_of_this_line(
    manifest: dict[str, Any], metric: str, dataset_sha: str, seed: int
) -> dict[str, Any] | None:
    """The manifest's gate if this code's gate recorded it on the same reference test split
    (data set, seed, metric) with that split's rows kept out of training; else None. Gates
    recorded before the split's rows were kept out may be inflated: they end a line, as do a
    registered line's (their reference scores are against a baseline refit, not a version)."""
    gate = manifest.get("gate") or {}
    data = manifest.get("training_data") or {}
    same = (
        gate.get("metric") == metric
        and gate.get("reference_baseline", BASELINE_PRODUCTION) == BASELINE_PRODUCTION
        and data.get("sha256") == dataset_sha
        and data.get("split_seed") == seed
        and data.get("held_out_excluded") is True
    )
    return gate if same else None


def line_best(
    registry: ModelRegistry, version: str, metric: str, dataset_sha: str, seed: int
) -> float | None:
    """The best reference-part score of ``version``'s line in ``metric``'s direction (the
    highest score, the lowest error): the scores its gates recorded, back through its parents
    to a fresh training (whose score its child's gate measured); None when no gate of the
    line recorded one."""
    scores: list[float] = []
    child: dict[str, Any] | None = None  # the gate of the version before, in the walk
    seen: set[str] = set()
    current: str | None = version
    while current is not None and current not in seen:
        seen.add(current)
        try:
            manifest = registry.manifest(current)
        except MLPlatformError:
            break  # deleted or unreadable: the line is known up to here
        gate = _gate_of_this_line(manifest, metric, dataset_sha, seed)
        if child is not None and (gate is not None or not manifest.get("gate")):
            scores.append(float(child["reference_current"]))  # this version, as measured
        if gate is None:
            break
        scores.append(float(gate["reference_candidate"]))
        child, current = gate, manifest.get("parent")
    best: float | None = None
    for score in scores:
        if best is None or not better(metric, best, score):
            best = score
    return best


def _reference(store: Store, dataset_name: str, task: str) -> Dataset:
    """The reference data set, parsed with the task its store meta says (``task`` for data
    sets uploaded before tasks were kept)."""
    try:
        return datasets.load(store, dataset_name, task=task)
    except ObjectNotFound:
        raise ModelNotFound(
            f"reference data set {dataset_name!r} is not in the store "
            "(train a first model: make train)"
        ) from None


def _count_and_push_metrics(
    settings: RetrainerSettings, store: Store, result: RunResult, success: bool
) -> None:
    """Count the run's outcome in the store (the lock makes this safe) and push the counts to
    the Pushgateway."""
    try:
        stats: dict[str, Any] = store.get_json(keys.RETRAIN_STATS)
    except ObjectNotFound:
        stats = {}
    stats[result.outcome] = int(stats.get(result.outcome, 0)) + 1
    store.put_json(keys.RETRAIN_STATS, stats)
    if not settings.pushgateway_url:
        return
    registry = CollectorRegistry()
    runs = Counter(names.RETRAIN_RUNS, "Retrain runs by outcome", ["outcome"], registry=registry)
    for outcome in ("promoted", "held", "rejected", "skipped", "locked", "failed"):
        runs.labels(outcome).inc(int(stats.get(outcome, 0)))
    if result.production:
        Gauge(names.MODEL_VERSION_NUMBER, "Production model version number", registry=registry).set(
            version_number(result.production)
        )
    if success:
        Gauge(names.RETRAIN_LAST_SUCCESS, "Last successful retrain run", registry=registry).set(
            time.time()
        )
    try:
        push_to_gateway(
            settings.pushgateway_url,
            job=names.RETRAINER_JOB,
            grouping_key=settings.push_grouping_key(),
            registry=registry,
            timeout=10,
        )
    except OSError as exc:
        logger.warning("could not push metrics to %s: %s", settings.pushgateway_url, exc)
        return
    if legacy := settings.legacy_push_grouping_key():
        try:  # the group pushed before model names (CommonSettings.legacy_push_grouping_key)
            delete_from_gateway(
                settings.pushgateway_url, job=names.RETRAINER_JOB, grouping_key=legacy, timeout=10
            )
        except OSError as exc:
            logger.warning("could not delete the group pushed before model names: %s", exc)


def _write_run_record(store: Store, result: RunResult) -> None:
    record = {
        "at": utcnow(),
        "model": result.model,
        "outcome": result.outcome,
        "reasons": result.reasons,
        "version": result.version,
        "production": result.production,
        "new_rows": result.new_rows,
        "metric": result.metric,
        "direction": (
            None
            if result.metric is None
            else "higher is better"
            if HIGHER_IS_BETTER[result.metric]
            else "lower is better"
        ),
        "gate": asdict(result.gate) if result.gate else None,
        "rollout": result.rollout,
        "followed": result.followed,
    }
    store.put_json(keys.retrain_run(datetime.now().strftime("%Y%m%dT%H%M%S%f")), record)


def _write_watermark(
    store: Store, feedback: pd.DataFrame, outcome: str, report_id: str | None
) -> None:
    """Mark the labelled rows up to the newest read, and the latest report, as answered by this
    run (they trigger no other)."""
    newest = float(feedback["ts"].max()) if not feedback.empty else time.time()
    store.put_json(
        keys.WATERMARK,
        {
            "feedback_until": newest,
            "rows": len(feedback),
            "at": utcnow(),
            "outcome": outcome,
            "report_id": report_id,
        },
    )


@dataclass
class CandidateData:
    """What a candidate is trained on and gated with."""

    training: Dataset
    """The reference rows outside its test split (first), and the older labelled rows."""
    hold_X: pd.DataFrame
    """The gate's holdout: the reference test split and the newest labelled rows; for a
    registered line the newest labelled rows alone (``holdout``)."""
    hold_y: pd.Series
    reference_X: pd.DataFrame
    """The reference test split alone (``line_best`` compares versions on it)."""
    reference_y: pd.Series
    reference_rows: int
    feedback_rows: int
    holdout: str = HOLDOUT_ALL
    """Which rows ``hold_X`` is (``gate.HOLDOUT_ALL`` or ``gate.HOLDOUT_LABELLED``)."""
    baseline: RegisteredModel | None = None
    """What the candidate is compared with on the reference part instead of production (a
    registered line's refit on the reference rows alone, ``_refit``); None: production."""


def _rows_of(frame: pd.DataFrame, rows: pd.DataFrame, schema: list[dict[str, Any]]) -> Any:
    """Which rows of ``frame`` are rows of ``rows`` (a boolean array): compared encoded by the
    schema, a missing cell equal to a missing cell (NaN is never equal to itself)."""
    if frame.empty or rows.empty:
        return np.zeros(len(frame), dtype=bool)

    def index(part: pd.DataFrame) -> pd.MultiIndex:
        encoded = pd.DataFrame(encode(part, schema)).fillna(np.inf)  # inf: never a feature
        return pd.MultiIndex.from_frame(encoded)

    return np.asarray(index(frame).isin(index(rows)))


def _labelled_rows(
    store: Store, schema: list[dict[str, Any]], reference_test: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every labelled row (the run answers them all), and those a candidate may train on."""
    feedback = datalog.read_feedback(store, one_per_prediction=True)
    # Rows labelled for another feature set (a data set change), or with a value no model can
    # train on (stored before the API refused them), cannot be used.
    usable = complete_rows(feedback, schema)
    if len(usable) < len(feedback):
        logger.warning(
            "left out %d of %d labelled rows: a feature missing, not finite or beyond ±%g",
            len(feedback) - len(usable),
            len(feedback),
            FEATURE_LIMIT,
        )
    # A labelled row that is a row of the reference test split (the traffic simulator replays
    # that split) would put the gate's held-out rows into training: not trained on.
    leak = _rows_of(usable, reference_test, schema)
    if leak.any():
        logger.info(
            "left out %d labelled rows that are rows of the reference test split (the gate "
            "holds them out)",
            int(leak.sum()),
        )
        usable = usable.loc[~leak]
    return feedback, usable


def _candidate_data(
    settings: RetrainerSettings,
    reference: Dataset,
    ref_parts: Splits,
    usable: pd.DataFrame,
    current: LoadedModel,
    registered: bool,
) -> CandidateData:
    """The reference rows and the usable labelled rows, split into training and holdout: the
    newest labelled rows are held out with the reference test split, or alone for a
    ``registered`` line (its user fitted it on that split too: ``gate.HOLDOUT_LABELLED``)."""
    ref_pool_X = pd.concat([ref_parts.X_train, ref_parts.X_val])
    ref_pool_y = pd.concat([ref_parts.y_train, ref_parts.y_val])
    # As read: numbers (complete_rows made them floats), category text, NaN for missing.
    fb_X = usable[current.features].reset_index(drop=True)
    if reference.task == REGRESSION:
        # Stored as text ("151.0"): a value that is not a number cannot train.
        fb_y = pd.to_numeric(usable["target"], errors="coerce").astype(float)
    else:
        fb_y = pd.Series(
            [datalog.label_of(t, current.classes) for t in usable["target"]],
            dtype=reference.y.dtype,
        )
    fb_y = fb_y.reset_index(drop=True)
    known = fb_y.notna().to_numpy()
    if not known.all():
        logger.warning(
            "left out %d labelled rows whose target is not a number", int((~known).sum())
        )
        fb_X, fb_y = fb_X.loc[known].reset_index(drop=True), fb_y.loc[known].reset_index(drop=True)
        usable = usable.loc[known]
    fb_ts = usable["ts"].astype(float).reset_index(drop=True)
    train_fb_X, train_fb_y, hold_fb_X, hold_fb_y = recent_split(
        fb_X, fb_y, fb_ts, settings.holdout_feedback_share
    )
    logger.info(
        "candidate: %d reference + %d labelled rows for training; holdout %d + %d rows",
        len(ref_pool_X),
        len(train_fb_X),
        len(ref_parts.X_test),
        len(hold_fb_X),
    )
    training = Dataset(
        name=reference.name,
        X=pd.concat([ref_pool_X, train_fb_X], ignore_index=True),
        y=pd.concat([ref_pool_y, train_fb_y], ignore_index=True),
        target=reference.target,
        task=reference.task,
        class_names=reference.class_names,
        sha256=reference.sha256,
        raw=b"",
    )
    hold = ([] if registered else [(ref_parts.X_test, ref_parts.y_test)]) + [(hold_fb_X, hold_fb_y)]
    return CandidateData(
        training=training,
        hold_X=pd.concat([X for X, _ in hold], ignore_index=True),
        hold_y=pd.concat([y for _, y in hold], ignore_index=True),
        reference_X=ref_parts.X_test,
        reference_y=ref_parts.y_test,
        reference_rows=len(ref_pool_X),
        feedback_rows=len(train_fb_X),
        holdout=HOLDOUT_LABELLED if registered else HOLDOUT_ALL,
    )


def _score_and_gate(
    settings: RetrainerSettings,
    registry: ModelRegistry,
    production: str,
    current: LoadedModel,
    candidate: TrainingResult | registration.Wrapped,
    data: CandidateData,
    seed: int,
) -> GateResult:
    """Score the candidate and production on the holdout and on the reference test split, and
    decide whether the candidate may replace production."""

    def scores(model: Any, schema: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
        # Each version encodes rows by its own schema (its categories may differ).
        return {
            "holdout": evaluate(model, encoded_frame(data.hold_X, schema), data.hold_y, task),
            "reference": evaluate(
                model, encoded_frame(data.reference_X, schema), data.reference_y, task
            ),
        }

    task = data.training.task
    metric = settings.metric_for(task)
    current_scores = scores(current.pipeline, current.manifest["feature_schema"])
    if data.baseline is not None:
        current_scores["reference"] = scores(data.baseline, data.baseline.schema)["reference"]
    gate = decide(
        scores(candidate.pipeline, candidate.schema),
        current_scores,
        metric,
        settings.gate_tolerance,
        len(data.hold_X),
        # A registered line's reference part is measured against its baseline, not its
        # versions: there is no line of scores on it to keep from sliding.
        reference_best=None
        if data.baseline is not None
        else line_best(registry, production, metric, data.training.sha256, seed),
        holdout=data.holdout,
        reference_baseline=BASELINE_PRODUCTION if data.baseline is None else BASELINE_REFIT,
    )
    logger.info("gate %s", gate.reason)
    return gate


def _publish_and_promote(
    registry: ModelRegistry,
    result: RunResult,
    gate: GateResult,
    candidate: TrainingResult | registration.Wrapped,
    data: CandidateData,
    config: TrainConfig,
    hold: dict[str, Any] | None,
) -> dict[str, Any] | None:
    """Publish the candidate that passed the gate and, unless production is held, move the
    alias to it (``result`` says which). Returns the alias as it was before the promotion
    (None if not promoted)."""
    production, reasons = result.production, result.reasons
    extra = {
        "trigger": reasons,
        "gate": asdict(gate),
        "training_data": {
            "dataset": data.training.name,
            "sha256": data.training.sha256,
            "rows": len(data.training.X),
            "reference_rows": data.reference_rows,
            "feedback_rows": data.feedback_rows,
            # the gate's reference rows were kept out (line_best trusts only this)
            "held_out_excluded": True,
            "split_seed": config.seed,
            "holdout": data.holdout,
        },
    }
    if isinstance(candidate, registration.Wrapped):
        version = _publish_refit(registry, candidate, data, production, extra)
    else:
        version = publish(
            registry, candidate, data.training, config, parent=production, extra=extra
        )
    result.version = version
    if hold:
        # A rollback or a pin holds: the candidate is kept for review, not promoted.
        result.reasons = [
            *reasons,
            f"held: {hold.get('reason')}; {version} is kept for review "
            f"(promote it: python -m mlplatform_retrainer promote {version}; "
            "let automation promote again: ... unpin)",
        ]
        return None
    before = registry.production()
    registry.promote(version)
    result.production = version
    return before


def _refit(
    settings: RetrainerSettings, current: LoadedModel, data: CandidateData
) -> tuple[registration.Wrapped | None, CandidateData, str | None]:
    """A ``sklearn.base.clone`` of the registered production model fitted on the candidate's
    rows (in the user's column order, category text as it takes them), wrapped as register
    wraps it; or why it cannot be. Labels become the model's classes (a CSV's "1" is 1)."""
    task = data.training.task
    if task == CLASSIFICATION:
        classes = current.manifest["classes"]
        training = replace(data.training, y=registration.as_classes(data.training.y, classes))
        data = replace(
            data,
            training=training,
            hold_y=registration.as_classes(data.hold_y, classes),
            reference_y=registration.as_classes(data.reference_y, classes),
        )
    X = data.training.X[current.features]
    schema = feature_schema(X)  # a labelled row's new category is one the refit learns
    rows = raw_rows(encoded_frame(X, schema), schema)
    n_reference = data.reference_rows  # the training rows start with the reference rows
    try:
        model = sklearn.base.clone(current.pipeline.model)
        model.fit(rows, data.training.y)
        # The gate's baseline on the reference test split, which production was fitted on:
        # the same clone fitted on the reference rows alone shows what the labels changed.
        baseline = sklearn.base.clone(current.pipeline.model)
        baseline.fit(rows.iloc[:n_reference], data.training.y.iloc[:n_reference])
    except Exception as exc:  # the user's code: whatever it raises, production stays
        text = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        return None, data, f"refitting a clone of it raised {text}"
    data = replace(data, baseline=RegisteredModel(baseline, schema, None))
    # A new embedding, fitted on the training rows: the registered one is over the production
    # model's transform steps, which the refit replaced (its one-hot columns may differ).
    wrapped = registration.wrap(
        model, X, data.training.y, task, settings.n_components, settings.seed
    )
    return wrapped, data, None


def _publish_refit(
    registry: ModelRegistry,
    candidate: registration.Wrapped,
    data: CandidateData,
    production: str | None,
    extra: dict[str, Any],
) -> str:
    """Publish a refit of a registered version as register publishes one, its child."""
    manifest = registry.manifest(production) if production else {}
    task = candidate.task
    holdout = encoded_frame(data.hold_X, candidate.schema)
    files, fields = registration.version_files(
        candidate,
        data.training,
        metrics={
            "training": evaluate(candidate.model, candidate.Xe, candidate.y, task),
            "test": evaluate(candidate.model, holdout, data.hold_y, task),
        },
        fields={
            "parent": production,
            "refit_of": production,
            "format": manifest.get("format"),
            "source_file": manifest.get("source_file"),
            **extra,
        },
    )
    return registry.publish(files, fields)


def _not_refittable(current: LoadedModel) -> str | None:
    """Why the registered production version cannot be refitted, as register recorded it."""
    check = current.manifest.get("retrain") or {}
    if check.get("clone") is False:
        return f"sklearn.base.clone refused it when it was registered ({check.get('reason')})"
    return None


def _roll_out_or_restore(
    settings: RetrainerSettings,
    registry: ModelRegistry,
    result: RunResult,
    version: str,
    previous: str,
    before: dict[str, Any] | None,
) -> None:
    """Roll the promoted ``version`` out. When a Kubernetes rollout fails the Deployment still
    runs ``previous``, so the alias is restored to ``before`` to say so too; the failure is
    kept in ``result`` (``run`` records, pushes and then raises it)."""
    try:
        result.rollout = roll_out(settings, version, registry.signature(version), previous)
    except RolloutFailed as exc:
        if settings.resolved_rollout() == "kubernetes" and before is not None:
            registry.restore(before)
            result.production = previous
            where = f"published, and production stays {previous}"
        else:
            where = (
                "published and in production; serving loads it when it restarts "
                "(`make rollback` undoes the promotion)"
            )
        result.rollout_error = f"{exc.message} -- {version} is {where}"
        result.rollout = "failed"


def _estimator(settings: RetrainerSettings, task: str, manifest: dict[str, Any]) -> str | None:
    """The candidate's estimator: the setting when it is one of the task's, else the one the
    production version was trained with (one install's setting names a classifier, and a
    regression data set may be in production)."""
    if settings.estimator is None or settings.estimator in ESTIMATORS[task]:
        return settings.estimator
    kept = manifest.get("estimator")
    kept = kept if kept in ESTIMATORS[task] else None
    logger.warning(
        "MLPLATFORM_ESTIMATOR=%s is no %s estimator: the candidate is a %s, as production",
        settings.estimator,
        task,
        kept or DEFAULT_ESTIMATOR[task],
    )
    return kept


def retrain(
    settings: RetrainerSettings,
    store: Store,
    registry: ModelRegistry,
    reasons: list[str],
    new_rows: int,
    report_id: str | None = None,
) -> RunResult:
    """Train a candidate on reference + labelled rows, gate it, publish and roll out.
    ``report_id``: the latest report, answered by this retrain (it triggers no other)."""
    production = registry.production_version()
    current = registry.load(production)
    task = str(current.manifest.get("task") or CLASSIFICATION)
    settings.metric_for(task)  # a metric of another task fails the run before it trains
    data_name = (current.manifest.get("training_data") or {}).get("dataset")
    reference = _reference(store, data_name or settings.dataset_name, task)
    if reference.task != task:
        raise ConfigurationError(
            f"reference data set {reference.name!r} is a {reference.task} data set, "
            f"production {production} a {task} model: train a first model of it (make train)"
        )
    config = TrainConfig(
        n_components=settings.n_components,
        estimator=_estimator(settings, task, current.manifest),
        seed=settings.seed,
    )
    ref_parts = split(reference.X, reference.y, config, task=task)

    feedback, usable = _labelled_rows(store, current.manifest["feature_schema"], ref_parts.X_test)
    if usable.empty and "forced" not in reasons:
        # The candidate would be the production model again (same data, same seed).
        logger.info("no labelled row to train on is left: nothing to retrain")
        _write_watermark(store, feedback, "skipped", report_id)
        return RunResult(
            "skipped",
            [*reasons, "but no labelled row is usable for training"],
            production=production,
            new_rows=new_rows,
            metric=settings.metric_for(task),
        )
    registered = current.manifest.get("origin") == REGISTERED
    why_not = _not_refittable(current) if registered else None
    why_not = f"cannot be refitted ({why_not})" if why_not else None
    candidate: TrainingResult | registration.Wrapped | None = None
    if why_not is None:
        data = _candidate_data(settings, reference, ref_parts, usable, current, registered)
        if registered:
            candidate, data, refused = _refit(settings, current, data)
            why_not = f"cannot be refitted ({refused})" if refused else None
            if candidate is not None and len(data.hold_X) < MIN_LABELLED_HOLDOUT:
                candidate = None
                why_not = (
                    f"cannot be judged: only {len(data.hold_X)} newest labelled rows are held "
                    f"out for the gate, a refit needs {MIN_LABELLED_HOLDOUT} (the newest "
                    f"{settings.holdout_feedback_share:.0%} of the labelled rows are held "
                    "out: label more rows)"
                )
        else:
            candidate = train_with_progress(data.training, config, test=(data.hold_X, data.hold_y))
    if candidate is None:
        # Served and monitored as it is; these rows are answered, so it is not retried every
        # k rows: the next trigger (new rows, a report) decides again.
        logger.warning("retrain skipped: registered model %s %s", production, why_not)
        _write_watermark(store, feedback, "skipped", report_id)
        return RunResult(
            "skipped",
            [*reasons, f"but {production} {why_not}; it stays in production"],
            production=production,
            new_rows=new_rows,
            metric=settings.metric_for(task),
        )

    gate = _score_and_gate(settings, registry, production, current, candidate, data, config.seed)
    hold = registry.hold() if gate.promote else None
    result = RunResult(
        "rejected" if not gate.promote else "held" if hold else "promoted",
        reasons,
        production=production,
        gate=gate,
        new_rows=new_rows,
        metric=gate.metric,
    )
    before: dict[str, Any] | None = None  # the alias, until a promotion moves it
    if gate.promote:
        before = _publish_and_promote(registry, result, gate, candidate, data, config, hold)
    # The watermark first: these rows are answered even if the rollout below fails.
    _write_watermark(store, feedback, result.outcome, report_id)
    if result.outcome == "promoted" and result.version is not None:
        _roll_out_or_restore(settings, registry, result, result.version, production, before)
    return result


def follow_deployment(settings: RetrainerSettings, registry: ModelRegistry) -> str | None:
    """In Kubernetes, move the production alias to the version the serving Deployment's pod
    template pins when they differ (a ``kubectl rollout undo``): the store follows what is
    served, and, as after any rollback, automation promotes nothing over it until ``unpin``.
    Returns the version moved to, or None."""
    if settings.resolved_rollout() != "kubernetes":
        return None
    alias = registry.production()
    try:
        served = served_version(settings)
    except RolloutFailed as exc:
        logger.error("cannot compare the alias with what serving runs: %s", exc.message)
        return None
    if served is None or alias is None or served == alias["version"]:
        return None
    try:
        registry.follow(
            served,
            f"deployment/{settings.serving_deployment} serves {served} while the alias named "
            f"{alias['version']} (kubectl rollout undo)",
        )
    except MLPlatformError as exc:  # a pinned version that is no verified version (a typo)
        logger.error("the alias cannot follow the Deployment to %s: %s", served, exc.message)
        return None
    return served


def run(settings: RetrainerSettings, force: bool = False, store: Store | None = None) -> RunResult:
    """Check the triggers and, if any fires, retrain under the store lock."""
    store = store or open_store(settings)
    registry = ModelRegistry(store, settings.require_signing_key())
    lock = StoreLock(store, keys.RETRAIN_LOCK, settings.lock_ttl_seconds)
    try:
        lock.acquire()
    except LockHeld as exc:
        logger.info("another retrain is running: %s; exiting", exc.message)
        return RunResult("locked", [exc.message], model=settings.model_name)
    result = RunResult("failed", model=settings.model_name)
    try:
        followed = follow_deployment(settings, registry)
        reasons, new_rows, report_id = triggers(settings, store, registry, force)
        if not reasons:
            result = RunResult(
                "skipped",
                ["no trigger"],
                production=registry.production_version(),
                new_rows=new_rows,
                metric=settings.metric_for(production_task(registry)),
            )
            logger.info("no trigger: %d new labelled rows (k=%d)", new_rows, settings.retrain_every)
        else:
            logger.info("retrain triggered: %s", "; ".join(reasons))
            result = retrain(settings, store, registry, reasons, new_rows, report_id)
        result.followed = followed
        result.model = settings.model_name
        _write_run_record(store, result)
        _count_and_push_metrics(settings, store, result, success=result.rollout_error is None)
    except BaseException:
        _count_and_push_metrics(settings, store, result, success=False)
        raise
    finally:
        lock.release()
    if result.rollout_error is not None:
        raise RolloutFailed(result.rollout_error)
    return result


def _move(
    settings: RetrainerSettings,
    store: Store | None,
    move: Callable[[ModelRegistry], dict[str, Any]],
) -> dict[str, Any]:
    """Move the production alias by hand (under the retrain lock) and roll it out."""
    store = store or open_store(settings)
    registry = ModelRegistry(store, settings.require_signing_key())
    with StoreLock(store, keys.RETRAIN_LOCK, settings.lock_ttl_seconds):
        # A rollout undo no run has followed yet: the move starts from what is served.
        follow_deployment(settings, registry)
        before = registry.production()
        alias = move(registry)
        version = alias["version"]
        was = before["version"] if before else None
        how = "unchanged"
        if version != was:
            try:
                how = roll_out(settings, version, registry.signature(version), was)
            except RolloutFailed:
                if settings.resolved_rollout() == "kubernetes" and before is not None:
                    registry.restore(before)  # the Deployment still runs `was`
                raise
    logger.info("production is %s (was %s; rollout: %s)", version, was, how)
    return {**alias, "rollout": how}


def rollback(settings: RetrainerSettings, store: Store | None = None) -> dict[str, Any]:
    """Move production back to the previous version and roll it out the same way. It holds:
    retrains keep their candidates for review until ``unpin``."""
    return _move(settings, store, lambda registry: registry.rollback())


def promote(
    settings: RetrainerSettings, version: str, pin: bool = False, store: Store | None = None
) -> dict[str, Any]:
    """Put ``version`` in production by hand and roll it out. ``pin``: it holds (automation
    promotes nothing over it until ``unpin``); else any hold is lifted."""
    hold = f"pinned to {version} by hand" if pin else None
    return _move(settings, store, lambda registry: registry.promote(version, hold=hold))


def unpin(settings: RetrainerSettings, store: Store | None = None) -> dict[str, Any]:
    """Lift a rollback's or a pin's hold: the next retrain may promote again."""
    return _move(settings, store, lambda registry: registry.unpin())


__all__ = ["RunResult", "follow_deployment", "promote", "rollback", "run", "unpin"]
