"""Bulk labels: a CSV of ``prediction_id,target`` read, sent in batches, answered row by row
(plain logic; the Label page draws it)."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from mlplatform_webapp.api_client import ApiClient, ApiError, ApiRejected

COLUMNS = ("prediction_id", "target")


class LabelFileError(ValueError):
    """The CSV cannot be labelled (unreadable, empty, or without the two columns)."""


@dataclass
class Labels:
    """The file's rows, as the API takes them, and the file itself for the result table."""

    items: list[dict[str, Any]]
    frame: pd.DataFrame


def _target(value: str, regression: bool, classes: dict[str, Any]) -> Any:
    text = value.strip()
    if text in classes:  # a class as the card spells it, or its readable name
        return classes[text]
    if regression:
        try:
            number = float(text)
        except ValueError:
            return text  # the API names the row and why
        return number if math.isfinite(number) else text
    try:
        number = float(text)
    except ValueError:
        return text
    # class labels are ints in the card ("1", "1.0"); anything else goes as written
    return int(number) if number.is_integer() else number


def read_labels(
    data: bytes, regression: bool = False, classes: dict[str, Any] | None = None
) -> Labels:
    """Read a CSV with ``prediction_id`` and ``target`` columns (others are ignored).

    ``classes``: the card's readable name -> class value; a target written as either is sent
    as the class value (``Adelie`` stays text, ``1`` becomes the number 1).

    Raises:
        LabelFileError: unreadable, empty, or a column missing.
    """
    try:
        frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise LabelFileError(f"The file is not a readable CSV: {exc}".splitlines()[0]) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise LabelFileError(
            f"The file has no {' or '.join(missing)} column: it needs prediction_id,target "
            f"(found: {', '.join(frame.columns) or 'nothing'})."
        )
    if frame.empty:
        raise LabelFileError("The file has a header and no row.")
    frame = frame[list(COLUMNS)].reset_index(drop=True)
    lookup = {**{str(v): v for v in (classes or {}).values()}, **(classes or {})}
    items = [
        {"prediction_id": str(pid).strip(), "target": _target(str(t), regression, lookup)}
        for pid, t in zip(frame["prediction_id"], frame["target"], strict=True)
    ]
    return Labels(items=items, frame=frame)


def send(
    client: ApiClient,
    labels: Labels,
    chunk_rows: int = 100,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[pd.DataFrame, str | None]:
    """Send the labels in batches; returns one result row per label (``row``, ``prediction_id``,
    ``target``, ``result``, ``feedback_id``, ``reason``) and, if the API stopped answering,
    why (the rows not sent then say so)."""
    n = len(labels.items)
    results: list[dict[str, Any]] = [{} for _ in range(n)]
    stopped: str | None = None
    for start in range(0, n, max(chunk_rows, 1)):
        chunk = labels.items[start : start + chunk_rows]
        try:
            answer = client.feedback_batch(chunk)
        except ApiRejected as exc:
            # the whole batch was refused (too large, bad token): every row of it says why
            for i in range(len(chunk)):
                results[start + i] = {"status": exc.status, "error": exc.message}
        except ApiError as exc:
            stopped = exc.message
            break
        else:
            for result in answer.get("results") or []:
                index = result.get("index") if isinstance(result, dict) else None
                if isinstance(index, int) and 0 <= index < len(chunk):
                    results[start + index] = result
        if progress:
            progress(min(start + len(chunk), n), n)
    return result_table(labels, results), stopped


def result_table(labels: Labels, results: list[dict[str, Any]]) -> pd.DataFrame:
    """The file's rows, each with ``stored`` or ``failed`` and the reason."""
    out = labels.frame.copy()
    out.insert(0, "row", range(1, len(out) + 1))
    status = []
    for r in results:
        code = r.get("status")
        if not r:
            status.append("not sent")
        elif isinstance(code, int) and 200 <= code < 300:
            status.append("stored")
        else:
            status.append("failed")
    out["result"] = status
    out["feedback_id"] = [r.get("feedback_id") for r in results]
    out["reason"] = [
        r.get("error") or ("the API stopped answering" if not r else None) for r in results
    ]
    return out
