"""The prediction log: buffered in memory, written to the store in Parquet batches.

Requests only append their arrays to a buffer; a background thread turns them into rows
(raw features, the version's embedding, prediction, probabilities, ids) and writes a batch when
enough rows are waiting or the oldest is old enough, and once more at shutdown. If the store
is down the rows stay buffered (up to a bound; beyond it the oldest are dropped and counted)
and predictions keep answering. Recent predictions also stay in a bounded in-memory index, so
``/feedback`` by ``prediction_id`` needs no store read in the common case.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mlplatform_common import datalog
from mlplatform_common.errors import MLPlatformError
from mlplatform_common.schema import embedding_columns
from mlplatform_common.storage import Store
from mlplatform_serving.runtime import BatchResult, top_of

logger = logging.getLogger("mlplatform.serving")


# What an entry costs besides its arrays (its result and index objects, measured for a
# one-row request), of which a request's key and offset are the part not shared by the
# requests of one event-loop turn.
ENTRY_BYTES = 1792
REQUEST_BYTES = 256


@dataclass(slots=True)
class Entry:
    """One answered batch (one request's rows, or several requests' predicted together)."""

    result: BatchResult
    ts: float
    # Each request's ids' shared part -> its index k; its rows are offsets[k]:offsets[k + 1].
    # A dict of strings and ints is not tracked by the cyclic collector: a tuple per request
    # was, and each full collection then walked every cached request (bench/BENCHMARKS.md).
    # No id strings are kept: a row's id is its request's part and its row number
    # (``datalog.prediction_id``).
    requests: dict[str, int] = field(default_factory=dict)
    offsets: list[int] = field(default_factory=lambda: [0])
    nbytes: int = 0

    def __len__(self) -> int:
        return self.offsets[-1]

    def measure(self) -> None:
        """Set ``nbytes``: about what holding this entry costs."""
        result = self.result
        arrays = result.X.nbytes + result.proba.nbytes + result.label_index.nbytes
        arrays += 0 if result.value is None else result.value.nbytes
        arrays += 0 if result.embedding is None else result.embedding.nbytes
        arrays += 8 * len(result.X)  # result.top, once the metrics have read it
        self.nbytes = arrays + ENTRY_BYTES + REQUEST_BYTES * len(self.requests)

    def row(self, i: int, prediction_id: str) -> dict[str, Any]:
        result = self.result
        served = result.served
        out: dict[str, Any] = dict(zip(served.features, result.X[i].tolist(), strict=True))
        for j in served.category_text:
            out[served.features[j]] = served.text_of(j, result.X[i : i + 1, j])[0]
        out["prediction_id"] = prediction_id
        out["model_version"] = served.version
        if result.value is not None:
            out["prediction"] = float(result.value[i])
        else:
            out["prediction"] = served.class_keys[result.label_index[i]]
        return out


def row_blocks(arrays: list[np.ndarray], block: int = 4096) -> Iterator[np.ndarray]:
    """The rows of ``arrays``, in order, in blocks of ``block`` to ``2 * block`` rows (the last
    may be smaller): small arrays are stacked, large ones cut."""
    waiting: list[np.ndarray] = []
    rows = 0
    for array in arrays:
        for start in range(0, len(array), block):
            part = array[start : start + block]
            waiting.append(part)
            rows += len(part)
            if rows >= block:
                yield waiting[0] if len(waiting) == 1 else np.concatenate(waiting)
                waiting, rows = [], 0
    if waiting:
        yield waiting[0] if len(waiting) == 1 else np.concatenate(waiting)


def columns_and_embedding(
    embedding: Any,
    arrays: list[np.ndarray],
    embedded: list[np.ndarray] | None = None,
    block: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``arrays`` and their embedding (float64), both column-major (``X.T``,
    ``Z.T``, C-contiguous), made a block of rows at a time. ``embedded``: each array's
    embedding as the model's run returned it; without it, ``embedding.transform`` computes it.
    - the flush is never stacked whole: a block is stacked, embedded and transposed while it
      is in the cache (a whole-matrix transpose of a large flush missed the cache on every
      value, several times slower);
    - ONNX Runtime keeps the memory of its largest run (bench/BENCHMARKS.md).
    """
    n = sum(len(a) for a in arrays)
    XT = np.empty((arrays[0].shape[1], n))
    ZT: np.ndarray | None = None
    at = 0
    given: Iterator[np.ndarray | None] = itertools.repeat(None)  # endless: zip stops first
    if embedded is not None:  # arrays of the same lengths are cut into the same blocks
        if [len(Z) for Z in embedded] != [len(X) for X in arrays]:
            raise ValueError("columns_and_embedding: an embedding per row")
        given = row_blocks(embedded, block)
    for rows, Z_given in zip(row_blocks(arrays, block), given, strict=False):
        if Z_given is None:
            with np.errstate(all="ignore"):
                Z_given = embedding.transform(rows)
        Z = np.asarray(Z_given, dtype=np.float64)
        if ZT is None:
            ZT = np.empty((Z.shape[1], n))
        XT[:, at : at + len(rows)] = rows.T
        ZT[:, at : at + len(rows)] = Z.T
        at += len(rows)
    assert ZT is not None  # arrays hold at least one row
    return XT, ZT


