"""The serving service: the runtime, the prediction log, feedback and statistics together.

Routes call these methods and only translate HTTP; everything here is plain Python.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
import orjson

from mlplatform_common import datalog, keys
from mlplatform_common.errors import (
    InvalidInput,
    MLPlatformError,
    NotFound,
    NotYet,
)
from mlplatform_common.lock import StoreLock
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.reports import ReportArchive
from mlplatform_common.storage import Store
from mlplatform_serving import observability as obs
from mlplatform_serving.predlog import PredictionLog
from mlplatform_serving.runtime import BatchResult, ModelRuntime
from mlplatform_serving.settings import ServingSettings

logger = logging.getLogger("mlplatform.serving")

# Requests of up to this many rows are predicted together with those that arrive in the same
# event-loop turn (``Service.predict_batched``); a model call, the ids, metrics and a log
# entry then cost once per turn instead of once per request (bench/BENCHMARKS.md).
BATCH_MAX_ROWS = 64

# glibc's malloc maps each block of over 128 kB afresh and gives it back when freed, and gives
# back the top of its heap once 128 kB of it is free: the log writer's frames and Parquet
# buffers (tens of MB per object) were faulted in page by page on every write, ~45,000 page
# faults a second under 1,000-row JSON load. Blocks of up to 32 MB now come from the heap,
# and each malloc arena keeps up to 64 MB of it free: 1,000-row JSON 280-314k -> 316-347k
# rows/s, binary V2 661-709k -> 888-917k, the same peak memory (alternating runs,
# bench/BENCHMARKS.md).
MALLOC_MMAP_THRESHOLD = 32 * 2**20
MALLOC_TRIM_THRESHOLD = 64 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters, <malloc.h>

# One request's predictions: its rows' results and their ids.
Answer = tuple[BatchResult, datalog.PredictionIds]


def keep_freed_memory() -> bool:
    """Set glibc's malloc thresholds (``MALLOC_MMAP_THRESHOLD``, ``MALLOC_TRIM_THRESHOLD``)
    for this process; False, logged, where the C library has no ``mallopt`` (not glibc) or
    refuses a value (32 MB is its most on 64-bit)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        logger.info("malloc thresholds not set: the C library has no mallopt (not glibc)")
        return False
    refused = [
        name
        for name, param, value in (
            ("M_MMAP_THRESHOLD", _M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD),
            ("M_TRIM_THRESHOLD", _M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD),
        )
        if mallopt(param, value) != 1  # 1: set
    ]
    if refused:
        logger.warning("malloc refused %s; freed memory may be faulted in again", refused)
    return not refused


