"""Production data in the store: the prediction log and the labelled feedback.

Serving writes, the reporter and retrainer read. S3 has no append, so nothing here rewrites a
shared object: predictions are written in batches, one new Parquet object per batch, and each
labelled row is one new JSON object. Object names start with the time in milliseconds, so a
time window is a filter on names before any object is read.

Labels are stored as strings (``"0"``, ``"malignant"``), whatever the model's class type, so
logs from every version line up; ``label_of`` maps them back to a version's classes.

The serving writes its log without a Python string per row, which cost it more than half of
the write (bench/BENCHMARKS.md): each prediction id as its request's shared part
(``request_id``, dictionary-encoded, one string per request) and its ``request_row``,
and the probabilities as one float column per class (``proba_0``, ``proba_1``, ...). Readers
get ``prediction_id`` and ``proba_json`` back (``expand_compact``), whichever way a batch was
written.
"""

from __future__ import annotations

import io
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

import numpy as np
import orjson
import pandas as pd

from mlplatform_common import keys
from mlplatform_common.errors import ObjectNotFound, StorageUnavailable
from mlplatform_common.storage import Store, json_bytes

# Where a logged row comes from: ``BATCH`` for the rows of a batch scoring job
# (``mlplatform_retrainer.batch``), which writes this column; the serving's batches have none,
# and readers give their rows ``ONLINE``, so logs written before the column read the same.
SOURCE_COLUMN = "log_source"
ONLINE = "online"
BATCH = "batch"
# Columns of every prediction log row as read, besides the raw features and PCA_* embedding
# columns.
PREDICTION_COLUMNS = [
    "prediction_id",
    "ts",
    "model_version",
    "prediction",
    "probability",
    "proba_json",
    "backup",
    SOURCE_COLUMN,
]
FEEDBACK_COLUMNS = [
    "feedback_id",
    "prediction_id",
    "ts",
    "model_version",
    "prediction",
    "target",
]


# The serving's compact form of a prediction id: its request's shared part and its row there.
COMPACT_ID_COLUMNS = ["request_id", "request_row"]
# The prediction log's Parquet compression, chosen by bench.log_format (bench/BENCHMARKS.md):
# none on the serving core; ZSTD when the reporter compacts a closed day (``compact_predictions``).
LOG_COMPRESSION: str | None = None
COMPACTED_COMPRESSION = "ZSTD"
# In a compacted object, each row's source batch name: its write time, for the time windows,
# and which batches the object holds, for a compaction that stopped before deleting them.
LOG_BATCH_COLUMN = "log_batch"
_OWN_COLUMN = re.compile(r"(PCA|proba)_\d+")


def first_log_column(names: Iterable[Any]) -> str | None:
    """The first of ``names`` that is a column of the log's own (ids, time, prediction,
    probabilities, embedding, label), or None: a feature of that name would collide with it
    in the logged rows."""
    own = {
        *PREDICTION_COLUMNS,
        *FEEDBACK_COLUMNS,
        *COMPACT_ID_COLUMNS,
        LOG_BATCH_COLUMN,
    }
    return next((str(n) for n in names if n in own or _OWN_COLUMN.fullmatch(str(n))), None)


def new_id() -> str:
    """A random 32-hex-digit id (feedback ids)."""
    return uuid.uuid4().hex


_ROW_DIGITS = 6  # a batch of up to 16,777,216 rows
_row_suffixes: list[str] = []
_row_suffixes_lock = threading.Lock()


class PredictionIds(Sequence[str]):
    """The prediction ids of one batch (``new_prediction_ids``), held as their shared part
    ``batch`` and a count: no string per row is made unless asked for (``json``,
    ``suffixes``). 1,000 id strings cost more than the model run of 1,000 rows
    (bench/BENCHMARKS.md)."""

    __slots__ = ("batch", "n")

    def __init__(self, batch: str, n: int) -> None:
        self.batch = batch
        self.n = n

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self.batch + s for s in self.suffixes()[i]]
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return self.batch + _row_suffixes[i % self.n]

    def __iter__(self) -> Iterator[str]:
        return map(self.batch.__add__, self.suffixes())

    def __repr__(self) -> str:
        return f"PredictionIds({self.batch!r}, {self.n})"

    def suffixes(self) -> list[str]:
        """Each row's part of its id, in order (the id is ``batch`` + suffix)."""
        return _row_suffixes[: self.n]

    def json(self) -> bytes:
        """The ids as a JSON array, ``orjson.dumps(list(self))``, made in one join."""
        if not self.n:
            return b"[]"
        between = '","' + self.batch
        return ('["' + self.batch + between.join(self.suffixes()) + '"]').encode()