def given_embedding(entries: list[Entry]) -> list[np.ndarray] | None:
    """The embedding of every entry's rows as the model's runs returned it, or None if a run
    did not return one. Backup answers come without one; their rows are logged without an
    embedding anyway (NaN), so they do not make the log embed the others again."""
    width = next(
        (e.result.embedding.shape[1] for e in entries if e.result.embedding is not None), 0
    )
    if not width:
        return None
    given = []
    for e in entries:
        Z = e.result.embedding
        if Z is None and not e.result.backup:
            return None
        given.append(np.full((len(e), width), np.nan) if Z is None else Z)
    return given


def to_frame(entries: list[Entry]) -> pd.DataFrame:
    """The prediction log rows of some batches of one model version (docs/architecture.md,
    "Object store layout";
    ``flush`` writes an object per version), as the serving writes them: no Python object per
    row (``datalog``'s compact columns). The embedding is the one the model's runs returned
    with the rows; when they did not, it runs here, once for all the entries, however many
    single-row requests the buffer holds.
    """
    served = entries[-1].result.served
    if any(e.result.served.version != served.version for e in entries):
        raise ValueError("to_frame: entries of one model version only")
    regression = served.regression
    if regression:
        values = np.concatenate([e.result.value for e in entries if e.result.value is not None])
        labels = np.zeros(len(values), dtype=np.intp)
    else:
        proba = np.concatenate([e.result.proba for e in entries])
        labels = np.concatenate([e.result.label_index for e in entries])
    # Per-batch values repeated per row; a buffer may hold 50,000 one-row batches.
    lengths = [len(e) for e in entries]
    backup = np.repeat(np.array([e.result.backup for e in entries], dtype=bool), lengths)
    heads = list(itertools.chain.from_iterable(e.requests for e in entries))
    sizes = np.concatenate([np.diff(e.offsets) for e in entries])
    firsts = np.repeat(np.cumsum(sizes) - sizes, sizes)
    columns: dict[str, Any] = {
        # Categories too: one string per request, a code and a row number per row.
        "request_id": pd.Categorical.from_codes(
            np.repeat(np.arange(len(heads), dtype=np.int32), sizes), heads
        ),
        "request_row": (np.arange(len(labels)) - firsts).astype(np.int32),
        "ts": np.repeat(np.array([e.ts for e in entries], dtype=np.float64), lengths),
        # Categories: written dictionary-encoded, 20 times cheaper than strings per row.
        "model_version": pd.Categorical.from_codes(
            np.zeros(len(labels), dtype=np.int8), [served.version]
        ),
    }
    if regression:  # the value; no probabilities
        columns["prediction"] = values
    else:
        columns["prediction"] = pd.Categorical.from_codes(labels, served.class_keys)
        columns["probability"] = top_of(proba, labels)
        columns.update(
            {f"proba_{j}": np.ascontiguousarray(proba[:, j]) for j in range(proba.shape[1])}
        )
    columns["backup"] = backup
    # Column-major, a column per row of them: the frame and the Parquet writer use them as
    # they are (no per-column strided copies). The embedding as this version computes it:
    # from the runs that predicted the rows when the model's graph returns it, else computed
    # here. Rows the backup answered get none, and values that overflow (inputs near the
    # float limit) are logged as missing.
    XT, ZT = columns_and_embedding(
        served.embedding, [e.result.X for e in entries], given_embedding(entries)
    )
    ZT[~np.isfinite(ZT)] = np.nan
    ZT[:, backup] = np.nan
    columns.update(zip(served.features, XT, strict=True))
    for j in served.category_text:  # categories as text (datalog's contract)
        columns[served.features[j]] = served.text_of(j, XT[j])
    columns.update(zip(embedding_columns(len(ZT)), ZT, strict=True))
    return pd.DataFrame(columns, copy=False)