class Service:
    """Everything a serving process holds."""

    def __init__(self, settings: ServingSettings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.registry = ModelRegistry(store, settings.require_signing_key())
        self.runtime = ModelRuntime(self.registry, settings.model_version)
        self.stats = obs.RollingStats()
        self.log = PredictionLog(
            store,
            flush_rows=settings.log_flush_rows,
            flush_seconds=settings.log_flush_seconds,
            write_max_rows=settings.log_write_max_rows,
            max_rows=settings.log_buffer_max_rows,
            max_bytes=int(settings.log_buffer_max_mb * 2**20),
            cache_rows=settings.recent_cache_rows,
            cache_bytes=int(settings.recent_cache_mb * 2**20),
            on_drop=lambda n: obs.LOG_DROPPED.inc(n),
        )
        # Starts one retrain without waiting: (reason, force) -> started.
        self.retrain_launcher: Callable[[str, bool], bool] | None = None
        self._stop = threading.Event()
        self._loader: threading.Thread | None = None
        # The served version against the production alias (check_alias), for /ready.
        self.alias_state: dict[str, Any] = {}
        self._counter: tuple[str, datalog.FeedbackCounter] | None = None
        # Requests waiting for the next turn's shared model call (predict_batched).
        self._waiting: list[tuple[np.ndarray, asyncio.Future[Any]]] = []

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Load the model (retrying in the background until it works) and start the log."""
        # A young generation of 10,000 objects instead of 700: each request allocates dozens,
        # and at 10,000 requests/s the default ran a full collection (3-11 ms, every request
        # waiting) twice a second; p99 of single rows at 32 connections 11 -> 8 ms
        # (bench/BENCHMARKS.md). The model and libraries are frozen out of it (runtime.load).
        gc.set_threshold(10_000, 10, 10)
        keep_freed_memory()
        self.log.start()
        if not self._try_load():
            self._loader = threading.Thread(
                target=self._keep_loading, name="model-loader", daemon=True
            )
            self._loader.start()
        threading.Thread(target=self._watch_alias, name="alias-check", daemon=True).start()

    def _try_load(self, version: str | None = None) -> bool:
        try:
            model = self.runtime.load(version)
        except MLPlatformError:
            return False
        obs.set_model(model.version, self.runtime.load_seconds)
        return True

    def _keep_loading(self) -> None:
        while not self._stop.wait(self.settings.load_retry_seconds):
            if self.runtime.ready or self._try_load():
                return

    def _watch_alias(self) -> None:
        interval = self.settings.alias_check_seconds
        while not self._stop.wait(min(interval, self.settings.load_retry_seconds)):
            if self.runtime.ready and time.monotonic() >= self.alias_state.get("next", 0.0):
                self.check_alias()
                self.alias_state["next"] = time.monotonic() + interval

    def check_alias(self) -> dict[str, Any]:
        """Compare the served version with the production alias, for ``/ready`` and
        ``mlplatform_model_alias_mismatch``. A version pinned by the Deployment
        (``MODEL_VERSION``) that the alias does not name is a ``kubectl rollout undo``: one
        replica starts a retrainer run, which moves the alias to what the Deployment runs."""
        served = self.runtime.version
        try:
            alias = self.registry.production()
        except MLPlatformError as exc:
            logger.warning("production alias not readable: %s", exc.message)
            return self.alias_state
        named = alias.get("version") if alias else None
        state: dict[str, Any] = {"production_alias": named, "alias_matches": named == served}
        if named != served:
            state["alias_detail"] = (
                f"serving {served} (MODEL_VERSION) while the production alias names {named}: "
                "the Deployment was rolled back or pinned by hand; the retrainer moves the "
                "alias to the version the Deployment runs"
                if self.runtime.pinned_version
                else f"serving {served} while the production alias names {named}: "
                "POST /admin/reload loads it"
            )
        obs.ALIAS_MISMATCH.set(0 if named == served else 1)
        self.alias_state.update(state)
        if named == served:
            self.alias_state.pop("alias_detail", None)
        elif (
            alias and self.runtime.pinned_version and self.settings.retrain_launcher == "kubernetes"
        ):
            logger.warning("%s", state["alias_detail"])
            self._start_once(
                f"follow-{served}-not-{named}-{str(alias.get('updated_at', ''))[:19]}",
                f"deployment serves {served}, the production alias names {named}: reconcile",
            )
        return self.alias_state

    def _start_once(self, marker: str, reason: str) -> bool:
        """Start one retrainer run for ``marker`` across replicas: the replica that creates
        the marker object starts it."""
        if self.retrain_launcher is None:
            return False
        safe = "".join(c if c.isalnum() or c in "-." else "-" for c in marker)
        if not self.store.put_if_absent(
            keys.trigger(safe), json.dumps({"reason": reason}).encode()
        ):
            return False
        try:
            return self.retrain_launcher(reason, False)
        except MLPlatformError as exc:
            logger.error("could not start a retrain: %s", exc.message)
            return False

    def stop(self) -> None:
        self._stop.set()
        self.log.stop()

    def reload(
        self, version: str | None = None, signature: str | None = None
    ) -> tuple[str, str | None]:
        """Swap in another version (default: pinned or alias); errors leave the old one.
        ``signature``: the manifest HMAC the caller means (``ModelRuntime.load``)."""
        previous = self.runtime.version
        model = self.runtime.load(version, signature)
        obs.set_model(model.version, self.runtime.load_seconds)
        return model.version, previous

    # -- predictions ----------------------------------------------------------------------

    def check_batch(self, n: int, field: str = "instances") -> None:
        if n == 0:
            raise InvalidInput(f"{field}: empty batch; send at least one row")
        if n > self.settings.max_batch_rows:
            raise InvalidInput(
                f"{field}: {n} rows is over the limit of {self.settings.max_batch_rows} per request"
            )

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

    @staticmethod
    def answers(result: BatchResult, ids: datalog.PredictionIds) -> orjson.Fragment:
        """The per-row answers as a JSON list (``answer_dicts``), encoded.

        Up to 16 rows, from the dicts; beyond, spliced (``answers_spliced``): building 1,000
        dicts cost more than the whole prediction (bench/BENCHMARKS.md).
        """
        if len(ids) <= 16:
            return orjson.Fragment(orjson.dumps(Service.answer_dicts(result, ids)))
        return Service.answers_spliced(result, ids)

    @staticmethod
    def answer_dicts(result: BatchResult, ids: datalog.PredictionIds) -> list[dict[str, Any]]:
        """What each row's answer is."""
        served = result.served
        classes, keys_, names = served.classes, served.class_keys, served.class_names
        version, backup = served.version, result.backup
        tops = result.top.tolist()
        return [
            {
                "prediction_id": pid,
                "label": classes[i],
                "label_name": names[i],
                "probability": top,
                "probabilities": dict(zip(keys_, p, strict=True)),
                "model_version": version,
                "backup": backup,
            }
            for pid, i, top, p in zip(
                ids, result.label_index.tolist(), tops, result.proba.tolist(), strict=True
            )
        ]

    @staticmethod
    def answers_spliced(result: BatchResult, ids: datalog.PredictionIds) -> orjson.Fragment:
        """``orjson.dumps(answer_dicts(...))`` without the dicts: every value is still encoded
        by orjson, but a batch's numbers in one call per column and the rest once per class,
        then spliced row by row in C loops. The tests compare both byte for byte."""
        if not ids:
            return orjson.Fragment(b"[]")
        served = result.served

        def dumps(value: Any) -> str:
            return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()

        def numbers(column: np.ndarray) -> list[str]:
            return dumps(np.ascontiguousarray(column))[1:-1].split(",")

        per_class = [
            f'","label":{dumps(c)},"label_name":{dumps(name)},"probability":'
            for c, name in zip(served.classes, served.class_names, strict=True)
        ]
        parts: list[Any] = [
            itertools.repeat('{"prediction_id":"' + ids.batch),
            ids.suffixes(),
            map(per_class.__getitem__, result.label_index.tolist()),
            numbers(result.top),
        ]
        for j, key in enumerate(served.class_keys):
            parts += [itertools.repeat(("," if j else ',"probabilities":{') + dumps(key) + ":")]
            parts += [numbers(result.proba[:, j])]
        end = f'}},"model_version":{dumps(served.version)},"backup":{dumps(result.backup)}}},'
        parts.append(itertools.repeat(end))
        text = "".join(itertools.chain.from_iterable(zip(*parts, strict=False)))  # repeat()s
        return orjson.Fragment(f"[{text[:-1]}]".encode())

    # -- feedback -------------------------------------------------------------------------

    def _class_of(self, value: Any, field: str, manifest: dict[str, Any] | None = None) -> Any:
        """``value`` as one of the classes of the served model, or of the version whose
        ``manifest`` is given (the one that made a prediction)."""
        manifest = manifest or self.runtime.model.manifest
        classes = list(manifest["classes"])
        names = manifest.get("class_names") or []
        for i, cls in enumerate(classes):
            if str(cls) == str(value) or (i < len(names) and names[i] == value):
                return cls
        raise InvalidInput(
            f"{field}: {value!r:.40} is not one of the classes {classes}"
            + (f" (names {names})" if names else "")
            + f" of model {manifest['version']}"
        )

    def _manifest_of(self, version: str) -> dict[str, Any]:
        """The manifest of the version that made a logged prediction (the served one's
        without a store read)."""
        model = self.runtime.model
        if version == model.version:
            return model.manifest
        try:
            return self.registry.manifest(version)
        except MLPlatformError as exc:  # deleted or unreadable: judge by the served model
            logger.warning(
                "manifest of %s not readable (%s); using %s's", version, exc, model.version
            )
            return model.manifest

    def feedback(
        self,
        target: Any,
        prediction_id: str | None,
        features: dict[str, Any] | None,
        prediction: Any | None,
    ) -> dict[str, Any]:
        """Store one labelled row durably and say how many arrived since training."""
        model = self.runtime.model
        if prediction_id is not None and features is not None:
            raise InvalidInput("prediction_id: give either prediction_id or features, not both")
        if prediction_id is not None:
            logged = self._logged(prediction_id)
            # Judged by the version that made the prediction, which a retrain or a reload
            # may since have replaced with one of other classes or features.
            version = str(logged["model_version"])
            made_by = self._manifest_of(version)
            target = self._class_of(target, "target", made_by)
            names = [f["name"] for f in made_by["feature_schema"]]
            row_features = {f: float(logged[f]) for f in names if f in logged}
            predicted = str(logged["prediction"])
        elif features is not None:
            target = self._class_of(target, "target")
            X = self.runtime.validate_rows([features], field="features")
            row_features = dict(zip(model.features, X[0].tolist(), strict=True))
            if prediction is None:
                predicted = str(self.runtime.predict(X).labels[0])
            else:
                predicted = str(self._class_of(prediction, "prediction"))
            version = model.version
        else:
            raise InvalidInput("prediction_id: give prediction_id, or features with the target")
        key = datalog.write_feedback(
            self.store,
            {
                "prediction_id": prediction_id,
                "model_version": version,
                "prediction": predicted,
                "target": str(target),
                "features": row_features,
            },
        )
        obs.FEEDBACK.inc()
        # The row is stored: from here on nothing may turn the answer into an error, or a
        # client that retries would store it twice.
        count: int | None
        try:
            counter = self._feedback_counter()
            counter.note(key)
            count = counter.count(max_age=self.settings.feedback_count_max_age)
            started = self._maybe_retrain(count, model.version)
        except MLPlatformError as exc:
            logger.warning("feedback stored; counting labelled rows failed: %s", exc.message)
            count, started = None, False
        return {
            "feedback_id": key.rsplit("/", 1)[-1].split("-", 1)[1].removesuffix(".json"),
            "prediction_id": prediction_id,
            "stored": True,
            "model_version": version,
            "labelled_since_training": count,
            "retrain_every": self.settings.retrain_every,
            "retrain_started": started,
        }

    def _logged(self, prediction_id: str) -> dict[str, Any]:
        """The logged row of a prediction, made by this replica or another one. Another
        replica's prediction reaches the store at its next log flush: an id younger than
        ``feedback_wait_seconds`` is looked for until then, and one still missing but younger
        than ``feedback_pending_seconds`` is ``NotYet`` (409, Retry-After), not unknown."""
        settings = self.settings
        logged = self.log.lookup(prediction_id)
        made = datalog.prediction_time(prediction_id)
        while logged is None:
            logged = datalog.find_prediction(
                self.store, prediction_id, settings.feedback_lookup_days
            )
            age = time.time() - made if made is not None else float("inf")
            if logged is not None or not -60 < age < settings.feedback_wait_seconds:
                break  # found, waited long enough, or a time no replica gave (clocks skew <60s)
            time.sleep(min(0.25, settings.feedback_wait_seconds - age))
            logged = self.log.lookup(prediction_id)
        if logged is not None:
            return logged
        if made is not None and -60 < time.time() - made < settings.feedback_pending_seconds:
            raise NotYet(
                f"prediction_id {prediction_id!r:.70} is not in the prediction log yet: it was "
                f"made {time.time() - made:.0f}s ago, and the replica that made it writes its "
                "log every few seconds (longer while the store is down); retry"
            )
        raise NotFound(
            f"prediction_id {prediction_id!r:.70} is unknown (not among recent predictions "
            f"nor in the last {settings.feedback_lookup_days} days of the log)"
        )

    def _feedback_counter(self) -> datalog.FeedbackCounter:
        model = self.runtime.model
        if self._counter is None or self._counter[0] != model.version:
            since = datetime.fromisoformat(model.manifest["created_at"]).timestamp()
            self._counter = (model.version, datalog.FeedbackCounter(self.store, since))
        return self._counter[1]

    def labelled_since_training(self) -> int:
        """Labelled rows stored since the serving model was trained, by every replica."""
        return self._feedback_counter().count(max_age=self.settings.feedback_count_max_age)

    def _maybe_retrain(self, count: int, version: str) -> bool:
        """Start one retrain per multiple of k per model version, across replicas: the
        replica that creates the marker object starts it."""
        k = self.settings.retrain_every
        if k <= 0 or count < k:
            return False
        return self._start_once(
            f"{version}-{count // k * k}", f"{count} labelled rows since {version} (k={k})"
        )

    def unpin(self) -> dict[str, Any]:
        """Lift the production alias's hold, under the retrain lock (a retrain deciding now
        would otherwise read the hold and then be overruled)."""
        with StoreLock(self.store, keys.RETRAIN_LOCK, ttl_seconds=60):
            return self.registry.unpin()

    # -- reports and summaries ------------------------------------------------------------

    def reports(self, limit: int = 50) -> list[dict[str, Any]]:
        """Up to ``limit`` complete reports, newest first."""
        newest = ReportArchive(self.store).newest(limit)
        return [{"id": report.id, "summary": report.summary} for report in newest]

    def report_file(self, report_id: str, filename: str) -> bytes:
        return ReportArchive(self.store).file(report_id, filename)

    def feature_distribution(self, page: int, page_size: int) -> dict[str, Any]:
        schema = self.runtime.model.manifest["feature_schema"]
        recent = self.stats.recent_features(self.runtime.served.features)
        items = []
        start = (page - 1) * page_size
        for j, f in enumerate(schema[start : start + page_size], start=start):
            col = recent[:, j]
            seen = len(col) > 0
            items.append(
                {
                    "feature": f["name"],
                    "reference": {
                        k: f[k] for k in ("mean", "std", "min", "q01", "median", "q99", "max")
                    },
                    "recent": {
                        "rows": len(col),
                        "mean": float(col.mean()) if seen else None,
                        "std": float(col.std()) if seen else None,
                        "median": float(np.median(col)) if seen else None,
                        "out_of_range_share": float(((col < f["min"]) | (col > f["max"])).mean())
                        if seen
                        else None,
                    },
                }
            )
        return {"page": page, "page_size": page_size, "total": len(schema), "items": items}
