"""The one place that uses prometheus_client's private internals: a histogram's bulk observe.

prometheus_client has no public way to observe many values at once, and ``Histogram.observe``
per value costs a 1,000-row batch 1,000 Python calls (bench/BENCHMARKS.md, "Issue 24:
observe_many adapter"). ``observe_bulk`` adds a batch's bucket counts and sum straight to the
histogram's value holders, as ``observe`` does one value at a time, through four private
members of ``Histogram``: ``_upper_bounds``, ``_buckets``, ``_sum`` (their ``inc``) and
``_raise_if_not_observable``.

Written for prometheus-client ``WRITTEN_FOR``. ``tests/services/serving/test_prometheus_adapter.py``
fails, saying what moved, when another version is installed or the members change; if they are
missing at import, ``BULK`` is False and callers fall back to the public ``observe``.
"""

from __future__ import annotations

import logging
from importlib.metadata import version

import numpy as np
from prometheus_client import CollectorRegistry, Histogram

logger = logging.getLogger("mlplatform.serving")

WRITTEN_FOR = "0.26.0"
"""The prometheus-client version whose ``Histogram`` internals ``observe_bulk`` was written
for (and checked against by its test)."""

INSTALLED = version("prometheus-client")


def internals_missing(histogram: Histogram) -> list[str]:
    """What ``observe_bulk`` needs of ``histogram`` and does not find (empty: all there)."""
    missing = [
        name
        for name in ("_upper_bounds", "_buckets", "_sum", "_raise_if_not_observable")
        if not hasattr(histogram, name)
    ]
    if missing:
        return missing
    bounds, buckets = histogram._upper_bounds, histogram._buckets
    if not isinstance(bounds, list) or not isinstance(buckets, list):
        return ["_upper_bounds and _buckets as lists"]
    if len(bounds) != len(buckets) or bounds != sorted(bounds) or bounds[-1] != float("inf"):
        return ["_upper_bounds as the sorted bounds (last +Inf) of _buckets, one each"]
    if not all(callable(getattr(v, "inc", None)) for v in [histogram._sum, *buckets]):
        return ["an inc() on _sum and on every one of _buckets"]
    return []


def _bulk_works() -> bool:
    missing = internals_missing(Histogram("probe", "probe", registry=CollectorRegistry()))
    if missing:
        logger.warning(
            "prometheus-client %s lacks %s (observe_bulk was written for %s): histograms are "
            "observed one value at a time",
            INSTALLED,
            ", ".join(missing),
            WRITTEN_FOR,
        )
    return not missing


BULK = _bulk_works()
"""Whether ``observe_bulk`` may be used with the installed prometheus-client."""


def observe_bulk(histogram: Histogram, values: np.ndarray) -> None:
    """``histogram.observe(v)`` for every value: the same bucket counts (``le``: the first
    bound >= the value) and sum, in one ``inc`` per bucket hit. Only when ``BULK``."""
    histogram._raise_if_not_observable()
    bounds = np.asarray(histogram._upper_bounds)
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    histogram._sum.inc(float(values.sum()))
    for bucket, count in zip(histogram._buckets, counts.tolist(), strict=False):
        if count:
            bucket.inc(count)
