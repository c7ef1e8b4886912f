"""Feedback: the true label of a prediction, stored durably, counted, and the retrain it
starts every ``retrain_every`` labelled rows. Plain Python; the route runs it in the
threadpool (it reads and writes the store)."""

from __future__ import annotations

import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from mlplatform_common import datalog, keys
from mlplatform_common.errors import InvalidInput, MLPlatformError, NotFound, NotYet
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.schema import REGRESSION, is_category
from mlplatform_common.storage import Store
from mlplatform_serving import observability as obs
from mlplatform_serving.codecs.common import number, parse_model
from mlplatform_serving.codecs.json_rows import RowsCodec
from mlplatform_serving.launcher import Launcher
from mlplatform_serving.predlog import PredictionLog
from mlplatform_serving.runtime import ModelRuntime, task_of
from mlplatform_serving.schemas import FeedbackRequest
from mlplatform_serving.settings import ServingSettings

logger = logging.getLogger("mlplatform.serving")


# Labelled rows of one batch written to the store at once (``Feedback.record_batch``).
FEEDBACK_WRITERS = 8

# Trigger markers kept (``Feedback.start_once``): a marker blocks a second run only while a
# replica can still compute its name, which the newest ones cover (a replica whose count lags
# by 50 multiples of k is not a case); past twice this many the oldest are deleted.
TRIGGER_MARKERS_KEPT = 50


def _row_error(index: int, exc: MLPlatformError) -> dict[str, Any]:
    """A batch row's failure: its index, the status it would have had alone, and the message
    naming the row (``items.<i>.``) and the field."""
    return {
        "index": index,
        "status": exc.status_code,
        "error": f"items.{index}.{exc.message}",
        "type": exc.type,
    }


