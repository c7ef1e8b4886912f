"""The model runtime: validation, prediction and hot swap. No FastAPI in here.

Serving holds one ``LoadedModel`` at a time in ``self._model``; a reload builds the new one
completely and then replaces the reference in one assignment, so every request sees either the
old model or the new one, never a mix.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from mlplatform_common.errors import InvalidInput, MLPlatformError, ModelNotReady
from mlplatform_common.log import set_model_version
from mlplatform_common.registry import LoadedModel, ModelRegistry
from mlplatform_common.schema import embed

logger = logging.getLogger("mlplatform.serving")


@dataclass
class Prediction:
    """One row's answer."""

    label: Any
    probabilities: list[float]
    backup: bool


@dataclass
class BatchResult:
    """A batch's answers and the frames the prediction log needs."""

    model: LoadedModel
    labels: list[Any]
    proba: np.ndarray
    backup: bool
    features: pd.DataFrame
    embedding: pd.DataFrame | None


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{where}: must be a number, got {type(value).__name__} {value!r:.40}")
    try:
        number = float(value)
    except OverflowError:
        raise InvalidInput(f"{where}: {value!r:.40} is too large for a float") from None
    if not math.isfinite(number):
        raise InvalidInput(f"{where}: must be a finite number, got {value!r}")
    return number


