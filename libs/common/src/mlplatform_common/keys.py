"""Object store layout: every key the platform reads or writes (docs/architecture.md,
"Object store layout").

Nothing else spells a key or a prefix, and nothing else takes one apart: the prediction log and
the labelled rows are partitioned by UTC day (``dt=YYYY-MM-DD/``) and their object names start
with the write time in milliseconds, so a time window is a filter on names (``written_at``)
before any object is read.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

MODELS = "models/"
DATASETS = "datasets/"
PRODUCTION_ALIAS = "registry/production.json"
PREDICTIONS = "production/predictions/"
FEEDBACK = "production/feedback/"
PROD_DATA = "production/prod_data.csv"
REPORTS = "reports/"
RETRAIN_LOCK = "state/retrain.lock"
RETRAIN_RUNS = "state/retrain-runs/"
RETRAIN_STATS = "state/retrain-stats.json"
WATERMARK = "state/watermark.json"
TRIGGERS = "state/triggers/"
UPLOADS = "uploads/"

_TIME_DIGITS = 15  # milliseconds since the epoch, zero-padded so names sort by time

# Named models. Every key below is relative to one model's root: the default name's root is
# the store's root, so a store written before models had names is that model, unmoved; any
# other name lives under ``named/<name>/``. Names are DNS-label-like: they end up in
# Kubernetes names, V2 URLs and Prometheus labels.
DEFAULT_MODEL = "mlplatform"
NAMED = "named/"
MODEL_NAME = r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$"


def check_model_name(name: str) -> str:
    """``name`` if it is a valid model name; else ValueError saying what one looks like."""
    if not re.match(MODEL_NAME, name):
        raise ValueError(
            f"model name {name!r:.60}: use 1-40 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit (e.g. 'fraud', 'churn-eu')"
        )
    return name


def model_root(name: str) -> str:
    """The prefix every key of the named model lives under ('' for the default name)."""
    return "" if check_model_name(name) == DEFAULT_MODEL else f"{NAMED}{name}/"


def dataset(name: str, filename: str = "raw.csv") -> str:
    """A shipped or uploaded training data set."""
    return f"{DATASETS}{name}/{filename}"


def model_file(version: str, filename: str) -> str:
    """One file of a published model version."""
    return f"{MODELS}{version}/{filename}"


def model_version_of(key: str) -> str:
    """The version a ``model_file`` key belongs to (``models/v3/manifest.json`` -> ``v3``)."""
    return key.removeprefix(MODELS).split("/", 1)[0]


def day(ts: float) -> str:
    """The UTC day of a time, as its partitions name it (``YYYY-MM-DD``)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def object_name(ts: float, suffix: str) -> str:
    """A log object's name: its write time in milliseconds, then ``suffix``. With an empty
    suffix, the name every object written after ``ts`` sorts after (S3 ``StartAfter``)."""
    return f"{int(ts * 1000):0{_TIME_DIGITS}d}-{suffix}"


def written_at(key: str) -> float:
    """The write time encoded in a log object's name (0 if the name is foreign)."""
    head = key.rsplit("/", 1)[-1].split("-", 1)[0]
    return int(head) / 1000 if head.isdigit() else 0.0


def partition_start(key: str, prefix: str = PREDICTIONS) -> float | None:
    """The UTC midnight the day partition (``<prefix>dt=YYYY-MM-DD/``) of a log key begins at;
    None for a key outside one."""
    name = key.removeprefix(prefix).split("/", 1)[0] if key.startswith(prefix) else ""
    if not name.startswith("dt="):
        return None
    try:
        day = datetime.strptime(name.removeprefix("dt="), "%Y-%m-%d")
    except ValueError:
        return None
    return day.replace(tzinfo=UTC).timestamp()


def predictions_day(ts: float) -> str:
    """The prefix of the prediction log batches written on the UTC day of ``ts``."""
    return f"{PREDICTIONS}dt={day(ts)}/"


