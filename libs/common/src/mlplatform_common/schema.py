"""Training data sets and feature schemas.

A training CSV has one target column and numeric feature columns. ``load_dataset`` refuses
anything else with a message that names the column or row; ``feature_schema`` records what
the model was trained on (names, ranges, quantiles), which serving uses to validate inputs.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlplatform_common import datalog
from mlplatform_common.errors import DatasetError
from mlplatform_common.quality import to_builtin

MIN_ROWS_PER_CLASS = 5

FEATURE_LIMIT = 1e150
"""The largest feature magnitude the platform takes, in training data, predictions and
feedback. The squares of 10^8 such values still sum to a finite float64 (scaling, variances,
drift statistics); a row of 1e200 makes them infinite and a retrain on it fail."""


def in_range(X: np.ndarray) -> bool:
    """Whether every value is finite and within ±``FEATURE_LIMIT`` (NaN fails both tests).
    Two reductions, no temporary array: it runs on every prediction. Compared as Python
    floats: in float32, the limit itself would be infinite."""
    return X.size == 0 or (float(X.max()) <= FEATURE_LIMIT and float(X.min()) >= -FEATURE_LIMIT)


def complete_rows(frame: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """The rows the jobs can use (train on, embed): every feature present as a number that is
    finite and within ±``FEATURE_LIMIT``, as floats. With a feature missing from the frame
    (rows of another feature set), none, with every feature as a column."""
    if frame.empty or any(f not in frame.columns for f in features):
        missing = [f for f in features if f not in frame.columns]
        return frame.iloc[0:0].reindex(columns=[*frame.columns, *missing])
    values = frame[features].apply(pd.to_numeric, errors="coerce")
    ok = (np.abs(values.to_numpy(dtype=float)) <= FEATURE_LIMIT).all(axis=1)  # NaN fails
    out = frame.loc[ok].copy()
    out[features] = values.loc[ok].astype(float)
    return out


@dataclass
class Dataset:
    """A validated training set."""

    name: str
    X: pd.DataFrame
    y: pd.Series
    target: str
    class_names: dict[str, str] = field(default_factory=dict)
    sha256: str = ""
    raw: bytes = b""

    @property
    def features(self) -> list[str]:
        return list(self.X.columns)


def _rows(mask: pd.Series) -> str:
    # Line numbers as a user sees them in an editor: the header is line 1.
    lines = [str(int(i) + 2) for i in np.flatnonzero(mask.to_numpy())[:5]]
    more = int(mask.sum()) - len(lines)
    return ", ".join(lines) + (f" and {more} more" if more > 0 else "")


def parse_dataset(
    raw: bytes,
    target: str,
    *,
    name: str = "dataset",
    class_names: dict[str, str] | None = None,
) -> Dataset:
    """Parse and validate a training CSV given as bytes.

    Raises:
        DatasetError: unreadable CSV, no rows, missing target column, non-numeric features,
            empty rows or missing values, infinite values or values beyond ±``FEATURE_LIMIT``,
            a single class, or too few rows in a class.
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
    for col in features:
        if not pd.api.types.is_numeric_dtype(df[col]) or pd.api.types.is_bool_dtype(df[col]):
            numeric = pd.to_numeric(df[col], errors="coerce")
            bad = numeric.isna() & df[col].notna()
            example = df[col][bad].iloc[0] if bad.any() else df[col].iloc[0]
            raise DatasetError(
                f"{name}: feature column {col!r} is not numeric "
                f"(value {example!r} at lines {_rows(bad)})"
            )
        missing = df[col].isna()
        if missing.any():
            raise DatasetError(
                f"{name}: feature column {col!r} has missing values at lines {_rows(missing)}"
            )
        infinite = ~np.isfinite(df[col].to_numpy(dtype=float))
        if infinite.any():
            lines = _rows(pd.Series(infinite))
            raise DatasetError(
                f"{name}: feature column {col!r} has infinite values at lines {lines}"
            )
        huge = pd.Series(np.abs(df[col].to_numpy(dtype=float)) > FEATURE_LIMIT)
        if huge.any():
            raise DatasetError(
                f"{name}: feature column {col!r} has values beyond ±{FEATURE_LIMIT:g} at lines "
                f"{_rows(huge)}, too large to train on"
            )
    missing_target = df[target].isna()
    if missing_target.any():
        raise DatasetError(
            f"{name}: target column {target!r} is empty at lines {_rows(missing_target)}"
        )
    counts = df[target].value_counts()
    if len(counts) < 2:
        only = to_builtin(counts.index[0])
        raise DatasetError(
            f"{name}: target column {target!r} has a single class ({only!r}); "
            "at least two are needed"
        )
    small = counts[counts < MIN_ROWS_PER_CLASS]
    if not small.empty:
        raise DatasetError(
            f"{name}: classes {[to_builtin(c) for c in small.index]} of target {target!r} "
            f"have fewer than {MIN_ROWS_PER_CLASS} rows, "
            "too few for a stratified train/validation/test split"
        )
    return Dataset(
        name=name,
        X=df[features].astype(float),
        y=df[target],
        target=target,
        class_names=dict(class_names or {}),
        sha256=hashlib.sha256(raw).hexdigest(),
        raw=raw,
    )


def load_dataset(path: str | Path, target: str | None = None) -> Dataset:
    """Read a training CSV from disk; a ``<name>.meta.json`` beside it may name the target
    column and the class names (as the shipped data set does)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    meta_path = path.with_suffix(".meta.json")
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    target = target or meta.get("target") or "target"
    return parse_dataset(
        path.read_bytes(),
        target,
        name=path.stem,
        class_names=meta.get("class_names") if meta.get("target", target) == target else None,
    )


def feature_schema(X: pd.DataFrame) -> list[dict[str, Any]]:
    """Per-feature statistics of the training data, in column order."""
    q = X.quantile([0.01, 0.5, 0.99])
    return [
        {
            "name": col,
            "dtype": "float",
            "min": float(X[col].min()),
            "max": float(X[col].max()),
            "mean": float(X[col].mean()),
            "std": float(X[col].std(ddof=0)),
            "median": float(q.loc[0.5, col]),
            "q01": float(q.loc[0.01, col]),
            "q99": float(q.loc[0.99, col]),
        }
        for col in X.columns
    ]


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
