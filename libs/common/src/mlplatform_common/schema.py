"""Training data sets, their task and their feature schemas.

A training CSV has one target column and feature columns of two kinds: numbers, and
categories (any column whose values are not all numbers; booleans too). Either kind may have
missing cells. ``load_dataset`` refuses anything else with a message that names the column or
row, and decides the task: classification or regression (``infer_task``).

``feature_schema`` records what a model was trained on: each feature's kind, whether it may be
missing, a number's statistics and a category's values. Inside the platform a row is always a
float vector (``encode``): a number as itself, a category as its index in the schema's values
(``len(values)`` for one the model never saw), a missing cell as NaN. The codecs, training,
the gate and the reporter all encode the same way, so serving's numeric hot path serves mixed
tables too, and ONNX graphs take one float tensor.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlplatform_common import datalog
from mlplatform_common.errors import DatasetError, InvalidInput
from mlplatform_common.quality import to_builtin

MIN_ROWS_PER_CLASS = 5

FEATURE_LIMIT = 1e150
"""The largest feature magnitude the platform takes, in training data, predictions and
feedback. The squares of 10^8 such values still sum to a finite float64 (scaling, variances,
drift statistics); a row of 1e200 makes them infinite and a retrain on it fail."""

NUMBER = "float"
CATEGORY = "category"

CLASSIFICATION = "classification"
REGRESSION = "regression"
TASKS = (CLASSIFICATION, REGRESSION)

MAX_CLASSES = 20
"""A numeric target of whole numbers with at most this many distinct values is read as
classes; any other numeric target as a quantity (regression)."""

MAX_CATEGORIES = 100
"""A text column with more distinct values than this is refused: one-hot encoding it would
give a column per value (ids and free text are not categories)."""

MIN_REGRESSION_ROWS = 20

UNKNOWN = "<unknown>"
"""How the prediction log writes a category value that the model never saw in training."""


def in_range(X: np.ndarray) -> bool:
    """Whether every value is finite and within ±``FEATURE_LIMIT`` (NaN fails both tests).
    Two reductions, no temporary array: it runs on every prediction. Compared as Python
    floats: in float32, the limit itself would be infinite."""
    return X.size == 0 or (float(X.max()) <= FEATURE_LIMIT and float(X.min()) >= -FEATURE_LIMIT)


def is_category(spec: dict[str, Any]) -> bool:
    return spec.get("dtype") == CATEGORY


def nullable(spec: dict[str, Any]) -> bool:
    return bool(spec.get("nullable", False))


def category_value(value: Any) -> str:
    """A category value as the schema keeps it: text (``True``, ``3``, ``red``); a float that
    is a whole number as the integer (a CSV reads ``3`` in a text column as ``3``)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def encode(frame: pd.DataFrame, schema: list[dict[str, Any]]) -> np.ndarray:
    """Rows as the float matrix every model of the platform takes (module docstring). Values
    that are not numbers in a number column become NaN: callers validate first."""
    out = np.empty((len(frame), len(schema)), dtype=np.float64)
    for j, spec in enumerate(schema):
        col = frame[spec["name"]]
        if is_category(spec):
            values = spec["categories"]
            present = col.notna().to_numpy()
            codes = pd.Categorical(
                [category_value(v) for v in col[present]], categories=values
            ).codes.astype(np.float64)
            codes[codes < 0] = len(values)
            out[:, j] = np.nan
            out[present, j] = codes
        else:
            out[:, j] = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
    return out


def encoded_frame(frame: pd.DataFrame, schema: list[dict[str, Any]]) -> pd.DataFrame:
    """``encode`` with the feature names as columns (what the scikit-learn pipelines take)."""
    return pd.DataFrame(
        encode(frame, schema), columns=[f["name"] for f in schema], index=frame.index
    )


def decode(X: np.ndarray, schema: list[dict[str, Any]]) -> pd.DataFrame:
    """The inverse of ``encode``: category codes back to their values (``UNKNOWN`` for a value
    the model never saw), NaN as a missing cell."""
    columns: dict[str, Any] = {}
    for j, spec in enumerate(schema):
        col = X[:, j]
        if is_category(spec):
            values = np.asarray([*spec["categories"], UNKNOWN], dtype=object)
            missing = np.isnan(col)
            picked = values[np.where(missing, 0, col).astype(np.int64)]
            picked[missing] = None
            columns[spec["name"]] = picked
        else:
            columns[spec["name"]] = col
    return pd.DataFrame(columns)