def new_prediction_ids(n: int, ts: float) -> PredictionIds:
    """``n`` prediction ids for one batch, 32 hex digits each: the time in milliseconds (12),
    56 random bits shared by the batch (14), then the row's index in the batch (6).

    The time prefix lets ``find_prediction`` read only the log batches written after the
    prediction instead of a whole day's. The shared part lets the serving keep one index entry
    per batch, not per row (``prediction_batch``), and log a row's id as its batch and row
    number; ids of other batches stay unguessable.
    """
    if n > 16**_ROW_DIGITS:
        raise ValueError(f"a batch has at most {16**_ROW_DIGITS} prediction ids, not {n}")
    if len(_row_suffixes) < n:  # made once, reused by every batch
        with _row_suffixes_lock:
            more = range(len(_row_suffixes), n)
            _row_suffixes.extend(f"{i:0{_ROW_DIGITS}x}" for i in more)
    return PredictionIds(f"{int(ts * 1000):012x}{os.urandom(7).hex()}", n)


def prediction_id(batch: str, row: int) -> str:
    """The id of row ``row`` of the batch whose ids share ``batch`` (``prediction_batch``)."""
    return f"{batch}{row:0{_ROW_DIGITS}x}"


def prediction_batch(prediction_id: str) -> tuple[str, int] | None:
    """A ``new_prediction_ids`` id's batch (the shared part) and row, or None for another
    id format."""
    if prediction_time(prediction_id) is None:
        return None
    return prediction_id[:-_ROW_DIGITS], int(prediction_id[-_ROW_DIGITS:], 16)


def prediction_time(prediction_id: str) -> float | None:
    """The time a ``new_prediction_ids`` id was made, or None for another id format."""
    if len(prediction_id) != 32:
        return None
    try:
        int(prediction_id, 16)
    except ValueError:
        return None
    return int(prediction_id[:12], 16) / 1000


def _keys_between(store: Store, prefix: str, since: float | None, until: float | None) -> list[str]:
    """The objects holding rows written in ``(since, until]``: a compacted one whose batches
    span the window's edge too (its rows are filtered by ``_read_batch``)."""
    out = []
    for key in store.list_keys(prefix):
        first, last = keys.written_span(key)
        if (since is None or last > since) and (until is None or first <= until):
            out.append(key)
    return out


def parquet_bytes(rows: pd.DataFrame, compression: str | None) -> memoryview:
    """One batch of the prediction log as Parquet bytes."""
    buf = io.BytesIO()
    # No column statistics and declared string columns: a third less CPU per write, measured
    # (bench/BENCHMARKS.md); readers here filter in pandas, not by Parquet statistics. Only
    # text columns may hold nulls: numbers keep NaN as a value, as pandas does, and skip a
    # null count and definition levels per column (half the rest of the write). The columns
    # are named, not has_nulls="infer": with it fastparquet marks them required while it
    # writes their nulls, and pyarrow (so DuckDB, Spark) reads shifted values.
    rows.to_parquet(
        buf,
        engine="fastparquet",
        index=False,
        object_encoding="utf8",
        stats=False,
        has_nulls=[c for c, t in rows.dtypes.items() if t.kind == "O" or "str" in str(t)],
        compression=compression,
    )
    return buf.getbuffer()  # a view, not a copy


def write_predictions(store: Store, rows: pd.DataFrame, ts: float | None = None) -> str:
    """Write one batch of the prediction log as a new Parquet object; return its key."""
    ts = time.time() if ts is None else ts
    key = keys.predictions_batch(ts, new_id()[:12])
    store.put(key, parquet_bytes(rows, LOG_COMPRESSION), "application/vnd.apache.parquet")
    return key


