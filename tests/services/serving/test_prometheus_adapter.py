"""The prometheus_client internals ``prometheus_adapter`` relies on are still there and still
mean what it assumes; each failure says what changed and what to check."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from mlplatform_serving import observability, prometheus_adapter

BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
ADAPTER = "services/serving/src/mlplatform_serving/prometheus_adapter.py"


def test_the_installed_prometheus_client_is_the_one_the_adapter_was_written_for() -> None:
    assert prometheus_adapter.INSTALLED == prometheus_adapter.WRITTEN_FOR, (
        f"prometheus-client is {prometheus_adapter.INSTALLED}, but {ADAPTER} was written for "
        f"{prometheus_adapter.WRITTEN_FOR}: it writes to Histogram's private _upper_bounds, "
        "_buckets and _sum. Read Histogram.observe and _metric_init of the new version; if they "
        "still keep one value holder per bound with inc(), set WRITTEN_FOR to the new version "
        "(the other tests here check the rest), else change observe_bulk."
    )


def test_histogram_still_has_the_internals_the_bulk_observe_uses() -> None:
    histogram = Histogram("h", "h", buckets=BUCKETS, registry=CollectorRegistry())
    missing = prometheus_adapter.internals_missing(histogram)
    assert missing == [], (
        f"prometheus-client {prometheus_adapter.INSTALLED}'s Histogram no longer has "
        f"{', '.join(missing)}: {ADAPTER}'s observe_bulk cannot be used (serving falls back to "
        "one observe() per value, which is slower); adapt observe_bulk to the new internals."
    )
    assert prometheus_adapter.BULK, "the adapter's import-time check turned bulk observe off"


def test_a_labelled_parent_is_refused_as_observe_refuses_it() -> None:
    parent = Histogram("h", "h", ["route"], buckets=BUCKETS, registry=CollectorRegistry())
    with pytest.raises(ValueError, match="label values"):
        parent.observe(0.5)
    with pytest.raises(ValueError, match="label values"):
        prometheus_adapter.observe_bulk(parent, np.full(10, 0.5))


def _exposition_lines(values: np.ndarray, bulk: bool) -> list[str]:
    registry = CollectorRegistry()
    histogram = Histogram("p", "p", buckets=BUCKETS, registry=registry)
    if bulk:
        observability.observe_many(histogram, values)
    else:
        for value in values.tolist():
            histogram.observe(value)
    lines = generate_latest(registry).decode().splitlines()
    return [x for x in lines if not x.startswith(("p_created", "p_sum"))]


def test_without_the_internals_observe_many_falls_back_to_observe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = np.random.default_rng(1).uniform(0.3, 1.2, 100)

    def refuse(*args: object) -> None:
        raise AssertionError("observe_bulk used although BULK is False")

    monkeypatch.setattr(prometheus_adapter, "BULK", False)
    monkeypatch.setattr(prometheus_adapter, "observe_bulk", refuse)
    assert _exposition_lines(values, bulk=True) == _exposition_lines(values, bulk=False)


def test_bulk_observe_equals_observe_in_multiprocess_mode(tmp_path: Path) -> None:
    """With several workers the value holders are prometheus_client's mmap-backed ones."""
    script = textwrap.dedent(
        """
        import numpy as np
        from prometheus_client import CollectorRegistry, Histogram, generate_latest, multiprocess
        from mlplatform_serving.observability import observe_many

        values = np.random.default_rng(2).uniform(0.3, 1.2, 1000)
        for name, bulk in (("one", False), ("bulk", True)):
            h = Histogram(name, name, buckets=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0))
            if bulk:
                observe_many(h, values)
            else:
                for v in values.tolist():
                    h.observe(v)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        print(generate_latest(registry).decode())
        """
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout
    one = sorted(x.replace("one_", "") for x in out.splitlines() if x.startswith("one_bucket"))
    bulk = sorted(x.replace("bulk_", "") for x in out.splitlines() if x.startswith("bulk_bucket"))
    assert len(one) == len(BUCKETS) + 1 and one == bulk
    sums = {x.split("_sum")[0]: float(x.split()[1]) for x in out.splitlines() if "_sum" in x}
    assert sums["bulk"] == pytest.approx(sums["one"], rel=1e-12)