def complete_rows(frame: pd.DataFrame, schema: list[dict[str, Any]]) -> pd.DataFrame:
    """The rows the jobs can use (train on, embed): every feature present (or missing where the
    schema allows it), numbers finite and within ±``FEATURE_LIMIT`` as floats, categories as
    text. With a feature absent from the frame (rows of another feature set), none."""
    features = [f["name"] for f in schema]
    if frame.empty or any(f not in frame.columns for f in features):
        missing = [f for f in features if f not in frame.columns]
        return frame.iloc[0:0].reindex(columns=[*frame.columns, *missing])
    ok = np.ones(len(frame), dtype=bool)
    numbers: dict[str, pd.Series] = {}
    for spec in schema:
        col = frame[spec["name"]]
        absent = col.isna().to_numpy()
        if is_category(spec):
            valid = ~absent
        else:
            values = pd.to_numeric(col, errors="coerce")
            numbers[spec["name"]] = values
            valid = np.abs(values.to_numpy(dtype=float)) <= FEATURE_LIMIT  # NaN fails
            if nullable(spec):
                valid |= absent
        ok &= valid | (absent & nullable(spec))
    out = frame.loc[ok].copy()
    for name, values in numbers.items():
        out[name] = values.loc[ok].astype(float)
    return out


@dataclass
class Dataset:
    """A validated training set: features as read (numbers as floats, categories as text,
    missing cells as NaN), the target, the task and the feature schema."""

    name: str
    X: pd.DataFrame
    y: pd.Series
    target: str
    task: str = CLASSIFICATION
    class_names: dict[str, str] = field(default_factory=dict)
    sha256: str = ""
    raw: bytes = b""
    task_reason: str = ""

    @property
    def features(self) -> list[str]:
        return list(self.X.columns)


def _rows(mask: pd.Series | np.ndarray) -> str:
    # Line numbers as a user sees them in an editor: the header is line 1.
    flags = mask.to_numpy() if isinstance(mask, pd.Series) else mask
    lines = [str(int(i) + 2) for i in np.flatnonzero(flags)[:5]]
    more = int(flags.sum()) - len(lines)
    return ", ".join(lines) + (f" and {more} more" if more > 0 else "")


def infer_task(y: pd.Series) -> tuple[str, str]:
    """Classification or regression from the target's values, and why, in words a user can
    check: text or booleans are classes; whole numbers with at most ``MAX_CLASSES`` distinct
    values are classes; any other numbers are a quantity."""
    values = y.dropna()
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        numeric = pd.to_numeric(values, errors="coerce")
        if numeric.isna().any() or pd.api.types.is_bool_dtype(values):
            return CLASSIFICATION, "its values are not all numbers"
        values = numeric
    distinct = values.nunique()
    whole = bool(np.all(np.mod(values.to_numpy(dtype=float), 1) == 0))
    if whole and distinct <= MAX_CLASSES:
        return CLASSIFICATION, (
            f"its values are {distinct} distinct whole numbers, at most {MAX_CLASSES}"
        )
    kind = "whole numbers" if whole else "numbers with fractions"
    return REGRESSION, f"its values are {kind} with {distinct} distinct values"


def _feature_kinds(df: pd.DataFrame, features: list[str], name: str) -> dict[str, str]:
    kinds: dict[str, str] = {}
    for col in features:
        series = df[col]
        if series.isna().all():
            raise DatasetError(f"{name}: feature column {col!r} has no values at all")
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            kinds[col] = NUMBER
            continue
        distinct = series.dropna().map(category_value).nunique()
        if distinct > MAX_CATEGORIES:
            raise DatasetError(
                f"{name}: feature column {col!r} has {distinct} distinct text values, more "
                f"than the {MAX_CATEGORIES} a category may have (ids and free text are not "
                "categories); drop it or turn it into numbers"
            )
        kinds[col] = CATEGORY
    return kinds


def _check_numbers(df: pd.DataFrame, col: str, name: str) -> None:
    values = df[col].to_numpy(dtype=float)
    present = ~np.isnan(values)
    infinite = present & ~np.isfinite(values)
    if infinite.any():
        raise DatasetError(
            f"{name}: feature column {col!r} has infinite values at lines {_rows(infinite)}"
        )
    huge = present & (np.abs(values) > FEATURE_LIMIT)
    if huge.any():
        raise DatasetError(
            f"{name}: feature column {col!r} has values beyond ±{FEATURE_LIMIT:g} at lines "
            f"{_rows(huge)}, too large to train on"
        )