def drop_expired_predictions(store: Store, keep_days: float, now: float) -> dict[str, int]:
    """Delete the prediction log's whole day partitions whose day ended more than
    ``keep_days`` days before ``now``: never today's, never one holding a younger row. The
    labelled rows (which carry their features) and the reports are kept. Returns how many
    partitions and objects went."""
    oldest_kept = now - keep_days * 86_400
    days, objects = set(), 0
    for key in store.list_keys(keys.PREDICTIONS):  # one listing for every day
        start = keys.partition_start(key)
        if start is not None and start + 86_400 <= oldest_kept:
            store.delete(key)
            days.add(start)
            objects += 1
    return {"partitions": len(days), "objects": objects}


def proba_json(proba: np.ndarray) -> list[str]:
    """Each row's probabilities as a JSON list (6 decimals), in one encode instead of n."""
    if not len(proba):
        return []
    rounded = np.ascontiguousarray(proba.round(6))
    text = orjson.dumps(rounded, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]
    return text.replace(b"],[", b"]\n[").decode().split("\n")


_PROBA_COLUMN = re.compile(r"proba_(\d+)")


def expand_compact(frame: pd.DataFrame) -> pd.DataFrame:
    """A batch the serving wrote compactly with ``prediction_id`` and ``proba_json`` columns
    in place of ``request_id``, ``request_row`` and ``proba_0..`` (other batches are left as they
    are)."""
    frame = frame.copy(deep=False)  # columns change below; the caller's frame does not
    if "request_id" in frame.columns and "request_row" in frame.columns:
        requests = frame.pop("request_id").astype(str).tolist()
        rows = frame.pop("request_row").tolist()
        frame.insert(0, "prediction_id", list(map(prediction_id, requests, rows)))
    matches = [(m, c) for c in frame.columns if (m := _PROBA_COLUMN.fullmatch(str(c)))]
    if matches and "proba_json" not in frame.columns:
        ordered = [c for _, c in sorted(matches, key=lambda mc: int(mc[0][1]))]
        proba = frame[ordered].to_numpy(dtype=np.float64)
        frame = frame.drop(columns=ordered)
        # Rows of a version with fewer classes (batches of two versions read together) have
        # NaN in the columns past theirs: each row gets its own classes' list.
        width = (~np.isnan(proba)).sum(axis=1)
        texts = np.empty(len(proba), dtype=object)
        for k in np.unique(width):
            same = width == k
            texts[same] = proba_json(proba[same, :k])
        frame["proba_json"] = texts
    return frame


def _read_batch(
    data: bytes,
    only: str | None = None,
    since: float | None = None,
    until: float | None = None,
) -> pd.DataFrame:
    """One log batch (or ``only`` the rows of that prediction id), as ``PREDICTION_COLUMNS``
    plus the features, embedding and ``SOURCE_COLUMN``: compact columns expanded,
    dictionary-encoded ones (model_version, prediction) as plain values. A compacted
    object's rows are those of its batches written in ``(since, until]``, as the batches' own
    keys would have chosen them."""
    frame = pd.read_parquet(io.BytesIO(data), engine="fastparquet")
    if LOG_BATCH_COLUMN in frame.columns:
        batches = frame.pop(LOG_BATCH_COLUMN).astype("category")
        if since is not None or until is not None:
            times = np.array([keys.written_at(n) for n in batches.cat.categories], dtype=float)
            written = times[batches.cat.codes.to_numpy()]
            keep = np.ones(len(frame), dtype=bool)
            if since is not None:
                keep &= written > since
            if until is not None:
                keep &= written <= until
            frame = frame[keep]
    if only is not None and "request_id" in frame.columns:  # narrowed before expanding
        batch = prediction_batch(only) or ("", -1)
        frame = frame[(frame["request_id"] == batch[0]) & (frame["request_row"] == batch[1])]
    frame = expand_compact(frame)
    if only is not None:
        frame = frame[frame["prediction_id"] == only]
    for column in frame.select_dtypes("category").columns:
        frame[column] = frame[column].astype(object)
    if SOURCE_COLUMN in frame.columns:
        frame[SOURCE_COLUMN] = frame[SOURCE_COLUMN].fillna(ONLINE)
    else:
        frame[SOURCE_COLUMN] = ONLINE
    return frame


