"""The model runtime: loading, verifying and hot-swapping a version, and its engines. No
FastAPI and no wire format in here (``codecs/``).

A loaded version becomes a ``Served`` bundle (the model, its prediction engine and everything
the hot path would otherwise recompute per request). A reload builds the new bundle completely
and replaces the reference in one assignment, so a request sees the old version or the new
one, never a mix.

The engine is ONNX Runtime when the version carries an ONNX file that the retrainer checked
against scikit-learn at publish time, else the scikit-learn pipeline itself. The same holds
for the embedding written into the prediction log. scikit-learn (and pandas, which it is fed
with) is imported only for a version that needs it: the serving image ships without it
(``SERVING_EXTRAS=sklearn`` adds it).
"""

from __future__ import annotations

import functools
import gc
import importlib.util
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlplatform_common import datalog
from mlplatform_common.errors import (
    Conflict,
    InvalidInput,
    MLPlatformError,
    ModelNotFound,
    ModelNotReady,
)
from mlplatform_common.log import set_model_version
from mlplatform_common.registry import BACKUP, LoadedModel, ModelRegistry
from mlplatform_common.schema import CLASSIFICATION, REGRESSION, UNKNOWN, is_category

logger = logging.getLogger("mlplatform.serving")


def has_sklearn() -> bool:
    return importlib.util.find_spec("sklearn") is not None


def _frame(X: np.ndarray, features: list[str]) -> Any:
    import pandas as pd  # only the scikit-learn paths need a DataFrame

    return pd.DataFrame(X, columns=features)


def model_output(model: Any, X: np.ndarray, features: list[str], regression: bool) -> np.ndarray:
    """A scikit-learn model's answer for encoded rows: the probabilities, or for a regression
    the predicted values (float64 ``[n]``)."""
    # The pipeline was fitted on a DataFrame; give it one so it checks the columns.
    frame = _frame(X, features)
    if regression:
        return np.asarray(model.predict(frame), dtype=np.float64).reshape(-1)
    proba: np.ndarray = model.predict_proba(frame)
    return proba


class SklearnEngine:
    """The pickled pipeline's ``predict_proba``, or ``predict`` for a regression (the
    fallback engine)."""

    name = "sklearn"

    def __init__(self, pipeline: Any, features: list[str], regression: bool = False) -> None:
        self.pipeline = pipeline
        self.features = features
        self.regression = regression

    def run(self, X: np.ndarray) -> tuple[np.ndarray, None]:
        """The probabilities or values (no embedding: the log computes it with the version's
        own)."""
        return model_output(self.pipeline, X, self.features, self.regression), None


class SklearnEmbedding:
    """The pipeline's ``embedding`` step (the fallback for the prediction log)."""

    def __init__(self, pipeline: Any, features: list[str]) -> None:
        self.step = pipeline.named_steps["embedding"]
        self.features = features

    def transform(self, X: np.ndarray) -> np.ndarray:
        import sklearn

        with sklearn.config_context(assume_finite=True):
            return np.asarray(self.step.transform(_frame(X, self.features)))