def _check_target(
    df: pd.DataFrame, target: str, task: str | None, name: str
) -> tuple[pd.Series, str, str]:
    y = df[target]
    missing = y.isna()
    if missing.any():
        raise DatasetError(f"{name}: target column {target!r} is empty at lines {_rows(missing)}")
    if task is not None and task not in TASKS:
        raise DatasetError(f"{name}: task {task!r} is not one of {list(TASKS)}")
    inferred, why = infer_task(y)
    reason = f"set to {task}" if task else f"read as {inferred}: {why}"
    task = task or inferred
    hint = (
        f" (the task was {reason}; set --task / MLPLATFORM_TASK if that is wrong)"
        if task == inferred
        else ""
    )
    if task == REGRESSION:
        values = pd.to_numeric(y, errors="coerce")
        bad = values.isna()
        if bad.any():
            raise DatasetError(
                f"{name}: target column {target!r} must be numbers for regression; "
                f"{y[bad].iloc[0]!r} at lines {_rows(bad)} is not"
            )
        arr = values.to_numpy(dtype=float)
        if not (np.isfinite(arr).all() and np.abs(arr).max() <= FEATURE_LIMIT):
            bad_rows = ~np.isfinite(arr) | (np.abs(arr) > FEATURE_LIMIT)
            raise DatasetError(
                f"{name}: target column {target!r} has infinite or too large values at lines "
                f"{_rows(bad_rows)}"
            )
        if values.nunique() < 2:
            raise DatasetError(f"{name}: target column {target!r} has a single value{hint}")
        if len(values) < MIN_REGRESSION_ROWS:
            raise DatasetError(
                f"{name}: {len(values)} rows, fewer than the {MIN_REGRESSION_ROWS} a "
                f"regression needs for a train/validation/test split{hint}"
            )
        return values.astype(float), task, reason
    counts = y.value_counts()
    if len(counts) < 2:
        only = to_builtin(counts.index[0])
        raise DatasetError(
            f"{name}: target column {target!r} has a single class ({only!r}); "
            f"at least two are needed{hint}"
        )
    small = counts[counts < MIN_ROWS_PER_CLASS]
    if not small.empty:
        shown = [to_builtin(c) for c in small.index[:10]]
        more = f" and {len(small) - 10} more" if len(small) > 10 else ""
        raise DatasetError(
            f"{name}: classes {shown}{more} of target {target!r} have fewer than "
            f"{MIN_ROWS_PER_CLASS} rows, too few for a stratified train/validation/test "
            f"split{hint}"
        )
    return y, task, reason


