"""Training CSV validation: every refusal names the column or the rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlplatform_common.errors import DatasetError
from mlplatform_common.schema import (
    FEATURE_LIMIT,
    complete_rows,
    feature_schema,
    in_range,
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
            ["a,b,y", "1,x,0", *GOOD[1:]],
            "y",
            r"feature column 'b' is not numeric \(value 'x' at lines 2\)",
        ),
        ([*GOOD[:3], ",,", *GOOD[3:]], "y", r"empty rows at lines 4"),
        (["a,b,y"] + [f"{i},{i},1" for i in range(12)], "y", r"single class \(1\)"),
        (["a,b,y"], "y", r"header but no rows"),
        ([""], "y", r"not a readable CSV"),
        ([*GOOD[:2], "3,,1", *GOOD[2:]], "y", r"feature column 'b' has missing values at lines 3"),
        ([*GOOD, "1,2,2"], "y", r"classes \[2\] .* fewer than 5 rows"),
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
    kept = complete_rows(frame, ["a", "b"])
    assert kept["a"].tolist() == [1.0] and kept["b"].tolist() == [0.5]
    assert kept["target"].tolist() == ["0"]
    # rows of another feature set: none, with the features as columns
    assert list(complete_rows(frame, ["a", "c"]).columns) == ["a", "b", "target", "c"]
    assert complete_rows(frame, ["a", "c"]).empty