class ModelRuntime:
    """Loads, validates against and predicts with the current model version."""

    def __init__(self, registry: ModelRegistry, pinned_version: str | None = None) -> None:
        self.registry = registry
        self.pinned_version = pinned_version
        self._model: LoadedModel | None = None
        self.not_ready_reason = "model not loaded yet"
        self.load_seconds = 0.0
        self._reload_lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def model(self) -> LoadedModel:
        model = self._model
        if model is None:
            raise ModelNotReady(self.not_ready_reason)
        return model

    @property
    def ready(self) -> bool:
        return self._model is not None

    @property
    def version(self) -> str | None:
        model = self._model
        return model.version if model else None

    def load(self, version: str | None = None) -> LoadedModel:
        """Load and verify ``version`` (default: the pinned version, else the production
        alias) and swap it in. On failure the current model, if any, stays."""
        with self._reload_lock:
            started = time.perf_counter()
            try:
                target = version or self.pinned_version or self.registry.production_version()
                model = self.registry.load(target)
            except MLPlatformError as exc:
                if self._model is None:
                    self.not_ready_reason = f"{exc.type}: {exc.message}"
                logger.error("model load failed: %s", exc.message)
                raise
            self.load_seconds = time.perf_counter() - started
            self._model = model  # the atomic swap
            set_model_version(model.version)
            logger.info("serving model %s (loaded in %.2fs)", model.version, self.load_seconds)
            return model

    # -- input validation -----------------------------------------------------------------

    def validate_rows(self, rows: list[Any], field: str = "instances") -> pd.DataFrame:
        """Check JSON rows against the feature schema; return them as a float frame."""
        features = self.model.features
        expected = set(features)
        out = np.empty((len(rows), len(features)), dtype=float)
        for i, row in enumerate(rows):
            where = f"{field}[{i}]" if field == "instances" else field
            if not isinstance(row, dict):
                raise InvalidInput(f"{where}: must be an object of feature: value")
            unknown = [k for k in row if k not in expected]
            if unknown:
                raise InvalidInput(f"{where}: unknown feature {unknown[0]!r}")
            for j, name in enumerate(features):
                if name not in row:
                    missing = [f for f in features if f not in row]
                    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                    raise InvalidInput(f"{where}: missing feature {name!r}{more}")
                out[i, j] = _number(row[name], f"{where}.{name}")
        return pd.DataFrame(out, columns=features)

    def parse_csv(self, body: bytes) -> pd.DataFrame:
        """Rows as ``text/csv`` (SageMaker style), with or without a header line."""
        features = self.model.features
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InvalidInput("csv: body is not UTF-8 text") from None
        try:
            lines = list(csv.reader(io.StringIO(text), strict=True))
        except csv.Error as exc:
            raise InvalidInput(f"csv: malformed ({exc})") from None
        numbered = [(n, row) for n, row in enumerate(lines, start=1) if any(c.strip() for c in row)]
        if numbered and all(c.strip() in features for c in numbered[0][1]):
            header = [c.strip() for c in numbered[0][1]]
            if sorted(header) != sorted(features):
                missing = [f for f in features if f not in header]
                raise InvalidInput(
                    f"csv header: missing feature {missing[0]!r}"
                    if missing
                    else "csv header: a feature is named twice"
                )
            numbered = numbered[1:]
        else:
            header = features
        if not numbered:
            raise InvalidInput("csv: no data rows")
        out = np.empty((len(numbered), len(features)), dtype=float)
        order = [header.index(f) for f in features]
        for i, (line, row) in enumerate(numbered):
            if len(row) != len(header):
                raise InvalidInput(
                    f"csv line {line}: expected {len(header)} values, got {len(row)}"
                )
            for j, k in enumerate(order):
                cell = row[k].strip()
                try:
                    value = float(cell)
                except ValueError:
                    raise InvalidInput(
                        f"csv line {line}, column {features[j]!r}: {cell!r:.40} is not a number"
                    ) from None
                if not math.isfinite(value):
                    raise InvalidInput(
                        f"csv line {line}, column {features[j]!r}: must be a finite number"
                    )
                out[i, j] = value
        return pd.DataFrame(out, columns=features)

    def tensor_rows(self, data: Any, shape: Any, datatype: str, name: str) -> pd.DataFrame:
        """An Open Inference Protocol input tensor ``[n, n_features]`` as a frame."""
        features = self.model.features
        where = f"inputs[{name}]"
        if datatype not in ("FP32", "FP64"):
            raise InvalidInput(f"{where}.datatype: {datatype!r} is not supported; use FP32 or FP64")
        if (
            not isinstance(shape, list)
            or len(shape) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape)
            or shape[1] != len(features)
            or shape[0] < 1
        ):
            raise InvalidInput(
                f"{where}.shape: must be [n, {len(features)}] with n >= 1, got {shape!r:.60}"
            )
        flat: list[Any] = []
        stack = [data]
        while stack:  # flatten nested lists without recursion
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(reversed(item))
            else:
                flat.append(item)
        if len(flat) != shape[0] * shape[1]:
            raise InvalidInput(
                f"{where}.data: {len(flat)} values do not fill shape {shape} "
                f"({shape[0] * shape[1]} values)"
            )
        values = [_number(v, f"{where}.data[{i}]") for i, v in enumerate(flat)]
        arr = np.asarray(values, dtype=np.float32 if datatype == "FP32" else np.float64)
        return pd.DataFrame(arr.reshape(shape).astype(float), columns=features)

    # -- prediction -----------------------------------------------------------------------

    def predict(self, X: pd.DataFrame) -> BatchResult:
        """Predict a validated frame with the primary model, or the backup if it raises."""
        model = self.model  # one reference for the whole batch: a reload cannot split it
        backup = False
        embedding = None
        try:
            proba = model.pipeline.predict_proba(X)
            embedding = embed(model.pipeline, X)
        except Exception:
            if model.backup is None:
                raise
            logger.exception("primary model %s failed; the backup answers", model.version)
            proba = model.backup.predict_proba(X)
            backup = True
        classes = model.classes
        labels = [classes[i] for i in np.argmax(proba, axis=1)]
        return BatchResult(model, labels, proba, backup, X, embedding)

    def log_frame(self, result: BatchResult, ids: list[str], ts: float) -> pd.DataFrame:
        """The prediction log rows of a batch (DESIGN.md section 4)."""
        frame = result.features.copy()
        if result.embedding is not None:
            frame = pd.concat([frame, result.embedding], axis=1)
        frame.insert(0, "prediction_id", ids)
        frame.insert(1, "ts", ts)
        frame.insert(2, "model_version", result.model.version)
        frame.insert(3, "prediction", [str(label) for label in result.labels])
        frame.insert(4, "probability", result.proba.max(axis=1))
        frame.insert(5, "proba_json", [json.dumps(p.round(6).tolist()) for p in result.proba])
        frame.insert(6, "backup", result.backup)
        return frame