def parse_dataset(
    raw: bytes,
    target: str,
    *,
    name: str = "dataset",
    class_names: dict[str, str] | None = None,
    task: str | None = None,
) -> Dataset:
    """Parse and validate a training CSV given as bytes.

    Args:
        task: ``classification`` or ``regression``; default: ``infer_task``.

    Raises:
        DatasetError: unreadable CSV, no rows, missing target column, an empty column, a text
            column with too many values, empty rows, infinite values or values beyond
            ±``FEATURE_LIMIT``, a missing target, a target that does not fit the task, a
            single class or value, or too few rows (in a class).
    """
    try:
        df = pd.read_csv(io.BytesIO(raw), skip_blank_lines=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{name}: not a readable CSV file ({exc})") from None
    if target not in df.columns:
        raise DatasetError(
            f"{name}: target column {target!r} not found; the columns are {list(df.columns)}"
        )
    empty = df.isna().all(axis=1)
    if empty.any():
        raise DatasetError(f"{name}: empty rows at lines {_rows(empty)}")
    if df.empty:
        raise DatasetError(f"{name}: the file has a header but no rows")
    features = [c for c in df.columns if c != target]
    if not features:
        raise DatasetError(f"{name}: no feature columns besides the target {target!r}")
    clash = datalog.first_log_column(features)
    if clash is not None:
        raise DatasetError(
            f"{name}: feature column {clash!r} has the name of a column the platform adds to "
            "logged rows (prediction_id, ts, prediction, probability, proba_<n>, PCA_<n>, "
            "target, ...); rename it"
        )
    kinds = _feature_kinds(df, features, name)
    X = pd.DataFrame(index=df.index)
    for col in features:
        if kinds[col] == NUMBER:
            _check_numbers(df, col, name)
            X[col] = df[col].astype(float)
        else:
            X[col] = df[col].map(category_value, na_action="ignore").astype(object)
    y, task, reason = _check_target(df, target, task, name)
    return Dataset(
        name=name,
        X=X,
        y=y,
        target=target,
        task=task,
        class_names=dict(class_names or {}) if task == CLASSIFICATION else {},
        sha256=hashlib.sha256(raw).hexdigest(),
        raw=raw,
        task_reason=reason,
    )


def load_dataset(path: str | Path, target: str | None = None, task: str | None = None) -> Dataset:
    """Read a training CSV from disk; a ``<name>.meta.json`` beside it may name the target
    column, the task and the class names (as the shipped data sets do)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    meta_path = path.with_suffix(".meta.json")
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    same_target = meta.get("target", target) == (target or meta.get("target"))
    target = target or meta.get("target") or "target"
    return parse_dataset(
        path.read_bytes(),
        target,
        name=path.stem,
        class_names=meta.get("class_names") if same_target else None,
        task=task or (meta.get("task") if same_target else None),
    )


def feature_schema(X: pd.DataFrame) -> list[dict[str, Any]]:
    """Each feature of a data set as ``load_dataset`` gives it, in column order: its kind,
    whether it may be missing, a number's statistics, a category's values (sorted) and
    their shares."""
    out: list[dict[str, Any]] = []
    for col in X.columns:
        series = X[col]
        spec: dict[str, Any] = {"name": col, "nullable": bool(series.isna().any())}
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            values = series.dropna().astype(float)
            q = values.quantile([0.01, 0.5, 0.99])
            spec |= {
                "dtype": NUMBER,
                "min": float(values.min()),
                "max": float(values.max()),
                "mean": float(values.mean()),
                "std": float(values.std(ddof=0)),
                "median": float(q.loc[0.5]),
                "q01": float(q.loc[0.01]),
                "q99": float(q.loc[0.99]),
            }
        else:
            shares = series.dropna().map(category_value).value_counts(normalize=True)
            categories = sorted(shares.index)
            spec |= {
                "dtype": CATEGORY,
                "categories": categories,
                "shares": [round(float(shares[c]), 6) for c in categories],
            }
        out.append(spec)
    return out


def embedding_columns(n: int) -> list[str]:
    """The course's embedding column names: ``PCA_1 .. PCA_n``."""
    return [f"PCA_{i}" for i in range(1, n + 1)]


def embed(pipeline: Any, X: pd.DataFrame) -> pd.DataFrame:
    """Apply a fitted pipeline's embedding step: raw features -> ``PCA_1..PCA_n``.

    Every version carries its own embedding, so reference and production rows are always
    embedded by the same version (docs/architecture.md, "Models and versions").
    """
    Z = pipeline.named_steps["embedding"].transform(X)
    return pd.DataFrame(Z, columns=embedding_columns(Z.shape[1]), index=X.index)


def check_columns(columns: list[Any], schema: list[dict[str, Any]], name: str) -> None:
    """A table's header against a version's features: ``InvalidInput`` naming the features
    it lacks and the columns it should not have (any order is fine)."""
    features = [f["name"] for f in schema]
    header = [str(c) for c in columns]
    missing = [f for f in features if f not in header]
    extra = [c for c in header if c not in features]
    twice = sorted({c for c in header if header.count(c) > 1})
    if missing or extra or twice:
        parts = [f"missing {missing}"] if missing else []
        parts += [f"unexpected {extra}"] if extra else []
        parts += [f"named twice {twice}"] if twice else []
        raise InvalidInput(
            f"{name}: the columns must be the model's {len(features)} features: " + "; ".join(parts)
        )


def encode_checked(
    frame: pd.DataFrame, schema: list[dict[str, Any]], where: Callable[[int], str]
) -> np.ndarray:
    """A table of a version's features (numbers as numbers or as text, a missing cell as
    NaN/None) checked as serving checks a row, then ``encode``d: a number feature's values
    are finite numbers within ±``FEATURE_LIMIT``, and a value is missing only where the
    schema allows it; a category takes any text (one the version never saw is encoded as
    unknown). ``InvalidInput`` names the first bad cell (``where(row)``, the column)."""
    converted = pd.DataFrame(index=frame.index)
    for spec in schema:
        name = spec["name"]
        col = frame[name]
        absent = col.isna().to_numpy()
        if absent.any() and not nullable(spec):
            i = int(np.flatnonzero(absent)[0])
            raise InvalidInput(
                f"{where(i)}, column {name!r}: missing, and {name!r} may not be missing "
                "(it had a value in every training row)"
            )
        if is_category(spec):
            converted[name] = col
            continue
        if pd.api.types.is_bool_dtype(col):
            raise InvalidInput(f"column {name!r}: booleans, and {name!r} is a number feature")
        values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore"):
            bad = ~absent & ~(np.abs(values) <= FEATURE_LIMIT)  # NaN, inf, too large
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            cell = col.iloc[i]
            why = (
                f"{cell!r:.40} is not a number"
                if np.isnan(values[i])
                else f"{cell!r:.40} is not a finite number within ±{FEATURE_LIMIT:g}"
            )
            raise InvalidInput(f"{where(i)}, column {name!r}: {why}")
        converted[name] = values
    return encode(converted, schema)