def _logged_value(value: Any, category: bool) -> Any:
    """A logged feature value as a labelled row keeps it: a number as a float, a category as
    its text, a missing value as None (JSON null, not NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value) if category else float(value)


class Feedback:
    """Resolves a prediction id (or a row given in full), stores the labelled row, counts the
    rows since training and starts a retrain when due."""

    def __init__(
        self,
        settings: ServingSettings,
        store: Store,
        registry: ModelRegistry,
        runtime: ModelRuntime,
        log: PredictionLog,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.runtime = runtime
        self.log = log
        # Starts one retrain without waiting: (reason, force) -> started.
        self.retrain_launcher: Launcher | None = None
        self.markers_kept = TRIGGER_MARKERS_KEPT
        self._counter: tuple[str, datalog.FeedbackCounter] | None = None

    def record(
        self,
        target: Any,
        prediction_id: str | None,
        features: dict[str, Any] | None,
        prediction: Any | None,
    ) -> dict[str, Any]:
        """Store one labelled row durably and say how many arrived since training."""
        model = self.runtime.model
        row = self._labelled_row(target, prediction_id, features, prediction)
        key = datalog.write_feedback(self.store, row)
        obs.FEEDBACK.inc()
        count, started = self._count_and_trigger([key], model.version)
        return {
            "feedback_id": keys.feedback_id(key),
            "prediction_id": prediction_id,
            "stored": True,
            "model_version": row["model_version"],
            "labelled_since_training": count,
            "retrain_every": self.settings.retrain_every,
            "retrain_started": started,
        }

    def record_batch(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Store each item (a ``FeedbackRequest``'s fields) as its own labelled row: each row
        is one object, stored whole or not at all, and a row that fails (bad fields, an
        unknown id, a store error) never stops the others. Says, per row in order, 201 with
        its ``feedback_id`` or the error's status, message (``items.<i>.<field>: ...``) and
        type; the rows stored count towards the next retrain as single rows do."""
        model = self.runtime.model
        results: list[dict[str, Any] | None] = [None] * len(items)
        ready: list[tuple[int, dict[str, Any]]] = []
        for i, item in enumerate(items):
            try:
                req: FeedbackRequest = parse_model(FeedbackRequest, item)
                row = self._labelled_row(
                    req.target, req.prediction_id, req.features, req.prediction
                )
            except MLPlatformError as exc:
                results[i] = _row_error(i, exc)
                continue
            ready.append((i, row))

        def write(row: dict[str, Any]) -> str | MLPlatformError:
            try:
                return datalog.write_feedback(self.store, row)
            except MLPlatformError as exc:  # this row only; the others go on
                return exc

        # One object per row: written a few at a time, as one by one a 1,000-row batch
        # waits a store round trip per row.
        with ThreadPoolExecutor(FEEDBACK_WRITERS, thread_name_prefix="feedback") as pool:
            written = list(pool.map(write, [row for _, row in ready]))
        stored = []
        for (i, row), key in zip(ready, written, strict=True):
            if isinstance(key, MLPlatformError):
                results[i] = _row_error(i, key)
                continue
            stored.append(key)
            results[i] = {
                "index": i,
                "status": 201,
                "feedback_id": keys.feedback_id(key),
                "prediction_id": row["prediction_id"],
            }
        if stored:
            obs.FEEDBACK.inc(len(stored))
        count, started = self._count_and_trigger(stored, model.version)
        return {
            "stored": len(stored),
            "failed": len(items) - len(stored),
            "results": results,
            "labelled_since_training": count,
            "retrain_every": self.settings.retrain_every,
            "retrain_started": started,
        }

    def _count_and_trigger(self, stored: list[str], version: str) -> tuple[int | None, bool]:
        """Count the rows just stored and start a retrain if a multiple of k was reached.
        The rows are stored: from here on nothing may turn the answer into an error, or a
        client that retries would store them twice."""
        if not stored:
            return None, False
        try:
            counter = self._feedback_counter()
            for key in stored:
                counter.note(key)
            count = counter.count(max_age=self.settings.feedback_count_max_age)
            return count, self._maybe_retrain(count, version)
        except MLPlatformError as exc:
            logger.warning("feedback stored; counting labelled rows failed: %s", exc.message)
            return None, False

    def _labelled_row(
        self,
        target: Any,
        prediction_id: str | None,
        features: dict[str, Any] | None,
        prediction: Any | None,
    ) -> dict[str, Any]:
        """The labelled row to store for one feedback: checked, and resolved from the log
        (by ``prediction_id``) or from the row given in full."""
        model = self.runtime.model
        if prediction_id is not None and features is not None:
            raise InvalidInput("prediction_id: give either prediction_id or features, not both")
        if prediction_id is not None:
            logged = self._logged(prediction_id)
            # Judged by the version that made the prediction, which a retrain or a reload
            # may since have replaced with one of other classes or features.
            version = str(logged["model_version"])
            made_by = self._manifest_of(version)
            target = self._label_of(target, "target", made_by)
            row_features = {
                spec["name"]: _logged_value(logged[spec["name"]], is_category(spec))
                for spec in made_by["feature_schema"]
                if spec["name"] in logged
            }
            predicted = str(logged["prediction"])
        elif features is not None:
            target = self._label_of(target, "target")
            served = self.runtime.served
            X = RowsCodec.of(served).validate([features], "features")
            row_features = {
                name: served.text_of(j, X[0:1, j])[0]
                if j in served.category_text
                else _logged_value(value, False)
                for j, (name, value) in enumerate(zip(model.features, X[0].tolist(), strict=True))
            }
            if prediction is not None:
                predicted = str(self._label_of(prediction, "prediction"))
            elif served.regression:
                predicted = str(float(self.runtime.predict(X).value[0]))  # type: ignore[index]
            else:
                predicted = str(self.runtime.predict(X).labels[0])
            version = model.version
        else:
            raise InvalidInput("prediction_id: give prediction_id, or features with the target")
        return {
            "prediction_id": prediction_id,
            "model_version": version,
            "prediction": predicted,
            "target": str(target),
            "features": row_features,
        }

    def _label_of(self, value: Any, field: str, manifest: dict[str, Any] | None = None) -> Any:
        """``value`` as a label of the served model, or of the version whose ``manifest`` is
        given: a class (``_class_of``), or a regression's number."""
        manifest = manifest or self.runtime.model.manifest
        if task_of(manifest) != REGRESSION:
            return self._class_of(value, field, manifest)
        try:
            return number(value, field)
        except InvalidInput as exc:
            raise InvalidInput(
                f"{exc.message} (model {manifest['version']} is a regression: its labels are "
                "numbers)"
            ) from None

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

    def _logged(self, prediction_id: str) -> dict[str, Any]:
        """The logged row of a prediction, made by this replica or another one. Another
        replica's prediction reaches the store at its next log flush: an id younger than
        ``feedback_wait_seconds`` is looked for until then, and one still missing but younger
        than ``feedback_pending_seconds`` is ``NotYet`` (409, Retry-After), not unknown."""
        settings = self.settings
        logged = self.log.lookup(prediction_id)
        made = datalog.prediction_time(prediction_id)
        age = time.time() - made if made is not None else float("inf")
        # Wait at most until the id is feedback_wait_seconds old, counted from now for an id
        # from a clock ahead of ours (never longer than the wait itself); none for other ids.
        waiting = settings.feedback_wait_seconds - max(age, 0.0) if age > -60 else 0.0
        deadline = time.monotonic() + max(waiting, 0.0)
        while logged is None:
            logged = datalog.find_prediction(
                self.store, prediction_id, settings.feedback_lookup_days
            )
            if logged is not None or time.monotonic() >= deadline:
                break
            time.sleep(min(0.5, deadline - time.monotonic()))
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
        return self.start_once(
            f"{version}-{count // k * k}", f"{count} labelled rows since {version} (k={k})"
        )

    def start_once(self, marker: str, reason: str) -> bool:
        """Start one retrainer run for ``marker`` across replicas: the replica that creates
        the marker object starts it (the k-row trigger here, ``Service.check_alias``)."""
        if self.retrain_launcher is None:
            return False
        safe = "".join(c if c.isalnum() or c in "-." else "-" for c in marker)
        body = {"reason": reason, "at": time.time()}
        if not self.store.put_if_absent(keys.trigger(safe), json.dumps(body).encode()):
            return False
        try:
            started = self.retrain_launcher(reason, False)
        except MLPlatformError as exc:
            logger.error("could not start a retrain: %s", exc.message)
            started = False
        try:
            self._prune_markers()
        except MLPlatformError as exc:  # the next new marker prunes again
            logger.warning("could not delete old trigger markers: %s", exc.message)
        return started

    def _prune_markers(self) -> None:
        """Keep the newest ``markers_kept`` markers once there are twice as many. A marker
        is needed while a replica may compute its name again: ``<version>-<n>`` until the
        count reaches the next multiple of k, a ``follow-`` one until the alias moves. A
        retrain's end answers none of them: the next row, still in the same multiple, would
        start another run. Markers written before they carried ``at`` go first."""
        names = self.store.list_keys(keys.TRIGGERS)
        if len(names) <= 2 * self.markers_kept:
            return
        written: list[tuple[float, str]] = []
        for key in names:
            try:
                at = float(self.store.get_json(key).get("at", 0.0))
            except NotFound:  # another replica pruned it
                continue
            except (MLPlatformError, AttributeError, TypeError, ValueError):
                at = 0.0  # unreadable: oldest
            written.append((at, key))
        for _, key in sorted(written)[: len(written) - self.markers_kept]:
            self.store.delete(key)