_RELISTS = 5


def read_predictions(
    store: Store, since: float | None = None, until: float | None = None
) -> pd.DataFrame:
    """Every logged prediction whose batch was written in ``(since, until]``, oldest first."""
    for _ in range(_RELISTS):
        frames = []
        try:
            for key in _keys_between(store, keys.PREDICTIONS, since, until):
                frame = _read_batch(store.get(key), since=since, until=until)
                if len(frame) or not keys.is_compacted(key):  # nothing of it in the window
                    frames.append(frame)
            break
        except ObjectNotFound:
            # Compacted (or expired) between the listing and the read: the compacted object
            # was written before the batch went, so a new listing has its rows.
            continue
    else:
        raise StorageUnavailable(f"the prediction log kept changing during {_RELISTS} reads")
    if not frames:
        return pd.DataFrame(columns=PREDICTION_COLUMNS)
    frame = pd.concat(frames, ignore_index=True).sort_values("ts", kind="stable")
    # A batch whose write reached the store but whose answer did not (a timeout while a real
    # server stops or restarts) is kept and written again under a new key, and a compaction
    # writes its object before deleting the batches in it: each row is read once.
    return frame.drop_duplicates("prediction_id", keep="first")


def write_feedback(store: Store, row: dict[str, Any], ts: float | None = None) -> str:
    """Store one labelled row as its own object; return its key. Durable when this returns."""
    ts = time.time() if ts is None else ts
    feedback_id = row.get("feedback_id") or new_id()
    record = {**row, "feedback_id": feedback_id, "ts": ts}
    key = keys.feedback_row(ts, feedback_id)
    store.put(key, json_bytes(record), "application/json")
    return key


def feedback_keys(
    store: Store, since: float | None = None, until: float | None = None
) -> list[str]:
    """Keys of the labelled rows written in ``(since, until]``."""
    return _keys_between(store, keys.FEEDBACK, since, until)


def count_feedback(store: Store, since: float | None = None) -> int:
    """How many labelled rows arrived after ``since`` (a listing; no object is read)."""
    return len(feedback_keys(store, since))


class FeedbackCounter:
    """Counts labelled rows written after ``since`` without listing them all each time.

    Feedback object names start with their time, so each call lists only the tail of each day
    partition (S3 StartAfter), from a floor ``margin`` seconds below the newest key seen: a
    row whose write finished late (another replica, a slow request) is still counted, and the
    keys seen inside the margin are remembered so nothing is counted twice. A writer ``note``s
    its own keys, so with ``max_age`` it can answer without listing at all: other writers'
    rows then show up at most ``max_age`` seconds late.
    """

    def __init__(self, store: Store, since: float, margin: float = 120.0) -> None:
        self.store = store
        self.since = since
        self.margin = margin
        self._count = 0
        self._floor: dict[str, float] = {}
        self._seen: dict[str, float] = {}
        self._listed_at = float("-inf")
        self._lock = threading.Lock()

    def note(self, key: str) -> None:
        """Count a row this process just wrote, without listing."""
        ts = keys.written_at(key)
        with self._lock:
            if ts > self.since and key not in self._seen:
                self._seen[key] = ts
                self._count += 1

    def count(self, max_age: float = 0.0) -> int:
        """Labelled rows written after ``since``; lists the store only if the last listing is
        older than ``max_age`` seconds (exact once writes have settled)."""
        with self._lock:
            if time.monotonic() - self._listed_at < max_age:
                return self._count
            self._listed_at = time.monotonic()
            day = self.since - self.since % 86_400
            while day <= time.time():
                prefix = keys.feedback_day(day)
                floor = self._floor.get(prefix)
                start = prefix + keys.object_name(floor, "") if floor is not None else None
                newest = floor
                for key in self.store.list_keys(prefix, start_after=start):
                    ts = keys.written_at(key)
                    newest = ts if newest is None else max(newest, ts)
                    if ts > self.since and key not in self._seen:
                        self._seen[key] = ts
                        self._count += 1
                if newest is not None:
                    self._floor[prefix] = max(newest - self.margin, floor or 0.0)
                day += 86_400
            lowest = min(self._floor.values(), default=0.0)
            self._seen = {k: ts for k, ts in self._seen.items() if ts >= lowest}
            return self._count


