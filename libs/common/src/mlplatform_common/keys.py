"""Object store layout (DESIGN.md section 4): every key the platform reads or writes."""

from __future__ import annotations

MODELS = "models/"
PRODUCTION_ALIAS = "registry/production.json"
PREDICTIONS = "production/predictions/"
FEEDBACK = "production/feedback/"
PROD_DATA = "production/prod_data.csv"
REPORTS = "reports/"
RETRAIN_LOCK = "state/retrain.lock"
WATERMARK = "state/watermark.json"
TRIGGERS = "state/triggers/"


def dataset(name: str, filename: str = "raw.csv") -> str:
    """A shipped or uploaded training data set."""
    return f"datasets/{name}/{filename}"


def model_file(version: str, filename: str) -> str:
    """One file of a published model version."""
    return f"{MODELS}{version}/{filename}"


def predictions_batch(day: str, batch_id: str) -> str:
    """One batch of the prediction log (``day`` is ``YYYY-MM-DD``)."""
    return f"{PREDICTIONS}dt={day}/{batch_id}.parquet"


def feedback_row(day: str, row_id: str) -> str:
    """One labelled row."""
    return f"{FEEDBACK}dt={day}/{row_id}.json"


def report_file(report_id: str, filename: str) -> str:
    """One file of an archived report (``report.html`` or ``summary.json``)."""
    return f"{REPORTS}{report_id}/{filename}"


def trigger(name: str) -> str:
    """A marker whose atomic creation lets one replica start a retrainer run."""
    return f"{TRIGGERS}{name}.json"