class OnnxEngine:
    """A checked ONNX graph, run by ONNX Runtime on one thread."""

    name = "onnxruntime"

    def __init__(
        self,
        data: bytes,
        input_name: str,
        output_name: str,
        embedding_output: str | None = None,
        regression: bool = False,
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # Parallelism comes from uvicorn workers and replicas; one thread avoids oversubscription.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        self.input = input_name
        self.outputs = [output_name, *([embedding_output] if embedding_output else [])]
        self.regression = regression

    def run(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The first output (the probabilities, or a regression's values as ``[n]``) and,
        from graphs that return it too, the embedding of the same run."""
        out = self.session.run(self.outputs, {self.input: X})
        first = np.asarray(out[0], dtype=np.float64).reshape(-1) if self.regression else out[0]
        return first, out[1] if len(out) > 1 else None

    def transform(self, X: np.ndarray) -> np.ndarray:
        """The embedding graph's output: features in, PCA_1..PCA_n out."""
        return self.run(X)[0]


@dataclass
class Served:
    """A loaded version plus what the hot path needs, computed once at load."""

    model: LoadedModel
    engine: SklearnEngine | OnnxEngine
    embedding: SklearnEmbedding | OnnxEngine
    features: list[str] = field(init=False)
    task: str = field(init=False)
    regression: bool = field(init=False)
    # (column, feature name, its number of values) of each category feature: the code a value
    # the version never saw gets is that number (``schema.encode``).
    category_columns: list[tuple[int, str, int]] = field(init=False)
    category_text: dict[int, np.ndarray] = field(init=False)
    classes: list[Any] = field(init=False)
    class_keys: list[str] = field(init=False)
    class_names: list[str] = field(init=False)
    has_backup: bool = field(init=False)
    # What a codec computes once per version (``RowsCodec.of``), dropped with the version.
    codecs: dict[str, Any] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.features = self.model.features
        self.task = task_of(self.model.manifest)
        self.regression = self.task == REGRESSION
        schema = self.model.manifest["feature_schema"]
        self.category_columns = [
            (j, spec["name"], len(spec["categories"]))
            for j, spec in enumerate(schema)
            if is_category(spec)
        ]
        # Each category column's values by code, then UNKNOWN (the prediction log's text).
        self.category_text = {
            j: np.asarray([*spec["categories"], UNKNOWN], dtype=object)
            for j, spec in enumerate(schema)
            if is_category(spec)
        }
        self.classes = self.model.classes
        self.class_keys = [str(c) for c in self.classes]
        names = self.model.manifest.get("class_names") or self.class_keys
        self.class_names = [str(n) for n in names]
        # The backup is a pickle: usable only where scikit-learn is installed.
        self.has_backup = BACKUP in self.model.files and has_sklearn()

    @property
    def version(self) -> str:
        return self.model.version

    def text_of(self, j: int, codes: np.ndarray) -> np.ndarray:
        """Category column ``j``'s codes as the prediction log writes them: the value's text,
        ``UNKNOWN`` for one the version never saw, None where missing."""
        missing = np.isnan(codes)
        text: np.ndarray = self.category_text[j][np.where(missing, 0, codes).astype(np.intp)]
        text[missing] = None
        return text


def task_of(manifest: dict[str, Any]) -> str:
    """A version's task (versions published before tasks existed are classifiers)."""
    return str(manifest.get("task") or CLASSIFICATION)


def _onnx(
    model: LoadedModel, data: bytes | None, info: dict[str, Any], regression: bool = False
) -> OnnxEngine | None:
    if data is None or not info or "error" in info:
        return None
    try:
        return OnnxEngine(
            data, info["input"], info["output"], info.get("embedding_output"), regression
        )
    except Exception as exc:  # a runtime that cannot load it: fall back, do not fail
        logger.warning("ONNX file of %s not usable (%s); using scikit-learn", model.version, exc)
        return None


def _needs_sklearn(model: LoadedModel, what: str) -> None:
    if not has_sklearn():
        info = model.manifest.get("onnx") or {}
        why = info.get("error") or (info.get("embedding") or {}).get("error") or "none published"
        raise ModelNotReady(
            f"model {model.version} has no checked ONNX file for {what} ({why}) and this "
            "serving has no scikit-learn to run its pickle: install the 'sklearn' extra "
            "(image build argument SERVING_EXTRAS=sklearn), or publish a version that converts"
        )


def make_served(model: LoadedModel) -> Served:
    """ONNX Runtime for what the version has checked ONNX files for, scikit-learn otherwise."""
    clash = datalog.first_log_column(model.features)
    if clash is not None:  # training refuses these names; a version published before may not
        raise ModelNotReady(
            f"model {model.version}: feature {clash!r} has the name of a column the "
            "prediction log adds, and would overwrite it; retrain with the column renamed"
        )
    info = model.manifest.get("onnx") or {}
    regression = task_of(model.manifest) == REGRESSION
    engine: SklearnEngine | OnnxEngine | None = _onnx(model, model.onnx, info, regression)
    embedding: SklearnEmbedding | OnnxEngine | None = None
    if engine is not None:
        embedding = _onnx(model, model.embedding_onnx, info.get("embedding") or {})
    if engine is None:
        _needs_sklearn(model, "its predictions")
        engine = SklearnEngine(model.pipeline, model.features, regression)
    if embedding is None:
        _needs_sklearn(model, "its embedding")
        embedding = SklearnEmbedding(model.pipeline, model.features)
    return Served(model, engine, embedding)


def top_of(proba: np.ndarray, label_index: np.ndarray) -> np.ndarray:
    """Each row's probability of its predicted class (``label_index`` is ``proba``'s argmax).
    The same values as ``proba.max(axis=1)``, several times faster: a reduction along a
    2-long axis costs more than indexing (bench/BENCHMARKS.md)."""
    top: np.ndarray = proba[np.arange(len(proba)), label_index]
    return top


@dataclass
class BatchResult:
    """A batch's answers, kept as arrays."""

    served: Served
    X: np.ndarray
    proba: np.ndarray
    label_index: np.ndarray
    backup: bool
    # The embedding from the run that predicted the rows, when the model's graph returns it
    # (else the log computes it).
    embedding: np.ndarray | None = None
    # A regression's predicted values ([n]); its ``proba`` is then [n, 0] and ``label_index``
    # zeros.
    value: np.ndarray | None = None

    @property
    def labels(self) -> list[Any]:
        classes = self.served.classes
        return [classes[i] for i in self.label_index.tolist()]

    @functools.cached_property
    def top(self) -> np.ndarray:
        """Each row's probability of its predicted class (metrics and answers both read it);
        NaN for a regression's rows."""
        if self.value is not None:
            return np.full(len(self.value), np.nan)
        return top_of(self.proba, self.label_index)

    def rows(self, start: int, stop: int) -> BatchResult:
        """The result of rows ``start:stop`` (one request of several predicted together)."""
        part = BatchResult(
            self.served,
            self.X[start:stop],
            self.proba[start:stop],
            self.label_index[start:stop],
            self.backup,
            None if self.embedding is None else self.embedding[start:stop],
            None if self.value is None else self.value[start:stop],
        )
        part.top = self.top[start:stop]  # cached_property: a plain attribute once set
        return part


class ModelRuntime:
    """Loads, validates against and predicts with the current model version."""

    def __init__(self, registry: ModelRegistry, pinned_version: str | None = None) -> None:
        self.registry = registry
        self.pinned_version = pinned_version
        self._served: Served | None = None
        self.not_ready_reason = "model not loaded yet"
        self.load_seconds = 0.0
        self._reload_lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def served(self) -> Served:
        served = self._served
        if served is None:
            raise ModelNotReady(self.not_ready_reason)
        return served

    @property
    def model(self) -> LoadedModel:
        return self.served.model

    @property
    def ready(self) -> bool:
        return self._served is not None

    @property
    def version(self) -> str | None:
        served = self._served
        return served.version if served else None

    @property
    def engine(self) -> str | None:
        served = self._served
        return served.engine.name if served else None

    def _load_failed(self, message: str, detail: str, waiting: bool = False) -> None:
        """Log a failed load: an ERROR only while no model serves (the process cannot answer);
        with one serving (a refused reload), or while waiting for a first model, a WARNING."""
        serving = self._served
        if serving is not None:
            logger.warning(message + "; %s keeps serving", detail, serving.version)
        else:
            (logger.warning if waiting else logger.error)(message, detail)

    def load(self, version: str | None = None, signature: str | None = None) -> LoadedModel:
        """Load and verify ``version`` (default: the pinned version, else the production
        alias) and swap it in. On failure the current model, if any, stays.

        ``signature``: the manifest HMAC the caller published. Another value means this
        store holds a different model under that version (the caller uses another store):
        ``Conflict``, and nothing is swapped."""
        with self._reload_lock:
            started = time.perf_counter()
            try:
                target = version or self.pinned_version or self.registry.production_version()
                model = self.registry.load(target)
                if signature is not None and model.signature != signature:
                    raise Conflict(
                        f"version {target} in this serving's store ({self.registry.store.url}) "
                        "is not the one asked for: its manifest signature differs (does the "
                        "caller use another store?)"
                    )
            except MLPlatformError as exc:
                if self._served is None:
                    self.not_ready_reason = f"{exc.type}: {exc.message}"
                # Waiting for a first model (a bootstrap still training) is no error, nor is
                # a refused reload: the current model keeps serving.
                waiting = self._served is None and isinstance(exc, ModelNotFound)
                self._load_failed("model load failed: %s", exc.message, waiting)
                raise
            try:
                served = make_served(model)
            except MLPlatformError as exc:
                if self._served is None:
                    self.not_ready_reason = f"{exc.type}: {exc.message}"
                self._load_failed(f"model {model.version} not servable: %s", exc.message)
                raise
            served.engine.run(np.zeros((1, len(served.features))))  # warm up
            self.load_seconds = time.perf_counter() - started
            self._served = served  # the atomic swap
            # Move everything alive now (the model, its runtime, the libraries...) out of the
            # cyclic collector's view: otherwise each full collection, which parsing big JSON
            # batches triggers often, walks it all (the p99 of 1,000-row requests,
            # bench/BENCHMARKS.md). Refcounting still frees a replaced model.
            gc.collect()
            gc.freeze()
            set_model_version(model.version)
            logger.info(
                "serving model %s with %s (loaded in %.2fs)",
                model.version,
                served.engine.name,
                self.load_seconds,
            )
            return model

    # -- prediction -----------------------------------------------------------------------

    def predict(self, X: np.ndarray) -> BatchResult:
        """Predict a validated matrix with the primary model, or the backup if it raises."""
        served = self.served  # one reference for the whole batch: a reload cannot split it
        backup = False
        try:
            proba, Z = served.engine.run(X)
        except Exception:
            backup_model = served.model.backup if served.has_backup else None
            if backup_model is None:
                raise
            logger.exception("primary model %s failed; the backup answers", served.version)
            proba = model_output(backup_model, X, served.features, served.regression)
            Z, backup = None, True
        if served.regression:
            if not np.isfinite(proba).all():
                bad = int(np.flatnonzero(~np.isfinite(proba))[0])
                raise InvalidInput(
                    f"row {bad}: values too large for the model (its arithmetic overflowed)"
                )
            n = len(proba)
            return BatchResult(
                served, X, np.empty((n, 0)), np.zeros(n, dtype=np.intp), backup, Z, proba
            )
        if not np.isfinite(proba).all():
            bad = int(np.flatnonzero(~np.isfinite(proba).all(axis=1))[0])
            raise InvalidInput(
                f"row {bad}: values too large for the model (its arithmetic overflowed)"
            )
        return BatchResult(served, X, proba, np.argmax(proba, axis=1), backup, Z)
