"""The data plane: a validated batch in, its answers out, whatever the wire format.

Every prediction passes here once: the batch limit, back-pressure from the prediction log,
micro-batching across one event-loop turn, the model call, prediction ids, the log and the
metrics. No FastAPI and no codec in here: the routes decode a body before and encode the
answers after (``codecs/``).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from mlplatform_common import datalog
from mlplatform_common.errors import InvalidInput
from mlplatform_serving import observability as obs

if TYPE_CHECKING:
    from mlplatform_serving.predlog import PredictionLog
    from mlplatform_serving.runtime import BatchResult, ModelRuntime, Served
    from mlplatform_serving.settings import ServingSettings

# Requests of up to this many rows are predicted together with those that arrive in the same
# event-loop turn (``DataPlane.predict_batched``); a model call, the ids, metrics and a log
# entry then cost once per turn instead of once per request (bench/BENCHMARKS.md).
BATCH_MAX_ROWS = 64

# One request's predictions: its rows' results and their ids.
Answer = tuple["BatchResult", datalog.PredictionIds]


def check_batch(n: int, field: str, max_rows: int) -> None:
    """The limits of one request's rows (``field`` names where they came from)."""
    if n == 0:
        raise InvalidInput(f"{field}: empty batch; send at least one row")
    if n > max_rows:
        raise InvalidInput(f"{field}: {n} rows is over the limit of {max_rows} per request")


class DataPlane:
    """Predicts batches with the runtime's current version, and counts and logs them."""

    def __init__(
        self,
        settings: ServingSettings,
        runtime: ModelRuntime,
        log: PredictionLog,
        stats: obs.RollingStats,
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.log = log
        self.stats = stats
        # Requests waiting for the next turn's shared model call (predict_batched).
        self._waiting: list[tuple[np.ndarray, asyncio.Future[Any]]] = []

    @property
    def served(self) -> Served:
        """The version a request's body is decoded for (``ModelNotReady`` before one)."""
        return self.runtime.served

    @property
    def max_rows(self) -> int:
        return self.settings.max_batch_rows

    async def infer(self, X: np.ndarray, field: str = "instances") -> Answer:
        """One request's validated rows: checked against the limits, held while the log's
        writer is behind (``PredictionLog.make_room``), then predicted with the requests
        of the same event-loop turn."""
        check_batch(len(X), field, self.settings.max_batch_rows)
        await self.log.make_room()
        return await self.predict_batched(X)

    async def predict_batched(self, X: np.ndarray) -> Answer:
        """``predict`` for a request on the event loop: requests of up to ``BATCH_MAX_ROWS``
        rows that reach this in the same turn of the loop are predicted together, in one
        ``predict_many`` call made at the next turn. Nothing waits for a batch to fill: under
        load the requests read in one turn are the batch, and a lone request goes alone.
        """
        if len(X) > BATCH_MAX_ROWS:
            return self.predict(X)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Answer] = loop.create_future()
        self._waiting.append((X, future))
        if len(self._waiting) == 1:
            loop.call_soon(self._predict_waiting)
        return await future

    def _predict_waiting(self) -> None:
        waiting, self._waiting = self._waiting, []
        answers: list[Answer | Exception]
        try:
            answers = list(self.predict_many([X for X, _ in waiting]))
        except Exception as exc:
            if len(waiting) == 1:
                answers = [exc]
            else:  # some request's rows failed the shared call: each alone, its own error
                answers = []
                for X, _ in waiting:
                    try:
                        answers.append(self.predict(X))
                    except Exception as alone:
                        answers.append(alone)
        for (_, future), answer in zip(waiting, answers, strict=True):
            if future.done():  # cancelled: the client went away
                continue
            if isinstance(answer, Exception):
                future.set_exception(answer)
            else:
                future.set_result(answer)

    def predict(self, X: np.ndarray) -> Answer:
        """Predict a validated matrix, count it, and queue it for the prediction log."""
        return self.predict_many([X])[0]

    def predict_many(self, batches: list[np.ndarray]) -> list[Answer]:
        """Several requests' validated rows in one model call, counted and queued for the log
        once; each request gets its own rows' result and its own prediction ids."""
        X = batches[0] if len(batches) == 1 else np.concatenate(batches)
        result = self.runtime.predict(X)
        n = len(X)
        now = time.time()
        id_groups = [datalog.new_prediction_ids(len(rows), now) for rows in batches]
        self.log.add(result, id_groups, now)
        served = result.served
        for j, name, unknown in served.category_columns:  # none for a numbers-only model
            seen = int(np.count_nonzero(X[:, j] == unknown))
            if seen:
                obs.child(obs.UNKNOWN_CATEGORIES, name).inc(seen)
        if result.value is not None:  # a regression: no classes, no probabilities
            obs.child(obs.PREDICTIONS, served.version, "").inc(n)
            counts = np.zeros(0, dtype=np.intp)
            top = result.value
            if (values := obs.PREDICTED_VALUE) is not None:
                obs.observe_many(values, top)
        else:
            counts = np.bincount(result.label_index, minlength=len(served.classes))
            for key, count in zip(served.class_keys, counts.tolist(), strict=True):
                if count:
                    obs.child(obs.PREDICTIONS, served.version, key).inc(count)
            top = result.top
            obs.observe_many(obs.PROBABILITY, top)
        if result.backup:
            obs.BACKUP.inc(n)
        self.stats.predictions(
            served, counts, top, result.backup, X, self.settings.low_confidence_threshold
        )
        if len(batches) == 1:
            return [(result, id_groups[0])]
        ends = np.cumsum([len(rows) for rows in batches]).tolist()
        return [
            (result.rows(end - len(ids), end), ids)
            for end, ids in zip(ends, id_groups, strict=True)
        ]