class PredictionLog:
    """Buffered, bounded writer of the prediction log plus a recent-id index."""

    def __init__(
        self,
        store: Store,
        *,
        flush_rows: int,
        flush_seconds: float,
        max_rows: int,
        max_bytes: int = 2**62,
        write_max_rows: int = 50_000,
        cache_rows: int,
        cache_bytes: int = 2**62,
        on_drop: Callable[[int], None] = lambda n: None,
        max_wait: float = 1.0,
        on_wait: Callable[[float, bool], None] = lambda seconds, limit: None,
    ) -> None:
        self.store = store
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.write_max_rows = write_max_rows
        self.cache_rows = cache_rows
        self.cache_bytes = cache_bytes
        self.on_drop = on_drop
        self.max_wait = max_wait
        self.on_wait = on_wait
        self._pending: deque[Entry] = deque()
        self._pending_rows = 0
        self._pending_bytes = 0
        self._oldest = 0.0
        # The requests of the last ~cache_rows rows, by their ids' shared part (one key per
        # request, whatever its size): the entry holding its rows. Whole entries leave it,
        # oldest first.
        self._recent: dict[str, Entry] = {}
        self._recent_entries: deque[Entry] = deque()
        self._recent_rows = 0
        self._recent_bytes = 0
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.written_rows = 0
        self.dropped_rows = 0
        self.store_ok = True  # the last write succeeded

    # -- request path ---------------------------------------------------------------------

    def add(self, result: BatchResult, id_groups: list[datalog.PredictionIds], ts: float) -> None:
        """Queue an answered batch (cheap: no I/O, no pandas): ``result`` holds the rows of
        one or more requests (``DataPlane.predict_many``), ``id_groups`` their ids in order."""
        entry = Entry(result, ts)
        for ids in id_groups:
            entry.requests[ids.batch] = len(entry.requests)
            entry.offsets.append(entry.offsets[-1] + len(ids))
        entry.measure()
        with self._lock:
            if not self._pending:
                self._oldest = time.monotonic()
            self._pending.append(entry)
            self._pending_rows += len(entry)
            self._pending_bytes += entry.nbytes
            for key in entry.requests:
                self._recent[key] = entry
            self._recent_entries.append(entry)
            self._recent_rows += len(entry)
            self._recent_bytes += entry.nbytes
            while self._recent_entries and (
                self._recent_rows - len(self._recent_entries[0]) >= self.cache_rows
                or self._recent_bytes - self._recent_entries[0].nbytes >= self.cache_bytes
            ):
                old = self._recent_entries.popleft()
                self._recent_rows -= len(old)
                self._recent_bytes -= old.nbytes
                for key in old.requests:
                    self._recent.pop(key, None)
            dropped = self._trim()
            due = self._full()
        if dropped:
            self.on_drop(dropped)
        if due:
            self._wake.set()

    def _full(self) -> bool:
        """Enough is waiting to write now: ``flush_rows`` rows, or a quarter of the memory
        bound (wide rows reach it first), or as many rows as make requests wait (a buffer
        bound under twice ``flush_rows`` would otherwise hold requests until the timer)."""
        return (
            self._pending_rows >= min(self.flush_rows, self.max_rows // 2)
            or self._pending_bytes >= self.max_bytes // 4
        )

    def _trim(self) -> int:
        """Drop the oldest requests past the bounds (never the newest one)."""
        dropped = 0
        while len(self._pending) > 1 and (
            self._pending_rows > self.max_rows or self._pending_bytes > self.max_bytes
        ):
            old = self._pending.popleft()
            self._pending_rows -= len(old)
            self._pending_bytes -= old.nbytes
            dropped += len(old)
        self.dropped_rows += dropped
        return dropped

    def backlogged(self) -> bool:
        """More than half the buffer is waiting while the store accepts writes: the writer
        is behind the requests (CPU-bound), not the store down."""
        return self.store_ok and (
            self._pending_rows > self.max_rows // 2 or self._pending_bytes > self.max_bytes // 2
        )

    async def make_room(self) -> float:
        """Backpressure: while backlogged, hold this request (not the event loop) so the
        writer catches up instead of the buffer dropping rows, at most ``max_wait`` seconds;
        then it goes on (past the bounds the oldest rows are dropped and counted). Returns
        the seconds waited; each wait goes to ``on_wait`` with whether it reached the bound."""
        if not self.backlogged():
            return 0.0
        started = time.monotonic()
        deadline = started + self.max_wait
        while (now := time.monotonic()) < deadline and self.backlogged():
            await asyncio.sleep(min(0.005, deadline - now))
        waited = time.monotonic() - started
        self.on_wait(waited, now >= deadline)
        return waited

    def lookup(self, prediction_id: str) -> dict[str, Any] | None:
        """A recent prediction's log row, from memory."""
        batch = datalog.prediction_batch(prediction_id)
        if batch is None:
            return None
        with self._lock:
            entry = self._recent.get(batch[0])
        if entry is None:
            return None
        k = entry.requests[batch[0]]
        i = entry.offsets[k] + batch[1]
        if i >= entry.offsets[k + 1] or datalog.prediction_id(*batch) != prediction_id:
            return None  # not a row of that request, or not the id as it was given out
        return entry.row(i, prediction_id)

    # -- background -----------------------------------------------------------------------

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    def flush(self) -> int:
        """Write what is buffered now, in objects of at most ``write_max_rows`` rows (whole
        requests of one model version); return the rows written. Requests leave the buffer
        an object at a time, as it is taken for writing: while the writer is behind, the
        process holds the buffer and one object, not the buffer twice over, and the rest stay
        counted by the backpressure (``make_room``). At the first failed write, it and the
        rest stay buffered. (Rows that arrive meanwhile wait for the next flush: a loop "until
        empty" would write an object per handful of rows under steady load.)"""
        with self._flush_lock:
            started = time.monotonic()
            with self._lock:
                left = len(self._pending)
            written = 0
            try:
                while left > 0:
                    with self._lock:
                        entries = self._take(left)
                    if not entries:  # dropped meanwhile by the bounds (_trim)
                        break
                    left -= len(entries)
                    rows = self._write(entries)
                    if rows < 0:
                        self._keep(entries)
                        break
                    written += rows
            finally:
                with self._lock:  # what is left arrived during this flush (or was kept)
                    if self._pending:
                        self._oldest = max(self._oldest, started)
            return written

    def _take(self, most: int) -> list[Entry]:
        """Take the next object's requests off the buffer (the lock held): the oldest, then
        those after it of the same version, up to ``write_max_rows`` rows (a request longer
        than that alone) and ``most`` requests."""
        taken: list[Entry] = []
        rows = 0
        while self._pending and len(taken) < most:
            entry = self._pending[0]
            if taken and (
                rows + len(entry) > self.write_max_rows
                or entry.result.served.version != taken[0].result.served.version
            ):
                break
            taken.append(self._pending.popleft())
            rows += len(entry)
            self._pending_rows -= len(entry)
            self._pending_bytes -= entry.nbytes
        return taken

    def _write(self, entries: list[Entry]) -> int:
        """Write some requests as one object: the rows written; 0 if their rows could not be
        built (dropped and counted); -1 if the store refused the write."""
        rows = sum(len(e) for e in entries)
        if not rows:
            return 0
        try:
            frame = to_frame(entries)
        except Exception:  # a bug here must not stop logging for the process
            logger.exception("could not build %d prediction log rows; dropped", rows)
            self.dropped_rows += rows
            self.on_drop(rows)
            return 0
        try:
            datalog.write_predictions(self.store, frame)
        except MLPlatformError as exc:
            logger.warning("prediction log not written (%s); %d rows kept", exc.message, rows)
            self.store_ok = False
            return -1
        self.written_rows += rows
        self.store_ok = True
        return rows

    def _keep(self, entries: list[Entry]) -> None:
        """Put unwritten requests back at the front of the buffer (bounded: may drop)."""
        with self._lock:
            self._pending.extendleft(reversed(entries))
            self._pending_rows += sum(len(e) for e in entries)
            self._pending_bytes += sum(e.nbytes for e in entries)
            self._oldest = time.monotonic()
            dropped = self._trim()
        if dropped:
            self.on_drop(dropped)

    def _due(self) -> bool:
        with self._lock:
            if not self._pending:
                return False
            waited = time.monotonic() - self._oldest >= self.flush_seconds
            # While the store refuses writes, one try per flush_seconds however full the
            # buffer (a failed write resets _oldest): each try builds a frame first.
            return waited or (self.store_ok and self._full())

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=max(self.flush_seconds / 4, 0.05))
            self._wake.clear()
            if self._due():
                try:
                    self.flush()
                except Exception:  # keep the writer alive whatever one batch did
                    logger.exception("prediction log flush failed")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the writer and flush what is left."""
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=10)
        self.flush()
