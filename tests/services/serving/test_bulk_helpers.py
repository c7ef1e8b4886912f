"""Bulk helpers of the hot path equal the one-value-at-a-time code they replace."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from mlplatform_common import datalog
from mlplatform_common.errors import InvalidInput
from mlplatform_serving import runtime as runtime_module
from mlplatform_serving.observability import observe_many
from mlplatform_serving.predlog import columns_and_embedding, row_blocks
from mlplatform_serving.runtime import BatchResult, ModelRuntime, csv_matrix, top_of
from mlplatform_serving.service import Service

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
    import orjson

    from mlplatform_common.datalog import proba_json

    proba = np.random.default_rng(n_classes).dirichlet([1.0] * n_classes, 500)
    proba[0] = [1.0] + [0.0] * (n_classes - 1)
    expected = [orjson.dumps(p).decode() for p in proba.round(6).tolist()]
    assert proba_json(proba) == expected
    assert proba_json(proba[:0]) == []


@pytest.mark.parametrize(
    ("classes", "names", "n", "backup"),
    [
        ([0, 1], ["benign", "malignant"], 1000, False),
        (['a"b', "é"], ['quote "name"', "accent é"], 3, True),
        ([3, 7, 9], ["x", "y", "z"], 1, False),
    ],
)
def test_spliced_answers_equal_orjson_of_the_row_dicts(
    classes: list[Any], names: list[str], n: int, backup: bool
) -> None:
    rng = np.random.default_rng(2)
    proba = rng.dirichlet(np.ones(len(classes)), size=n)
    proba[0] = [1.0] + [0.0] * (len(classes) - 1)  # ends of the range, and a tiny value
    if n > 2:
        proba[1] = [1e-20, 1 - 1e-20] + [0.0] * (len(classes) - 2)
    served = SimpleNamespace(
        classes=classes,
        class_names=names,
        class_keys=[str(c) for c in classes],
        version="v12",
    )
    result = BatchResult(served, np.zeros((n, 2)), proba, proba.argmax(axis=1), backup)  # type: ignore[arg-type]
    ids = datalog.new_prediction_ids(n, 1_800_000_000.0)
    dicts = Service.answer_dicts(result, ids)
    assert dicts[0] == {
        "prediction_id": ids[0],
        "label": classes[0],
        "label_name": names[0],
        "probability": 1.0,
        "probabilities": {str(c): float(c == classes[0]) for c in classes},
        "model_version": "v12",
        "backup": backup,
    }
    assert orjson.dumps(Service.answers_spliced(result, ids)) == orjson.dumps(dicts)
    assert orjson.dumps(Service.answers(result, ids)) == orjson.dumps(dicts)
    assert (
        orjson.dumps(Service.answers_spliced(result, datalog.new_prediction_ids(0, 1.0))) == b"[]"
    )


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


def _checked_csv(text: str, features: list[str], max_rows: int | None) -> Any:
    """``ModelRuntime.parse_csv`` with numpy's reader left out: the cell-by-cell reading."""
    runtime = object.__new__(ModelRuntime)
    runtime._served = SimpleNamespace(features=features)  # type: ignore[attr-defined]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runtime_module, "csv_matrix", lambda *_: None)
        try:
            return runtime.parse_csv(text.encode(), max_rows)
        except InvalidInput as exc:
            return exc


def _random_csv(rng: random.Random, features: list[str]) -> str:
    cells = ["1", "2.5", " 3 ", "-4e2", "+.5", "1e-400", "-0", "1.", "1e5"]
    odd = ['"5"', '"1"2', "1_0", "\u0663", "x", "", " ", "nan", "INF", "1e200", '"1,5"', "0x1"]
    odd += ["\t1", "1 2", ".", "1e", "\u00a01", "9" * 400]
    heads = [",".join(features), ",".join(reversed(features)), '"a","b c",d', " a , b c , d"]
    heads += ["a,b c", "a,b c,d,e", "a,a,d", ",a,b c"]
    lines = [rng.choice(heads)] if rng.random() < 0.5 else []
    for _ in range(rng.randint(0, 9)):
        if rng.random() < 0.2:  # blank lines count toward the reading limit, rows do too
            lines.append(rng.choice(["", "", "  ", ",,"]))
            continue
        width = len(features) if rng.random() < 0.9 else rng.randint(1, 4)
        lines.append(
            ",".join(
                rng.choice(cells) if rng.random() < 0.8 else rng.choice(odd) for _ in range(width)
            )
        )
    ends = ["\n", "\r\n", "\r"] if rng.random() < 0.7 else ["\n", "\r", "\n\r"]  # mixed
    end = rng.choice(ends)
    text = "".join(line + (end if rng.random() < 0.8 else rng.choice(ends)) for line in lines)
    return text if rng.random() < 0.5 else text.rstrip("\r\n")


def test_numpy_reads_a_csv_exactly_as_the_checked_reading_or_leaves_it_to_it() -> None:
    features = ["a", "b c", "d"]
    rng = random.Random(0)
    read_fast = 0
    for _ in range(6000):
        text, max_rows = _random_csv(rng, features), rng.choice([None, 1, 2, 3])
        fast = csv_matrix(text, features, max_rows)
        if fast is None:
            continue
        read_fast += 1
        checked = _checked_csv(text, features, max_rows)
        assert isinstance(checked, np.ndarray), (text, checked)
        assert fast.shape == checked.shape and np.array_equal(fast, checked), text
        assert fast.dtype == np.float64 and fast.flags.c_contiguous
    assert read_fast > 250  # a good share of these bodies are well-formed


@pytest.mark.parametrize(
    "text",
    [
        "a,b c,d\n1,2,3\n4,5,6\n",  # a header line
        "d,a,b c\r\n3,1,2\r\n6,4,5\r\n",  # another column order, \r\n
        "1,2,3\r4,5,6",  # no header, old Mac line ends
        "\n1,2,3\n\n4,5,6\n\n",  # blank lines
        " 1 , 2 ,3\n4,5, 6 ",
    ],
)
def test_a_well_formed_csv_is_read_by_numpy(text: str) -> None:
    X = csv_matrix(text, ["a", "b c", "d"], 10)
    assert X is not None and X.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert X.tolist() == _checked_csv(text, ["a", "b c", "d"], 10).tolist()


def test_blank_lines_of_mixed_ends_count_toward_the_reading_limit_as_in_the_checked_path() -> None:
    features = ["a", "b c", "d"]
    text = "a,b c,d" + "\n\r" * 4 + "1,2,3\n4,5,6"  # "\n\r" is two line ends, not one
    assert csv_matrix(text, features, 2) is None
    refused = _checked_csv(text, features, 2)
    assert isinstance(refused, InvalidInput) and "reading stopped at line 7" in refused.message
    assert csv_matrix(text, features, 10) is not None  # within a larger limit, numpy reads it


def test_a_first_line_of_numbers_with_unicode_spaces_is_data_in_both_readings() -> None:
    """Features named like numbers: the first line is a header only if every cell names one."""
    text = "1,\u00a02\n3,4\n"  # a no-break space before the 2, which both readings strip
    assert csv_matrix(text, ["1", "b"], 10).tolist() == [[1, 2], [3, 4]]  # type: ignore[union-attr]
    assert _checked_csv(text, ["1", "b"], 10).tolist() == [[1, 2], [3, 4]]
