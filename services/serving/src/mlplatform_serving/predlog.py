"""The prediction log: buffered in memory, written to the store in Parquet batches.

Requests only append to a buffer; a background thread writes a batch when enough rows are
waiting or the oldest is old enough, and once more at shutdown. If the store is down the rows
stay buffered (up to a bound; beyond it the oldest are dropped and counted) and predictions keep
answering. Recent predictions also stay in a bounded in-memory index, so ``/feedback`` by
``prediction_id`` needs no store read in the common case.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import pandas as pd
from mlplatform_common import datalog
from mlplatform_common.errors import MLPlatformError
from mlplatform_common.storage import Store

logger = logging.getLogger("mlplatform.serving")


class PredictionLog:
    """Buffered, bounded writer of the prediction log plus a recent-id index."""

    def __init__(
        self,
        store: Store,
        *,
        flush_rows: int,
        flush_seconds: float,
        max_rows: int,
        cache_rows: int,
        on_drop: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.store = store
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.max_rows = max_rows
        self.cache_rows = cache_rows
        self.on_drop = on_drop
        self._pending: deque[pd.DataFrame] = deque()
        self._pending_rows = 0
        self._oldest = 0.0
        self._recent: OrderedDict[str, tuple[pd.DataFrame, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.written_rows = 0
        self.dropped_rows = 0

    # -- request path ---------------------------------------------------------------------

    def add(self, frame: pd.DataFrame) -> None:
        """Queue a batch of log rows (cheap: no I/O)."""
        frame = frame.reset_index(drop=True)
        with self._lock:
            if not self._pending:
                self._oldest = time.monotonic()
            self._pending.append(frame)
            self._pending_rows += len(frame)
            for i, pid in enumerate(frame["prediction_id"]):
                self._recent[pid] = (frame, i)
            while len(self._recent) > self.cache_rows:
                self._recent.popitem(last=False)
            dropped = self._trim()
            due = self._pending_rows >= self.flush_rows
        if dropped:
            self.on_drop(dropped)
        if due:
            self._wake.set()

    def _trim(self) -> int:
        dropped = 0
        while self._pending_rows > self.max_rows and self._pending:
            old = self._pending.popleft()
            self._pending_rows -= len(old)
            dropped += len(old)
        self.dropped_rows += dropped
        return dropped

    def lookup(self, prediction_id: str) -> dict[str, Any] | None:
        """A recent prediction's log row, from memory."""
        with self._lock:
            hit = self._recent.get(prediction_id)
        if hit is None:
            return None
        frame, i = hit
        return frame.iloc[i].to_dict()

    # -- background -----------------------------------------------------------------------

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    def flush(self) -> int:
        """Write everything buffered as one batch; return the rows written (0 on failure)."""
        with self._flush_lock:
            with self._lock:
                if not self._pending:
                    return 0
                frames = list(self._pending)
                self._pending.clear()
                rows = self._pending_rows
                self._pending_rows = 0
            try:
                batch = pd.concat(frames, ignore_index=True)
                datalog.write_predictions(self.store, batch)
            except MLPlatformError as exc:
                logger.warning("prediction log not written (%s); %d rows kept", exc.message, rows)
                with self._lock:
                    self._pending.extendleft(reversed(frames))
                    self._pending_rows += rows
                    self._oldest = time.monotonic()
                    dropped = self._trim()
                if dropped:
                    self.on_drop(dropped)
                return 0
            self.written_rows += rows
            return rows

    def _due(self) -> bool:
        with self._lock:
            return bool(self._pending) and (
                self._pending_rows >= self.flush_rows
                or time.monotonic() - self._oldest >= self.flush_seconds
            )

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=max(self.flush_seconds / 4, 0.05))
            self._wake.clear()
            if self._due():
                self.flush()

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
