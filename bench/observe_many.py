"""``observe_many`` (the prometheus_adapter's bulk observe) beside the public
``Histogram.observe`` per value: microseconds per call, best of 7 repeats.

Usage: uv run --frozen python -m bench.observe_many
"""

from __future__ import annotations

import timeit
from collections.abc import Callable

import numpy as np
from prometheus_client import CollectorRegistry, Histogram

from mlplatform_serving.observability import observe_many

BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)  # the probability histogram's


def _best_us(fn: Callable[[], None], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6


def measure(values: np.ndarray) -> tuple[float, float]:
    """Microseconds per call: ``observe_many`` of ``values``, and one ``observe()`` each."""
    bulk = Histogram("p", "p", buckets=BUCKETS, registry=CollectorRegistry())
    plain = Histogram("q", "q", buckets=BUCKETS, registry=CollectorRegistry())

    def one_by_one() -> None:
        for value in values.tolist():
            plain.observe(value)

    small = len(values) <= 64
    return (
        _best_us(lambda: observe_many(bulk, values), 20_000 if small else 5_000),
        _best_us(one_by_one, 5_000 if small else 200),
    )


def main() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 8, 64, 1000):
        bulk, per_value = measure(rng.uniform(0.3, 1.0, n))
        print(f"n={n:5d}: observe_many {bulk:8.2f} us, observe() per value {per_value:8.2f} us")


if __name__ == "__main__":
    main()