def read_feedback(
    store: Store,
    since: float | None = None,
    until: float | None = None,
    *,
    one_per_prediction: bool = False,
) -> pd.DataFrame:
    """Labelled rows as a frame: the feedback columns, then one column per raw feature.

    ``one_per_prediction``: a prediction labelled more than once (a retried request, a
    correction) is one row, its latest label; what the jobs read. Without it, every stored
    row."""
    records = []
    for key in feedback_keys(store, since, until):
        try:
            record = store.get_json(key)
        except ObjectNotFound:
            continue  # deleted between list and read
        features = record.pop("features", {}) or {}
        records.append({**{c: record.get(c) for c in FEEDBACK_COLUMNS}, **features})
    if not records:
        return pd.DataFrame(columns=FEEDBACK_COLUMNS)
    frame = pd.DataFrame.from_records(records).sort_values("ts", kind="stable")
    if not one_per_prediction:
        return frame
    again = frame["prediction_id"].notna() & frame["prediction_id"].duplicated(keep="last")
    return frame.loc[~again]


def label_of(value: Any, classes: Iterable[Any]) -> Any:
    """Map a stored label string back to the matching class of a model (or leave it)."""
    for cls in classes:
        if str(cls) == str(value):
            return cls
    return value


def find_prediction(
    store: Store,
    prediction_id: str,
    days: int = 7,
    now: float | None = None,
    clock_skew: float = 60.0,
) -> dict[str, Any] | None:
    """Find one prediction in the log.

    An id that carries its time is looked up in the batches written after that time, oldest
    first (its batch is usually the first or second), then in those up to ``clock_skew``
    seconds before it;
    other ids are searched in the last ``days`` days, newest batch first.
    """
    now = time.time() if now is None else now
    for _ in range(_RELISTS):
        try:
            return _find_prediction(store, prediction_id, days, now, clock_skew)
        except ObjectNotFound:
            continue  # a batch compacted meanwhile: a new listing has its compacted object
    return None


def _find_prediction(
    store: Store, prediction_id: str, days: int, now: float, clock_skew: float
) -> dict[str, Any] | None:
    """``find_prediction`` over one listing; raises ObjectNotFound if an object listed went
    before it was read."""
    made = prediction_time(prediction_id)
    if made is not None and now - days * 86_400 <= made <= now + clock_skew:
        since = made - clock_skew
        day = since - since % 86_400
        candidates = []
        while day <= now:
            prefix = keys.predictions_day(day)
            candidates += store.list_keys(prefix, start_after=prefix + keys.object_name(since, ""))
            day += 86_400
        # Its batch was written after it: those first, oldest first; the clock-skew margin
        # (another replica's clock) only after them, nearest first.
        candidates.sort(key=lambda k: (keys.written_at(k) < made, abs(keys.written_at(k) - made)))
    else:
        candidates = [
            key
            for d in range(days)
            for key in reversed(store.list_keys(keys.predictions_day(now - d * 86_400)))
        ]
    for key in candidates:
        hit = _read_batch(store.get(key), only=prediction_id)
        if not hit.empty:
            row: dict[str, Any] = hit.iloc[0].to_dict()
            return row
    return None


def _read_raw(store: Store, key: str, columns: list[str] | None = None) -> pd.DataFrame:
    """A log object as written: compact columns, categories kept."""
    return pd.read_parquet(io.BytesIO(store.get(key)), engine="fastparquet", columns=columns)


