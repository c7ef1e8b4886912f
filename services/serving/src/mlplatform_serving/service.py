"""The serving service: what a serving process holds (the runtime, the data plane, the
prediction log, feedback, statistics) and its lifecycle. Plain Python; the routes translate
HTTP.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

from mlplatform_common import actions, datasets, keys
from mlplatform_common import metric_names as names
from mlplatform_common.errors import (
    ConfigurationError,
    Conflict,
    IntegrityError,
    MLPlatformError,
    ModelNotFound,
    NotFound,
)
from mlplatform_common.lock import StoreLock
from mlplatform_common.registry import LoadedModel, ModelRegistry
from mlplatform_common.reports import ReportArchive
from mlplatform_common.schema import NUMBER, REGRESSION, is_category
from mlplatform_common.storage import Store
from mlplatform_serving import observability as obs
from mlplatform_serving.dataplane import DataPlane
from mlplatform_serving.feedback import Feedback
from mlplatform_serving.launcher import Launcher
from mlplatform_serving.predlog import PredictionLog
from mlplatform_serving.ratelimit import TokenBuckets
from mlplatform_serving.runtime import ModelRuntime, task_of
from mlplatform_serving.settings import ServingSettings

logger = logging.getLogger("mlplatform.serving")


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
            max_wait=settings.log_wait_max_seconds,
            on_wait=obs.observe_log_wait,
        )
        self.plane = DataPlane(settings, self.runtime, self.log, self.stats)
        self.feedback = Feedback(settings, store, self.registry, self.runtime, self.log)
        self.write_limit = TokenBuckets(settings.feedback_rate, settings.feedback_burst)
        self._stop = threading.Event()
        self._loader: threading.Thread | None = None
        # The served version against the production alias (check_alias), for /ready.
        self.alias_state: dict[str, Any] = {}

    @property
    def retrain_launcher(self) -> Launcher | None:
        """Starts one retrainer run without waiting: (reason, force, action) -> started."""
        return self.feedback.retrain_launcher

    @retrain_launcher.setter
    def retrain_launcher(self, launcher: Launcher | None) -> None:
        self.feedback.retrain_launcher = launcher

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Load the model (retrying in the background until it works) and start the log."""
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
        self._set_model(model)
        return True

    def _set_model(self, model: LoadedModel) -> None:
        """The metrics of a newly served version (a regression's value buckets too)."""
        buckets: tuple[float, ...] = ()
        if task_of(model.manifest) == REGRESSION:
            buckets = obs.value_buckets(model.ref_target())
            if not buckets:
                logger.warning(
                    "%s has no numeric reference target: %s is not exported",
                    model.version,
                    names.PREDICTION_VALUE,
                )
        obs.set_model(model.version, self.runtime.load_seconds, buckets)

    def _keep_loading(self) -> None:
        while not self._stop.wait(self.settings.load_retry_seconds):
            if self.runtime.ready or self._try_load():
                return

    def _watch_alias(self) -> None:
        interval = self.settings.alias_check_seconds
        while not self._stop.wait(min(interval, self.settings.load_retry_seconds)):
            if self.runtime.ready and time.monotonic() >= self.alias_state.get("next", 0.0):
                try:
                    self.check_alias()
                except Exception:  # a store or API blip must not stop the checks for good
                    logger.exception("checking the production alias failed")
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
            self.feedback.start_once(
                f"follow-{served}-not-{named}-{str(alias.get('updated_at', ''))[:19]}",
                f"deployment serves {served}, the production alias names {named}: reconcile",
            )
        return self.alias_state

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
        self._set_model(model)
        return model.version, previous

    # -- the production alias's hold ---------------------------------------------------

    def unpin(self) -> dict[str, Any]:
        """Lift the production alias's hold, under the retrain lock (a retrain deciding now
        would otherwise read the hold and then be overruled)."""
        with StoreLock(self.store, keys.RETRAIN_LOCK, ttl_seconds=60):
            return self.registry.unpin()

    # -- moves of the production alias by hand (a retrainer run makes them) ------------

    def promote(self, version: str, pin: bool = False) -> dict[str, Any]:
        """Check that ``version`` is a published version that verifies, then start the
        retrainer run that promotes (``pin``: and holds) it, as ``mlplatform promote|pin``
        does: under the retrain lock, with the rollout. Nothing is moved here."""
        try:
            self.registry.manifest(version)
        except IntegrityError as exc:
            raise ModelNotFound(
                f"model version {version} cannot be promoted: {exc.message}"
            ) from None
        return self._start(actions.promote(version, pin), "/admin/promote")

    def rollback(self) -> dict[str, Any]:
        """Check that production has a previous version that verifies, then start the
        retrainer run that rolls back to it (``mlplatform rollback``: it holds)."""
        alias = self.registry.production()
        if not alias:
            raise Conflict("no model is in production: there is nothing to roll back")
        history = alias.get("history") or []
        if not history:
            raise Conflict(f"production {alias['version']} has no previous version to roll back to")
        try:
            self.registry.manifest(history[-1])
        except (ModelNotFound, IntegrityError) as exc:
            raise Conflict(f"cannot roll back to {history[-1]}: {exc.message}") from None
        return self._start(actions.rollback(), "/admin/rollback")

    def train(self, dataset: str) -> dict[str, Any]:
        """Check that ``dataset`` is a stored data set of this model, then start the retrainer
        run that trains on it, publishes and promotes, as ``mlplatform train --dataset`` does."""
        if not datasets.stored(self.store, dataset):
            raise NotFound(
                f"dataset {dataset!r} is not a data set of model {self.settings.model_name} "
                "(GET /admin/datasets lists them; upload one with POST /admin/datasets)"
            )
        return self._start(actions.train(dataset), "/admin/train")

    def _start(self, action: actions.Action, route: str) -> dict[str, Any]:
        if self.retrain_launcher is None:
            raise ConfigurationError(
                f"no retrain launcher is configured in this deployment to run {action} "
                "(MLPLATFORM_RETRAIN_LAUNCHER=none): use the mlplatform CLI"
            )
        before = self.registry.production()
        started = self.retrain_launcher(f"{action} requested through {route}", action=action)
        return {
            "action": str(action),
            "started": started,
            "model": self.settings.model_name,
            "production": before["version"] if before else None,
        }

    # -- reports and summaries ------------------------------------------------------------

    def reports(self, limit: int = 50) -> list[dict[str, Any]]:
        """Up to ``limit`` complete reports, newest first."""
        newest = ReportArchive(self.store).newest(limit)
        return [{"id": report.id, "summary": report.summary} for report in newest]

    def report_file(self, report_id: str, filename: str) -> bytes:
        return ReportArchive(self.store).file(report_id, filename)

    def feature_distribution(self, page: int, page_size: int) -> dict[str, Any]:
        """Each feature's training statistics beside those of recent inputs: a number's
        mean, spread and out-of-range share; a category's shares of its values and of values
        it never saw. Both with the share of missing values."""
        schema = self.runtime.model.manifest["feature_schema"]
        recent = self.stats.recent_features(self.runtime.served.features)
        items = []
        start = (page - 1) * page_size
        for j, f in enumerate(schema[start : start + page_size], start=start):
            col = recent[:, j]
            missing = np.isnan(col)
            present = col[~missing]
            seen = len(present) > 0
            stats: dict[str, Any] = {
                "rows": len(col),
                "missing_share": float(missing.mean()) if len(col) else None,
            }
            if is_category(f):
                values = f["categories"]
                counts = np.bincount(present.astype(np.intp), minlength=len(values) + 1)
                shares = counts / len(present) if seen else counts * np.nan
                reference = {"shares": dict(zip(values, f.get("shares", []), strict=False))}
                stats |= {
                    "shares": {v: float(shares[i]) if seen else None for i, v in enumerate(values)},
                    "unknown_share": float(shares[len(values)]) if seen else None,
                }
            else:
                reference = {
                    k: f[k] for k in ("mean", "std", "min", "q01", "median", "q99", "max") if k in f
                }
                stats |= {
                    "mean": float(present.mean()) if seen else None,
                    "std": float(present.std()) if seen else None,
                    "median": float(np.median(present)) if seen else None,
                    "out_of_range_share": float(
                        ((present < f["min"]) | (present > f["max"])).mean()
                    )
                    if seen
                    else None,
                }
            items.append(
                {
                    "feature": f["name"],
                    "dtype": f.get("dtype", NUMBER),
                    "reference": reference,
                    "recent": stats,
                }
            )
        return {"page": page, "page_size": page_size, "total": len(schema), "items": items}
