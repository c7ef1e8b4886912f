"""Bulk helpers of the hot path equal the one-value-at-a-time code they replace."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from mlplatform_serving.observability import observe_many
from mlplatform_serving.predlog import columns_and_embedding, row_blocks
from mlplatform_serving.runtime import top_of

BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


def _histogram() -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    return registry, Histogram("p", "probability", buckets=BUCKETS, registry=registry)


@pytest.mark.parametrize(
    "values",
    [
        # on the bounds (le: a value equal to a bound is in that bucket), between, above
        [0.5, 0.6, 0.95, 1.0, 0.55, 0.999, 0.42, 1.5],
        np.random.default_rng(0).uniform(0.3, 1.2, 5000).tolist(),
        [0.95, 0.42, 1.0],  # a few values take plain observe
        [],
    ],
)
def test_observe_many_equals_observe_one_by_one(values: list[float]) -> None:
    one_by_one, h1 = _histogram()
    bulk, h2 = _histogram()
    for v in values:
        h1.observe(v)
    observe_many(h2, np.asarray(values, dtype=np.float64))
    expected = generate_latest(one_by_one).decode().splitlines()
    got = generate_latest(bulk).decode().splitlines()
    # _created differs by construction time; the sum may differ in the last digit (summed
    # in another order)
    drop = ("p_created", "p_sum")
    assert [x for x in got if not x.startswith(drop)] == [
        x for x in expected if not x.startswith(drop)
    ]
    total = sum(v for v in values)
    got_sum = float(next(x for x in got if x.startswith("p_sum")).split()[1])
    assert got_sum == pytest.approx(total, rel=1e-12, abs=1e-12)
    assert f'p_bucket{{le="+Inf"}} {float(len(values))}' in got


@pytest.mark.parametrize("n_classes", [1, 2, 3])
def test_proba_json_equals_one_encode_per_row(n_classes: int) -> None:

    from mlplatform_common.datalog import proba_json

    proba = np.random.default_rng(n_classes).dirichlet([1.0] * n_classes, 500)
    proba[0] = [1.0] + [0.0] * (n_classes - 1)
    expected = [orjson.dumps(p).decode() for p in proba.round(6).tolist()]
    assert proba_json(proba) == expected
    assert proba_json(proba[:0]) == []


# request sizes of a flush: one-row requests, batches, one bigger than a block, none left over
SIZES = [[1] * 10, [3, 1000, 2, 5000, 1], [4096], [1]]


@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("block", [8, 4096])
def test_row_blocks_are_the_rows_in_order_in_bounded_blocks(sizes: list[int], block: int) -> None:
    rng = np.random.default_rng(4)
    arrays = [rng.normal(size=(n, 7)) for n in sizes]
    blocks = list(row_blocks(arrays, block=block))
    assert np.array_equal(np.concatenate(blocks), np.concatenate(arrays))
    assert all(len(b) < 2 * block for b in blocks)
    assert all(len(b) >= block for b in blocks[:-1])


@pytest.mark.parametrize("sizes", SIZES)
def test_columns_and_embedding_are_the_transposes_of_the_stacked_rows(sizes: list[int]) -> None:
    # ONNX Runtime keeps the memory of its largest run: a flush embeds its rows in blocks.
    calls: list[int] = []

    class Affine:
        def transform(self, X: np.ndarray) -> np.ndarray:
            calls.append(len(X))
            return (X[:, :3] * 2.0 + 1.0).astype(np.float32)  # not float64: converted

    rng = np.random.default_rng(3)
    arrays = [rng.normal(size=(n, 7)) for n in sizes]
    X = np.concatenate(arrays)
    XT, ZT = columns_and_embedding(Affine(), arrays, block=1000)
    assert XT.flags.c_contiguous and ZT.flags.c_contiguous and ZT.dtype == np.float64
    assert np.array_equal(XT, X.T)
    assert np.array_equal(ZT, (X[:, :3] * 2.0 + 1.0).astype(np.float32).astype(np.float64).T)
    assert max(calls) < 2 * 1000 and sum(calls) == len(X)


@pytest.mark.parametrize("sizes", SIZES)
def test_an_embedding_given_with_the_rows_is_used_as_it_is(sizes: list[int]) -> None:
    # The model's graph returned it: the log does not compute it again.
    class Refuses:
        def transform(self, X: np.ndarray) -> np.ndarray:
            raise AssertionError("the embedding was given")

    rng = np.random.default_rng(4)
    arrays = [rng.normal(size=(n, 7)) for n in sizes]
    embedded = [rng.normal(size=(n, 3)).astype(np.float32) for n in sizes]
    XT, ZT = columns_and_embedding(Refuses(), arrays, embedded, block=1000)
    assert XT.flags.c_contiguous and ZT.flags.c_contiguous and ZT.dtype == np.float64
    assert np.array_equal(XT, np.concatenate(arrays).T)
    assert np.array_equal(ZT, np.concatenate(embedded).astype(np.float64).T)
    with pytest.raises(ValueError, match="an embedding per row"):
        columns_and_embedding(Refuses(), arrays, [Z[1:] for Z in embedded], block=1000)


@pytest.mark.parametrize("k", [2, 3, 7])
def test_top_of_is_the_rows_max(k: int) -> None:
    rng = np.random.default_rng(k)
    proba = rng.dirichlet(np.ones(k), size=500)
    proba[:10] = 1 / k  # ties: argmax takes the first, the value is the same
    assert np.array_equal(top_of(proba, proba.argmax(axis=1)), proba.max(axis=1))