def compact_predictions(
    store: Store, now: float, *, max_rows: int = 100_000, closed_after: float = 3_600.0
) -> dict[str, int]:
    """Rewrite each closed day's prediction log batches as ZSTD objects of at most
    ``max_rows`` rows (or one batch, if larger): the serving writes uncompressed, small
    objects, which cost less of its core (bench/BENCHMARKS.md). A day is closed
    ``closed_after`` seconds after it ends (writers' clocks and late writes); today is never
    touched.

    Readers see every row once throughout: a compacted object is written before its batches
    are deleted; a reader listing both drops the repeated prediction ids
    (``read_predictions``), and one whose batch went between its listing and its read lists
    again. Each row keeps its batch's name (``LOG_BATCH_COLUMN``), so the time windows choose
    the same rows as before. A compaction stopped between write and delete (a crash) leaves
    batches already in a compacted object: the next run deletes them instead of compacting
    them again. Batches of one set of columns and types go together (model versions of one
    schema), so each object reads back with its batches' columns.

    Returns the days, the batches rewritten, the objects written and the leftover batches
    deleted."""
    days: dict[str, list[str]] = {}
    for key in store.list_keys(keys.PREDICTIONS):  # one listing for every day
        start = keys.partition_start(key)
        if start is None or start + 86_400 + closed_after > now or not key.endswith(".parquet"):
            continue
        days.setdefault(key[: key.rindex("/") + 1], []).append(key)
    out = {"days": 0, "batches": 0, "objects": 0, "leftovers": 0}
    for prefix, day_keys in sorted(days.items()):
        # Only the serving's batches (a name that starts with its time): nothing foreign.
        batches = [k for k in day_keys if not keys.is_compacted(k) and keys.written_at(k) > 0]
        if not batches:
            continue
        out["days"] += 1
        done: set[str] = set()
        for key in day_keys:
            if keys.is_compacted(key):
                column = _read_raw(store, key, [LOG_BATCH_COLUMN])[LOG_BATCH_COLUMN]
                done.update(map(str, column.astype("category").cat.categories))
        group: dict[tuple[tuple[str, str], ...], list[tuple[str, pd.DataFrame]]] = {}
        for key in batches:
            name = key.rsplit("/", 1)[-1]
            if name in done:  # written into a compacted object by a run that stopped
                store.delete(key)
                out["leftovers"] += 1
                continue
            frame = _read_raw(store, key)
            schema = tuple((str(c), str(t)) for c, t in frame.dtypes.items())
            waiting = group.setdefault(schema, [])
            if waiting and sum(len(f) for _, f in waiting) + len(frame) > max_rows:
                _write_compacted(store, prefix, waiting, out)
                waiting.clear()
            waiting.append((key, frame))
        for waiting in group.values():
            if waiting:
                _write_compacted(store, prefix, waiting, out)
    return out


def _write_compacted(
    store: Store, prefix: str, batches: list[tuple[str, pd.DataFrame]], out: dict[str, int]
) -> None:
    """Write ``batches`` (one schema, in key order) as one ZSTD object, then delete them."""
    frames = [f for _, f in batches]
    names = [k.rsplit("/", 1)[-1] for k, _ in batches]
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].copy()
    # Categories of different batches (request ids) concatenate as plain strings: encoded
    # again, as the serving wrote them.
    for column, dtype in frames[0].dtypes.items():
        if isinstance(dtype, pd.CategoricalDtype) and not isinstance(
            frame[column].dtype, pd.CategoricalDtype
        ):
            frame[column] = frame[column].astype("category")
    codes = np.repeat(np.arange(len(frames), dtype=np.int32), [len(f) for f in frames])
    frame[LOG_BATCH_COLUMN] = pd.Categorical.from_codes(codes, names)
    stamps = [int(n.split("-", 1)[0]) for n in names]
    key = keys.compacted_batch(prefix, min(stamps), max(stamps), new_id()[:12])
    data = parquet_bytes(frame, COMPACTED_COMPRESSION)
    store.put(key, data, "application/vnd.apache.parquet")
    for source, _ in batches:  # only once the compacted object is stored
        store.delete(source)
    out["batches"] += len(batches)
    out["objects"] += 1
