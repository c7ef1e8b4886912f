"""Batch predictions of an uploaded CSV: chunks, and row by row where a chunk is refused.

Plain logic (no Streamlit): the Batch page gives it rows and an :class:`ApiClient`, and shows
the progress it reports.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from mlplatform_webapp.api_client import ApiClient, ApiRejected, ApiUnavailable

TARGET = "target"
PREDICTION_COLUMNS = {
    "classification": ["label_name", "label", "probability", "prediction_id", "model_version"],
    "regression": ["value", "prediction_id", "model_version"],
}


class BatchFileError(ValueError):
    """The file cannot be predicted at all (one line for the page)."""


@dataclass
class Upload:
    """An uploaded CSV split into what is sent and what is kept aside."""

    rows: list[dict[str, Any]]
    frame: pd.DataFrame
    ignored: list[str] = field(default_factory=list)
    has_target: bool = False
    target: str = TARGET


@dataclass
class BatchResult:
    """Every row's answer or reason, in the file's order."""

    table: pd.DataFrame
    failed: pd.DataFrame
    stopped: str | None = None

    @property
    def predicted(self) -> int:
        return int(self.table["error"].isna().sum())


def _cell(value: str, category: bool = False) -> Any:
    text = value.strip()
    if not text:
        return None  # the API names the missing value
    if category:
        return text  # a category is text, even when it reads as a number ("3")
    try:
        number = float(text)
    except ValueError:
        return text  # the API names the column and says it is not a number
    return number if math.isfinite(number) else text


def read_upload(
    data: bytes,
    features: list[str],
    categories: frozenset[str] | set[str] = frozenset(),
    target: str | None = None,
) -> Upload:
    """Parse a CSV of raw features (optionally with the target and other columns).

    Args:
        data: the file.
        features: the model's feature names, in order.
        categories: the features that are categories (sent as text).
        target: the data set's target column, kept beside the predictions (``target`` is
            always recognised too, the shipped data set's name).

    Raises:
        BatchFileError: unreadable, empty, embedding-space, or missing feature columns.
    """
    try:
        frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BatchFileError(f"The file is not a readable CSV: {first}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if frame.empty:
        raise BatchFileError("The file has a header but no rows.")
    missing = [f for f in features if f not in frame.columns]
    if missing:
        if any(c.upper().startswith("PCA_") for c in frame.columns):
            raise BatchFileError(
                "The file is in embedding space (PCA_1, PCA_2, …); upload raw features: "
                f"{features[0]}, {features[1] if len(features) > 1 else ''} …"
            )
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise BatchFileError(f"The file lacks the feature column {missing[0]!r}{more}.")
    found = next((t for t in (target, TARGET) if t and t in frame.columns), None)
    ignored = [c for c in frame.columns if c not in features and c != found]
    rows = [
        {f: _cell(v, f in categories) for f, v in zip(features, r, strict=True)}
        for r in frame[features].values
    ]
    return Upload(
        rows=rows,
        frame=frame,
        ignored=ignored,
        has_target=found is not None,
        target=found or TARGET,
    )


def chunks(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, max(1, size)):
        yield range(start, min(n, start + max(1, size)))


def predict_rows(
    client: ApiClient,
    rows: list[dict[str, Any]],
    chunk_rows: int = 200,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[dict[str, Any] | None], list[str | None], str | None]:
    """Predict every row: chunk by chunk, row by row inside a chunk the API refused.

    Returns per row the prediction (or None), the API's reason (or None), and the reason the
    run stopped early if the API became unavailable (rows not sent say so).
    """
    answers: list[dict[str, Any] | None] = [None] * len(rows)
    reasons: list[str | None] = [None] * len(rows)
    done = 0
    for part in chunks(len(rows), chunk_rows):
        try:
            try:
                body = client.predict([rows[i] for i in part])
                for i, p in zip(part, body["predictions"], strict=True):
                    answers[i] = p
            except ApiRejected:
                for i in part:  # find the bad rows; the good ones are still predicted
                    try:
                        answers[i] = client.predict([rows[i]])["predictions"][0]
                    except ApiRejected as exc:
                        reasons[i] = exc.message.replace("instances[0]", "row", 1)
        except ApiUnavailable as exc:
            for i in range(part.start, len(rows)):
                if answers[i] is None and reasons[i] is None:
                    reasons[i] = "not predicted: the API became unavailable"
            return answers, reasons, exc.message
        done += len(part)
        if progress is not None:
            progress(done, len(rows))
    return answers, reasons, None


def result_table(
    upload: Upload,
    answers: list[dict[str, Any] | None],
    reasons: list[str | None],
    task: str = "classification",
) -> pd.DataFrame:
    """Each row's prediction first (a class with its probability, or a regression's ``value``),
    its id and ``error``, then the uploaded columns: what a reader looks for leads."""
    out = pd.DataFrame({"row": range(1, len(upload.frame) + 1)})
    for col in PREDICTION_COLUMNS.get(task, PREDICTION_COLUMNS["classification"]):
        # object dtype: a failed row's None must not turn integer labels into floats
        out[col] = pd.Series([a.get(col) if a else None for a in answers], dtype=object)
    out["error"] = reasons
    uploaded = upload.frame.reset_index(drop=True)
    # an uploaded column of the same name as ours (a file of earlier results) keeps a suffix
    uploaded = uploaded.rename(columns={c: f"{c} (file)" for c in uploaded if c in out.columns})
    return pd.concat([out, uploaded], axis=1)


def run(
    client: ApiClient,
    upload: Upload,
    chunk_rows: int = 200,
    progress: Callable[[int, int], None] | None = None,
    task: str = "classification",
) -> BatchResult:
    """Predict an upload and tabulate the answers."""
    answers, reasons, stopped = predict_rows(client, upload.rows, chunk_rows, progress)
    table = result_table(upload, answers, reasons, task)
    failed = table.loc[table["error"].notna(), ["row", "error"]].reset_index(drop=True)
    return BatchResult(table=table, failed=failed, stopped=stopped)


def accuracy(table: pd.DataFrame, target: str = TARGET) -> float | None:
    """Share of predicted rows whose label equals the file's target (if it has one)."""
    if target not in table.columns or "label" not in table.columns:
        return None
    ok = table[table["error"].isna()]
    if ok.empty:
        return None
    return float((ok[target].astype(str).str.strip() == ok["label"].astype(str)).mean())


def errors(table: pd.DataFrame, target: str = TARGET) -> dict[str, float] | None:
    """A regression's MAE and RMSE against the file's target, over the predicted rows whose
    target is a number (None without a target or such rows)."""
    if target not in table.columns or "value" not in table.columns:
        return None
    ok = table[table["error"].isna()]
    truth = pd.to_numeric(ok[target], errors="coerce")
    predicted = pd.to_numeric(ok["value"], errors="coerce")
    both = truth.notna() & predicted.notna()
    if not both.any():
        return None
    diff = (predicted[both] - truth[both]).to_numpy(dtype=float)
    return {
        "mae": float(abs(diff).mean()),
        "rmse": float((diff**2).mean() ** 0.5),
        "rows": float(both.sum()),
    }
