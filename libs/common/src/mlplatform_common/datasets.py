"""Named training data sets in a model's part of the store, uploaded without local files.

One format for every writer (``make train``, ``POST /admin/datasets``, the retrainer's
``upload_dataset_file``): ``datasets/<name>/raw.csv`` (the CSV the model trains on; a Parquet
upload is stored as CSV) and ``datasets/<name>/meta.json`` (target, task, class names,
sha256, and a summary), written last: a data set without its meta is not one, so readers
(``train --dataset``, a retrain's reference, the reporter) never see half of one.

Only pandas and numpy (``schema.parse_dataset``): serving's image has no scikit-learn.
"""

from __future__ import annotations

import csv
import io
import re
import time
from typing import Any

import pandas as pd

from mlplatform_common import keys
from mlplatform_common.errors import (
    Conflict,
    DatasetError,
    InvalidInput,
    ObjectNotFound,
    PayloadTooLarge,
)
from mlplatform_common.schema import Dataset, feature_schema, parse_dataset
from mlplatform_common.storage import Store

DEFAULT_MAX_MB = 100.0
"""Default of ``MLPLATFORM_DATASET_MAX_MB``: the largest upload, as sent (CSV or Parquet)."""

MIN_ROWS = 10
"""Fewest rows a stored data set may have (a classification needs 5 per class anyway)."""

NAME = r"^[a-z0-9]([a-z0-9_-]{0,62}[a-z0-9])?$"

PARQUET_MAGIC = b"PAR1"


def check_name(name: str) -> str:
    """A data set's name, as a model's: lowercase letters, digits, '-' and '_' (the shipped
    ``breast_cancer``), at most 64; else ``InvalidInput`` naming the field."""
    if not re.match(NAME, name or ""):
        raise InvalidInput(
            f"name {name!r:.70}: use 1-64 lowercase letters, digits, '-' and '_', starting and "
            "ending with a letter or digit (e.g. 'churn-2024')"
        )
    return name


def max_bytes(max_mb: float) -> int:
    return int(max_mb * 1024 * 1024)


def too_large(max_mb: float) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"dataset: over the limit of {max_mb:g} MB (MLPLATFORM_DATASET_MAX_MB); nothing stored"
    )


def _header(raw: bytes) -> list[str]:
    """The CSV header as written: pandas would rename a repeated column ``a.1``."""
    first = raw.split(b"\n", 1)[0].decode("utf-8-sig", errors="strict").rstrip("\r")
    return next(csv.reader([first]), [])


def to_csv(raw: bytes, name: str) -> bytes:
    """The upload as the CSV bytes to store: a Parquet file (its magic at both ends) is read
    and written as CSV; anything else must be a UTF-8 CSV with a unique, non-empty header."""
    if not raw.strip():
        raise DatasetError(f"{name}: the file is empty")
    if raw[:4] == PARQUET_MAGIC and raw[-4:] == PARQUET_MAGIC and len(raw) > 8:
        try:
            frame = pd.read_parquet(io.BytesIO(raw))
        except Exception as exc:  # any reader failure is the file's fault
            raise DatasetError(f"{name}: not a readable Parquet file ({exc})"[:300]) from None
        columns = [str(c) for c in frame.columns]
        _check_header(columns, name)
        return frame.to_csv(index=False).encode()
    if b"\x00" in raw[:4096]:
        raise DatasetError(f"{name}: not a CSV or Parquet file (binary content)")
    try:
        columns = _header(raw)
    except UnicodeDecodeError:
        raise DatasetError(f"{name}: not a CSV file (its header is not UTF-8 text)") from None
    _check_header(columns, name)
    return raw


def _check_header(columns: list[str], name: str) -> None:
    if len(columns) < 2:
        raise DatasetError(
            f"{name}: not a CSV file with a header of at least two columns (a target and a "
            f"feature); the first line has {len(columns)}"
        )
    blank = [i + 1 for i, c in enumerate(columns) if not c.strip()]
    if blank:
        raise DatasetError(f"{name}: columns {blank} of the header have no name")
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        raise DatasetError(f"{name}: column names must be unique; named twice: {twice}")


