"""Training CSV validation: every refusal names the column or the rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlplatform_common.errors import DatasetError
from mlplatform_common.schema import (
    FEATURE_LIMIT,
    UNKNOWN,
    complete_rows,
    decode,
    encode,
    feature_schema,
    in_range,
    infer_task,
    load_dataset,
    parse_dataset,
)
from tests.conftest import DATA


def _csv(rows: list[str]) -> bytes:
    return ("\n".join(rows) + "\n").encode()


GOOD = ["a,b,y"] + [f"{i},{i * 2},{i % 2}" for i in range(12)]


def test_shipped_dataset_has_30_named_features_and_class_names() -> None:
    data = load_dataset(DATA)
    assert data.X.shape == (569, 30)
    assert "mean_radius" in data.features
    assert "worst_concave_points" in data.features
    assert data.target == "target"
    assert data.class_names == {"0": "malignant", "1": "benign"}


def test_a_valid_csv_parses() -> None:
    data = parse_dataset(_csv(GOOD), "y")
    assert data.features == ["a", "b"]
    assert len(data.y) == 12


@pytest.mark.parametrize(
    ("rows", "target", "message"),
    [
        (GOOD, "label", r"target column 'label' not found; the columns are \['a', 'b', 'y'\]"),
        (
            ["a,b,y"] + [f"{i},id{i},{i % 2}" for i in range(120)],
            "y",
            r"feature column 'b' has 120 distinct text values, more than the 100 a category",
        ),
        (["a,b,y"] + [f"{i},,{i % 2}" for i in range(12)], "y", r"column 'b' has no values"),
        ([*GOOD[:3], ",,", *GOOD[3:]], "y", r"empty rows at lines 4"),
        (["a,b,y"] + [f"{i},{i},1" for i in range(12)], "y", r"single class \(1\)"),
        (["a,b,y"], "y", r"header but no rows"),
        ([""], "y", r"not a readable CSV"),
        ([*GOOD[:2], "3,4,", *GOOD[2:]], "y", r"target column 'y' is empty at lines 3"),
        (
            [*GOOD, "1,2,2"],
            "y",
            r"classes \[2\] .* fewer than 5 rows.* \(the task was read as classification: its "
            r"values are 3 distinct whole numbers, at most 20; set --task / MLPLATFORM_TASK",
        ),
        (
            [*GOOD[:2], "1,inf,0", *GOOD[2:]],
            "y",
            r"feature column 'b' has infinite values at lines 3",
        ),
        (
            [*GOOD[:2], "-1e151,2,0", *GOOD[2:4], "1e200,2,1", *GOOD[4:]],
            "y",
            r"feature column 'a' has values beyond ±1e\+150 at lines 3, 6, too large to train on",
        ),
        (["y", "0", "1"], "y", r"no feature columns"),
        # names the platform's logged rows already use: the feature would overwrite them
        (["a,ts,y", *GOOD[1:]], "y", r"feature column 'ts' has the name of a column"),
        (["a,request_row,y", *GOOD[1:]], "y", r"'request_row' has the name of a column"),
        (["proba_1,b,y", *GOOD[1:]], "y", r"'proba_1' has the name of a column"),
        (["a,PCA_2,y", *GOOD[1:]], "y", r"'PCA_2' has the name of a column"),
        (["a,target,y", *GOOD[1:]], "y", r"'target' has the name of a column"),
    ],
)
def test_bad_csvs_are_refused_with_a_message_that_says_which(
    rows: list[str], target: str, message: str
) -> None:
    with pytest.raises(DatasetError, match=message):
        parse_dataset(_csv(rows), target)


def test_feature_schema_has_ranges_and_medians() -> None:
    data = parse_dataset(_csv(GOOD), "y")
    schema = feature_schema(data.X)
    assert [f["name"] for f in schema] == ["a", "b"]
    assert schema[0]["min"] == 0
    assert schema[0]["max"] == 11
    assert schema[0]["median"] == 5.5


def test_in_range_refuses_what_cannot_be_trained_on_in_float64_and_float32() -> None:
    assert in_range(np.array([[1.0, -FEATURE_LIMIT], [FEATURE_LIMIT, 0.0]]))
    assert in_range(np.zeros((0, 3)))
    for bad in (1e151, -1e200, np.inf, np.nan):
        assert not in_range(np.array([[1.0, bad]]))
    # In float32 the limit would round to infinity: an infinite float32 must still fail.
    assert not in_range(np.array([1.0, np.inf], dtype=np.float32))
    assert in_range(np.array([3e38], dtype=np.float32))


def test_complete_rows_keeps_the_rows_a_job_can_use() -> None:
    frame = pd.DataFrame(
        {
            "a": [1, 2, 3, 4, 5],
            "b": ["0.5", 1e200, None, np.inf, "x"],
            "target": ["0", "1", "0", "1", "0"],
        }
    )
    numbers = [{"name": "a", "dtype": "float"}, {"name": "b", "dtype": "float"}]
    kept = complete_rows(frame, numbers)
    assert kept["a"].tolist() == [1.0] and kept["b"].tolist() == [0.5]
    assert kept["target"].tolist() == ["0"]
    # where the schema allows a missing value, the row with one is kept too
    nullable = [numbers[0], {**numbers[1], "nullable": True}]
    assert complete_rows(frame, nullable)["a"].tolist() == [1.0, 3.0]
    # a category takes any text; a missing one only where allowed
    categories = [numbers[0], {"name": "b", "dtype": "category", "categories": ["x"]}]
    assert complete_rows(frame, categories)["a"].tolist() == [1.0, 2.0, 4.0, 5.0]
    # rows of another feature set: none, with the features as columns
    other = [numbers[0], {"name": "c", "dtype": "float"}]
    assert list(complete_rows(frame, other).columns) == ["a", "b", "target", "c"]
    assert complete_rows(frame, other).empty


def test_the_task_is_read_from_the_target_and_says_why() -> None:
    assert infer_task(pd.Series([0, 1, 1, 0])) == (
        "classification",
        "its values are 2 distinct whole numbers, at most 20",
    )
    assert infer_task(pd.Series(["cat", "dog"]))[0] == "classification"
    assert infer_task(pd.Series([True, False]))[0] == "classification"
    assert infer_task(pd.Series([0.5, 1.25, 3.0])) == (
        "regression",
        "its values are numbers with fractions with 3 distinct values",
    )
    assert infer_task(pd.Series(range(21)))[0] == "regression"
    diabetes = load_dataset(DATA.parent / "diabetes.csv")
    assert diabetes.task == "regression" and diabetes.y.dtype == float
    assert "214 distinct values" in diabetes.task_reason
    # asked for explicitly: a regression on a 0/1 target; a classification of a quantity
    assert parse_dataset(_csv(GOOD + GOOD[1:]), "y", task="regression").task == "regression"
    with pytest.raises(
        DatasetError, match=r"classes \[.*\] and 199 more of target 'progression' have fewer"
    ):
        load_dataset(DATA.parent / "diabetes.csv", task="classification")
    with pytest.raises(DatasetError, match=r"must be numbers for regression; 'red' at lines 2"):
        parse_dataset(
            _csv(["a,y", "1,red", *[f"{i},{i}" for i in range(30)]]), "y", task="regression"
        )
    with pytest.raises(DatasetError, match=r"task 'clustering' is not one of"):
        parse_dataset(_csv(GOOD), "y", task="clustering")


def test_categories_and_missing_cells_are_read_into_the_schema() -> None:
    penguins = load_dataset(DATA.parent / "penguins.csv")
    assert penguins.task == "classification"
    assert sorted(set(penguins.y)) == ["Adelie", "Chinstrap", "Gentoo"]
    schema = {f["name"]: f for f in feature_schema(penguins.X)}
    assert schema["island"]["dtype"] == "category" and not schema["island"]["nullable"]
    assert schema["island"]["categories"] == ["Biscoe", "Dream", "Torgersen"]
    assert schema["sex"]["dtype"] == "category" and schema["sex"]["nullable"]
    assert schema["bill_length_mm"]["dtype"] == "float" and schema["bill_length_mm"]["nullable"]
    assert schema["year"]["dtype"] == "float" and not schema["year"]["nullable"]
    assert abs(sum(schema["island"]["shares"]) - 1) < 1e-6


def test_encode_gives_floats_codes_and_nan_and_decode_inverts_it() -> None:
    schema = feature_schema(pd.DataFrame({"a": [1.0, np.nan], "c": ["red", "blue"]}))
    rows = pd.DataFrame({"a": [2.5, None, 1.0], "c": ["blue", None, "green"]})
    X = encode(rows, schema)
    # blue is value 0 of ["blue", "red"]; green, never seen, is one past the last value
    np.testing.assert_array_equal(X, [[2.5, 0.0], [np.nan, np.nan], [1.0, 2.0]])
    back = decode(X, schema)
    assert back["c"].tolist() == ["blue", None, UNKNOWN]
    assert back["a"].tolist()[0] == 2.5 and np.isnan(back["a"].tolist()[1])
    # a whole number in a category column is the same value as its text
    assert (
        encode(
            pd.DataFrame({"a": [1.0], "c": [3.0]}), [schema[0], {**schema[1], "categories": ["3"]}]
        )[0, 1]
        == 0
    )