def predictions_batch(ts: float, batch_id: str) -> str:
    """One batch of the prediction log, written at ``ts``."""
    return predictions_day(ts) + object_name(ts, f"{batch_id}.parquet")


def compacted_batch(day_prefix: str, first_ms: int, last_ms: int, object_id: str) -> str:
    """A closed day's log batches rewritten as one object (``datalog.compact_predictions``),
    under that day's prefix: named by its newest batch's time, so a listing from a time on
    (S3 ``StartAfter``) that would list one of its batches lists it too, then ``c`` and its
    oldest batch's time (``written_span``)."""
    return (
        f"{day_prefix}{last_ms:0{_TIME_DIGITS}d}-c{first_ms:0{_TIME_DIGITS}d}-{object_id}.parquet"
    )


def _compacted_first(key: str) -> int | None:
    """A ``compacted_batch`` key's oldest batch time in milliseconds; None for another key
    (a batch's id is hex followed by ``.parquet``, never ``c`` and digits alone)."""
    middle = key.rsplit("/", 1)[-1].split("-")[1:2]
    if middle and middle[0][:1] == "c" and middle[0][1:].isdigit():
        return int(middle[0][1:])
    return None


def written_span(key: str) -> tuple[float, float]:
    """The write times of the oldest and the newest batch a log object holds: both its
    ``written_at`` but for a ``compacted_batch``."""
    first = _compacted_first(key)
    last = written_at(key)
    return (last if first is None else first / 1000), last


def is_compacted(key: str) -> bool:
    """A ``compacted_batch`` key."""
    return _compacted_first(key) is not None


def feedback_day(ts: float) -> str:
    """The prefix of the labelled rows written on the UTC day of ``ts``."""
    return f"{FEEDBACK}dt={day(ts)}/"


def feedback_row(ts: float, feedback_id: str) -> str:
    """One labelled row, written at ``ts``."""
    return feedback_day(ts) + object_name(ts, f"{feedback_id}.json")


def feedback_id(key: str) -> str:
    """The feedback id a ``feedback_row`` key was made with."""
    return key.rsplit("/", 1)[-1].split("-", 1)[1].removesuffix(".json")


def report_file(report_id: str, filename: str) -> str:
    """One file of an archived report (``report.html`` or ``summary.json``)."""
    return f"{REPORTS}{report_id}/{filename}"


def retrain_run(stamp: str) -> str:
    """The record of one retrainer run (``stamp`` sorts by time)."""
    return f"{RETRAIN_RUNS}{stamp}.json"


# The stamp the retrainer names a run record with (``%Y%m%dT%H%M%S%f``).
RETRAIN_RUN_STAMP = r"^\d{8}T\d{12}$"


def retrain_run_stamp(key: str) -> str | None:
    """The stamp of a ``retrain_run`` key; None for a foreign object under the prefix."""
    stamp = key.removeprefix(RETRAIN_RUNS).removesuffix(".json")
    if not key.startswith(RETRAIN_RUNS) or not key.endswith(".json"):
        return None
    return stamp if re.match(RETRAIN_RUN_STAMP, stamp) else None


def trigger(name: str) -> str:
    """A marker whose atomic creation lets one replica start a retrainer run."""
    return f"{TRIGGERS}{name}.json"


# A model upload's id (``actions.register``'s argument: the annotation the chart's policy admits).
UPLOAD_ID = r"^[a-z0-9]{1,32}$"


def upload_file(upload_id: str, filename: str) -> str:
    """One object of a model upload (``POST /admin/models``): the model file, its reference
    data, the request and the registration's outcome (``mlplatform_common.uploads``)."""
    if not re.match(UPLOAD_ID, upload_id):
        raise ValueError(f"upload id {upload_id!r:.60}: expected 1-32 lowercase letters or digits")
    return f"{UPLOADS}{upload_id}/{filename}"
