"""Prometheus metrics and the rolling in-process statistics behind the JSON summaries.

With several uvicorn workers, ``PROMETHEUS_MULTIPROC_DIR`` is set before this module is
imported (see ``__main__``), and ``/metrics`` aggregates every worker's files.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections import Counter as CountOf
from collections import deque
from typing import Any

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from mlplatform_common import metric_names as names
from mlplatform_serving import prometheus_adapter

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_REQUESTS = Counter(
    names.HTTP_REQUESTS,
    "HTTP requests by route template, method and status",
    ["route", "method", "status"],
)
HTTP_DURATION = Histogram(
    names.HTTP_REQUEST_DURATION,
    "HTTP request duration",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)
PREDICTIONS = Counter(
    names.PREDICTIONS, "Predicted rows by model version and label", ["model_version", "label"]
)
PROBABILITY = Histogram(
    names.PREDICTION_PROBABILITY,
    "Probability of the predicted class",
    buckets=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
)
# The reference target's quantiles that bound a regression's value buckets: each bucket holds
# 1-10% of the reference, so a move of the predictions shows in any of them; the lowest counts
# values at or below the reference's minimum, +Inf those above its maximum.
VALUE_QUANTILES = (0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
PREDICTED_VALUE: Histogram | None = None
"""A regression's predicted values, with the served version's buckets (``set_value_buckets``);
None while a classifier is served."""
_value_buckets: tuple[float, ...] = ()
_value_lock = threading.Lock()
FEEDBACK = Counter(names.FEEDBACK, "Labelled rows stored")
UNKNOWN_CATEGORIES = Counter(
    names.UNKNOWN_CATEGORIES,
    "Values of category features that the served version never saw in training",
    ["feature"],
)
BACKUP = Counter(names.BACKUP_PREDICTIONS, "Rows answered by the backup estimator")
LOG_DROPPED = Counter(
    names.PREDICTION_LOG_DROPPED, "Prediction log rows dropped while the store was down"
)
# Back-pressure (``PredictionLog.make_room``): only requests that waited are observed.
LOG_WAIT = Histogram(
    names.PREDICTION_LOG_WAIT,
    "Time requests waited for room in the prediction log's buffer (those that waited)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0),
)
LOG_WAIT_LIMIT = Counter(
    names.PREDICTION_LOG_WAIT_LIMIT,
    "Requests that waited the whole MLPLATFORM_LOG_WAIT_MAX_SECONDS for room in the "
    "prediction log, then were answered (the buffer may then drop its oldest rows)",
)


def observe_log_wait(seconds: float, limit_reached: bool) -> None:
    """One request's wait for room in the prediction log."""
    LOG_WAIT.observe(seconds)
    if limit_reached:
        LOG_WAIT_LIMIT.inc()


MODEL_INFO = Gauge(
    names.MODEL_INFO, "The model version being served (1)", ["version"], multiprocess_mode="liveall"
)
ALIAS_MISMATCH = Gauge(
    names.MODEL_ALIAS_MISMATCH,
    "1 while the production alias names another version than the one served",
    multiprocess_mode="max",
)
MODEL_LOAD = Gauge(
    names.MODEL_LOAD_SECONDS, "Seconds the last model load took", multiprocess_mode="liveall"
)


@functools.lru_cache(maxsize=4096)
def child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once: the hot path skips its lock and checks.
    (Label values here are bounded: route templates, statuses, versions and classes.)"""
    return metric.labels(*labels)


def observe_many(histogram: Histogram, values: np.ndarray) -> None:
    """``histogram.observe(v)`` for every value, in a few calls instead of one per value
    (``prometheus_adapter``). The test compares both expositions."""
    if len(values) <= 4 or not prometheus_adapter.BULK:  # a few rows: plain observe is cheaper
        for value in values.tolist():
            histogram.observe(value)
        return
    prometheus_adapter.observe_bulk(histogram, values)


def value_buckets(target: np.ndarray) -> tuple[float, ...]:
    """The bucket bounds of ``PREDICTED_VALUE`` for a version whose reference target is
    ``target``: its ``VALUE_QUANTILES`` to 6 significant digits (short ``le`` labels), each
    once; empty without a finite value."""
    finite = target[np.isfinite(target)]
    if not finite.size:
        return ()
    bounds = np.quantile(finite, VALUE_QUANTILES).tolist()
    return tuple(sorted({float(f"{b:.6g}") for b in bounds}))


def set_value_buckets(buckets: tuple[float, ...]) -> None:
    """Export ``PREDICTED_VALUE`` with these bounds (empty: not at all). Prometheus fixes a
    histogram's buckets when it is made, so a version with other bounds gets a new one: its
    counts start again, which ``rate`` takes as a counter reset. (A model change rolls the
    Deployment; in one process this happens only on ``/admin/reload``, after which uvicorn
    workers' files still hold the old buckets' counts until the process restarts.)"""
    global PREDICTED_VALUE, _value_buckets
    with _value_lock:
        if PREDICTED_VALUE is not None and buckets == _value_buckets:
            return
        if PREDICTED_VALUE is not None:
            REGISTRY.unregister(PREDICTED_VALUE)
        PREDICTED_VALUE = (
            Histogram(
                names.PREDICTION_VALUE,
                "Predicted values of a regression, bucketed at quantiles of the served "
                "version's reference target",
                buckets=buckets,
            )
            if buckets
            else None
        )
        _value_buckets = buckets


def exposition() -> tuple[bytes, str]:
    """The Prometheus text format, across workers when running multi-process."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def set_model(version: str, load_seconds: float, value_buckets: tuple[float, ...] = ()) -> None:
    """A newly served version's metrics; ``value_buckets``: a regression's (``value_buckets``)."""
    MODEL_INFO.clear()
    MODEL_INFO.labels(version=version).set(1)
    MODEL_LOAD.set(load_seconds)
    set_value_buckets(value_buckets)


