"""The CSV rows codec (``codecs/csv_rows``): ``text/csv`` bodies of ``/predict``."""

from __future__ import annotations

import random
import threading
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from mlplatform_common.errors import InvalidInput
from mlplatform_common.storage import Store
from mlplatform_serving.app import create_app
from mlplatform_serving.codecs import csv_rows
from mlplatform_serving.codecs.csv_rows import csv_matrix
from tests.services.serving.conftest import assert_error, serving_settings


def test_predict_csv_with_and_without_header(client: TestClient, rows, trained) -> None:
    frame = pd.DataFrame(rows[:5])
    expected = trained.pipeline.predict(frame).tolist()
    with_header = frame[list(reversed(frame.columns))].to_csv(index=False)  # any column order
    without = frame.to_csv(index=False, header=False)
    old_mac = without.replace("\n", "\r")  # lines ended by \r alone
    for body in (with_header, without, old_mac):
        r = client.post("/predict", content=body, headers={"content-type": "text/csv"})
        assert r.status_code == 200, r.text
        assert [p["label"] for p in r.json()["predictions"]] == expected


@pytest.mark.parametrize(
    ("csv", "fragment"),
    [
        ("1,2,3\n", "csv line 1: expected 30 values, got 3"),
        ("", "csv: no data rows"),
        ("\n\n", "csv: no data rows"),
        ('"unterminated,1\n', "csv"),
        ("abc," * 29 + "abc\n", "csv line 1, column 'mean_radius': 'abc' is not a number"),
        ("nan," * 29 + "nan\n", "must be a finite number"),
        ("mean_radius,mean_texture\n1,2\n", "csv header: missing feature"),
        ("mean_radius,colour\n1,2\n", "csv header: unknown column 'colour'"),
        (
            ",mean_radius,mean_texture\n0,1,2\n",
            "csv header: column 1 has no name (an index column?",
        ),
        ("1e200," + "1," * 28 + "1\n", "column 'mean_radius': '1e200' is beyond ±1e+150"),
        # float() reads both, numpy's reader neither: digit separators, non-ASCII digits
        ("1_000," + "1," * 28 + "1\n", "column 'mean_radius': '1_000' is not a number"),
        ("\u0663," + "1," * 28 + "1\n", "column 'mean_radius': '\u0663' is not a number"),
        ("1," * 29 + '"1"2\n', "csv: malformed"),
    ],
)
def test_malformed_csv_is_a_422(client: TestClient, csv: str, fragment: str) -> None:
    response = client.post("/predict", content=csv.encode(), headers={"content-type": "text/csv"})
    assert_error(response, 422, fragment)


def test_csv_over_the_row_limit_is_refused_before_the_rest_is_read(
    model_store: Store, rows
) -> None:
    line = ",".join(map(str, rows[0].values()))
    header = ",".join(rows[0])
    csv_ct = {"content-type": "text/csv"}
    with TestClient(create_app(serving_settings(max_batch_rows=10), model_store)) as c:
        ok = c.post("/predict", content="\n".join([header] + [line] * 10), headers=csv_ct)
        assert ok.status_code == 200 and len(ok.json()["predictions"]) == 10, ok.text
        r = c.post("/predict", content="\n".join([line] * 11), headers=csv_ct)
        assert_error(r, 422, "csv: 11 rows is over the limit of 10 per request")
        # Reading stopped at the limit: the malformed end of the body was never parsed.
        body = "\n".join([line] * 12 + ['"unterminated,1'])
        r = c.post("/predict", content=body, headers=csv_ct)
        assert_error(
            r, 422, "csv: over the limit of 10 rows per request (reading stopped at line 12)"
        )
        # Blank lines count too, twice the limit (they were read without end).
        r = c.post("/predict", content=line + "\n" * 30 + '"unterminated,1', headers=csv_ct)
        assert_error(
            r, 422, "csv: over the limit of 10 rows per request (reading stopped at line 23)"
        )


def test_a_big_csv_is_parsed_off_the_event_loop_with_the_same_answer(
    client: TestClient, rows, trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlplatform_serving.routes.predict import CSV_ON_THE_LOOP_BYTES

    parse, threads = csv_rows.decode, []

    def parse_csv(*args: Any) -> Any:
        threads.append(threading.get_ident())
        return parse(*args)

    monkeypatch.setattr(csv_rows, "decode", parse_csv)
    one = pd.DataFrame(rows[:1]).to_csv(index=False)
    assert client.post("/predict", content=one, headers={"content-type": "text/csv"}).is_success
    frame = pd.DataFrame([rows[i % len(rows)] for i in range(3000)])
    body = frame.to_csv(index=False)
    assert len(body) > CSV_ON_THE_LOOP_BYTES
    r = client.post("/predict", content=body, headers={"content-type": "text/csv"})
    assert r.status_code == 200, r.text
    on_the_loop, big = threads
    assert big != on_the_loop  # a worker thread: the loop kept answering meanwhile
    labels = [p["label"] for p in r.json()["predictions"]]
    assert labels == trained.pipeline.predict(frame).tolist()
    bad = body + "1,2\n"
    r = client.post("/predict", content=bad, headers={"content-type": "text/csv"})
    assert_error(r, 422, "csv line 3002: expected 30 values, got 2")


def test_csv_rows_with_embedded_quotes_and_wrong_counts(client: TestClient, rows) -> None:
    good = ",".join(str(v) for v in rows[0].values())
    body = f'{good}\n"1,5",{good}\n'
    assert_error(
        client.post("/predict", content=body.encode(), headers={"content-type": "text/csv"}),
        422,
        "csv line 2: expected 30 values, got 31",
    )


def _checked_csv(text: str, features: list[str], max_rows: int | None) -> Any:
    """``csv_rows.decode`` with numpy's reader left out: the cell-by-cell reading."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(csv_rows, "csv_matrix", lambda *_: None)
        try:
            return csv_rows.decode(text.encode(), features, max_rows)
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