def prepare(
    raw: bytes,
    name: str,
    target: str,
    *,
    task: str | None = None,
    features: list[str] | None = None,
) -> Dataset:
    """Validate an upload (CSV or Parquet bytes) as the data set ``name``.

    Args:
        features: the model's features, for a data set that retrains an existing model: the
            columns besides the target must be exactly these (any order).

    Raises:
        InvalidInput / DatasetError: naming the field or column and the problem.
    """
    check_name(name)
    if not target:
        raise InvalidInput("target: the name of the target column is required")
    csv_bytes = to_csv(raw, name)
    columns = _header(csv_bytes)
    if target not in columns:
        raise DatasetError(f"{name}: target column {target!r} not found; the columns are {columns}")
    if features is not None:
        given = [c for c in columns if c != target]
        missing = [f for f in features if f not in given]
        extra = [c for c in given if c not in features]
        if missing or extra:
            parts = [f"missing {missing}"] if missing else []
            parts += [f"unexpected {extra}"] if extra else []
            raise DatasetError(
                f"{name}: the columns besides the target must be the model's "
                f"{len(features)} features: " + "; ".join(parts)
            )
    dataset = parse_dataset(csv_bytes, target, name=name, task=task)
    if len(dataset.X) < MIN_ROWS:
        raise DatasetError(f"{name}: {len(dataset.X)} rows, fewer than the {MIN_ROWS} required")
    return dataset


def summary(dataset: Dataset) -> dict[str, Any]:
    """What a stored data set is: rows, columns, the feature schema, the task and why."""
    return {
        "name": dataset.name,
        "target": dataset.target,
        "task": dataset.task,
        "task_reason": dataset.task_reason,
        "rows": len(dataset.X),
        "columns": [*dataset.features, dataset.target],
        "schema": feature_schema(dataset.X),
        "bytes": len(dataset.raw),
        "sha256": dataset.sha256,
    }


def meta_of(dataset: Dataset) -> dict[str, Any]:
    """``meta.json``: what the readers parse the CSV with, plus the summary."""
    return {
        "target": dataset.target,
        "task": dataset.task,
        "class_names": dataset.class_names,
        "sha256": dataset.sha256,
        "summary": summary(dataset),
        "stored_at": time.time(),
    }


def write(store: Store, dataset: Dataset, *, replace: bool = False) -> dict[str, Any]:
    """Store a validated data set: the CSV, then its meta. Without ``replace`` an existing name
    is refused (``Conflict``): a version's manifest names its data set, which must not change
    under it. If the meta cannot be written, the CSV is removed again."""
    meta_key = keys.dataset(dataset.name, "meta.json")
    if not replace and store.exists(meta_key):
        raise Conflict(
            f"name: a dataset {dataset.name!r} already exists in the store; choose another name"
        )
    meta = meta_of(dataset)
    store.put(keys.dataset(dataset.name), dataset.raw, "text/csv")
    try:
        store.put_json(meta_key, meta)
    except BaseException:
        if not replace:
            store.delete(keys.dataset(dataset.name))
        raise
    summary_: dict[str, Any] = meta["summary"]
    return summary_


def load(store: Store, name: str, *, target: str | None = None, task: str | None = None) -> Dataset:
    """A stored data set, parsed as the retrainer trains on it: with the target and task its
    meta says, else ``target``/``task`` (data sets stored before the meta kept them). Every
    reader of a stored data set (training, retrains, the reporter) comes here."""
    try:
        meta = store.get_json(keys.dataset(name, "meta.json"))
        raw = store.get(keys.dataset(name))
    except ObjectNotFound:
        raise ObjectNotFound(
            f"dataset {name!r} is not in the store (upload it: POST /admin/datasets)"
        ) from None
    return parse_dataset(
        raw,
        meta.get("target") or target or "target",
        name=name,
        class_names=meta.get("class_names"),
        task=meta.get("task") or task,
    )


def stored(store: Store, name: str) -> bool:
    """Whether ``name`` is a complete data set of the store's model: its meta, written last,
    is there (one request, where ``listing`` reads every data set's)."""
    return store.exists(keys.dataset(name, "meta.json"))


def listing(store: Store) -> list[dict[str, Any]]:
    """Every complete data set (one with its meta) of the store's model, by name."""
    out = []
    for name in store.list_dirs(keys.DATASETS):
        try:
            meta = store.get_json(keys.dataset(name, "meta.json"))
        except ObjectNotFound:
            continue  # no meta: an upload in progress or one that failed
        info = dict(meta.get("summary") or {})
        info.pop("schema", None)
        out.append(
            {
                "name": name,
                "target": meta.get("target"),
                "task": meta.get("task"),
                **info,
                "stored_at": meta.get("stored_at"),
            }
        )
    return out


__all__ = [
    "DEFAULT_MAX_MB",
    "MIN_ROWS",
    "check_name",
    "listing",
    "load",
    "max_bytes",
    "meta_of",
    "prepare",
    "summary",
    "to_csv",
    "too_large",
    "write",
]