class RollingStats:
    """Recent requests and predictions of this process, for ``/metrics/system|kpis|...``."""

    def __init__(self, max_requests: int = 20_000, max_feature_rows: int = 5_000) -> None:
        self._requests: deque[tuple[float, float, int]] = deque(maxlen=max_requests)
        self._features: deque[tuple[tuple[str, ...], np.ndarray]] = deque()
        self._feature_rows = 0
        self.max_feature_rows = max_feature_rows
        self.labels: CountOf[str] = CountOf()
        # Rows by the version that answered them: a reload changes the version mid-process.
        self.by_version: CountOf[str] = CountOf()
        self.rows = 0
        self.backup_rows = 0
        self.low_confidence = 0
        self.confidence_sum = 0.0
        self.value_rows = 0  # regression rows, whose value_sum makes mean_value
        self.value_sum = 0.0
        self.started = time.time()
        self._lock = threading.Lock()

    def request(self, duration: float, status: int) -> None:
        self._requests.append((time.time(), duration, status))

    def predictions(
        self,
        served: Any,
        counts: np.ndarray,
        top_proba: np.ndarray,
        backup: bool,
        X: np.ndarray,
        threshold: float,
    ) -> None:
        """Count a batch; ``top_proba``: each row's probability of its class, or for a
        regression (``served.regression``) its predicted value."""
        n = len(X)
        with self._lock:
            for key, count in zip(served.class_keys, counts.tolist(), strict=True):
                if count:
                    self.labels[key] += count
            self.rows += n
            self.by_version[served.version] += n
            self.backup_rows += n if backup else 0
            if getattr(served, "regression", False):
                self.value_rows += n
                self.value_sum += float(top_proba.sum())
            else:
                self.low_confidence += int((top_proba < threshold).sum())
                self.confidence_sum += float(top_proba.sum())
            self._features.append((tuple(served.features), X))
            self._feature_rows += n
            while self._feature_rows - len(self._features[0][1]) >= self.max_feature_rows:
                self._feature_rows -= len(self._features.popleft()[1])

    def system(self, window_seconds: float = 300.0) -> dict[str, Any]:
        now = time.time()
        recent = [r for r in list(self._requests) if now - r[0] <= window_seconds]
        durations = np.array([r[1] for r in recent]) if recent else np.array([0.0])
        errors = sum(1 for r in recent if r[2] >= 500)
        span = min(window_seconds, max(now - self.started, 1e-9))
        return {
            "window_seconds": window_seconds,
            "requests": len(recent),
            "throughput_rps": round(len(recent) / span, 3),
            "error_rate": round(errors / len(recent), 6) if recent else 0.0,
            "client_error_rate": round(sum(1 for r in recent if 400 <= r[2] < 500) / len(recent), 6)
            if recent
            else 0.0,
            "latency_seconds": {
                f"p{q}": round(float(np.percentile(durations, q)), 6) for q in (50, 95, 99)
            },
            "uptime_seconds": round(now - self.started, 1),
        }

    def kpis(self) -> dict[str, Any]:
        with self._lock:
            rows = self.rows
            classified = rows - self.value_rows
            return {
                "predictions": rows,
                "predictions_by_version": dict(self.by_version),
                "class_distribution": {k: v / rows for k, v in sorted(self.labels.items())}
                if rows
                else {},
                "mean_confidence": round(self.confidence_sum / classified, 6)
                if classified
                else None,
                "low_confidence_share": round(self.low_confidence / classified, 6)
                if classified
                else None,
                "mean_value": round(self.value_sum / self.value_rows, 6)
                if self.value_rows
                else None,
                "backup_share": round(self.backup_rows / rows, 6) if rows else None,
            }

    def recent_features(self, features: list[str]) -> np.ndarray:
        """Recent input rows with these features (rows of other feature sets are skipped)."""
        key = tuple(features)
        with self._lock:
            arrays = [X for names, X in self._features if names == key]
        return np.vstack(arrays) if arrays else np.empty((0, len(features)))
