"""The model runtime: validation, prediction and hot swap. No FastAPI in here.

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

import csv
import functools
import gc
import importlib.util
import io
import itertools
import logging
import math
import operator
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
import orjson

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
from mlplatform_common.schema import FEATURE_LIMIT, in_range

logger = logging.getLogger("mlplatform.serving")

_NUMBER_TYPES = {float, int}


def has_sklearn() -> bool:
    return importlib.util.find_spec("sklearn") is not None


def _frame(X: np.ndarray, features: list[str]) -> Any:
    import pandas as pd  # only the scikit-learn paths need a DataFrame

    return pd.DataFrame(X, columns=features)


class SklearnEngine:
    """The pickled pipeline's ``predict_proba`` (the fallback engine)."""

    name = "sklearn"

    def __init__(self, pipeline: Any, features: list[str]) -> None:
        self.pipeline = pipeline
        self.features = features

    def run(self, X: np.ndarray) -> tuple[np.ndarray, None]:
        """The probabilities (no embedding: the log computes it with the version's own)."""
        # The pipeline was fitted on a DataFrame; give it one so it checks the columns.
        proba: np.ndarray = self.pipeline.predict_proba(_frame(X, self.features))
        return proba, None


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
        self, data: bytes, input_name: str, output_name: str, embedding_output: str | None = None
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # Parallelism comes from uvicorn workers and replicas; one thread avoids oversubscription.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        self.input = input_name
        self.outputs = [output_name, *([embedding_output] if embedding_output else [])]

    def run(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The first output (the probabilities) and, from graphs that return it too, the
        embedding of the same run."""
        out = self.session.run(self.outputs, {self.input: X})
        return out[0], out[1] if len(out) > 1 else None

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
    feature_set: frozenset[str] = field(init=False)
    getter: Any = field(init=False)
    json_decoder: Any = field(init=False)
    row_packer: struct.Struct = field(init=False)
    classes: list[Any] = field(init=False)
    class_keys: list[str] = field(init=False)
    class_names: list[str] = field(init=False)
    has_backup: bool = field(init=False)

    def __post_init__(self) -> None:
        self.features = self.model.features
        self.feature_set = frozenset(self.features)
        # itemgetter of one name returns a value, not a tuple; keep it a tuple for chain().
        self.getter = (
            operator.itemgetter(*self.features)
            if len(self.features) > 1
            else lambda row: (row[self.features[0]],)
        )
        self.json_decoder = _envelope_decoder(self.features)
        self.row_packer = struct.Struct(f"={len(self.features)}d")  # one row as float64s
        self.classes = self.model.classes
        self.class_keys = [str(c) for c in self.classes]
        names = self.model.manifest.get("class_names") or self.class_keys
        self.class_names = [str(n) for n in names]
        # The backup is a pickle: usable only where scikit-learn is installed.
        self.has_backup = BACKUP in self.model.files and has_sklearn()

    @property
    def version(self) -> str:
        return self.model.version

    def matrix(self, rows: list[Any]) -> np.ndarray:
        """Decoded rows (``json_decoder``'s structs) as a float64 matrix (read-only). Each
        row's floats are packed to bytes in C loops (``starmap``, ``struct``): about half the
        time of ``np.fromiter`` over the values (``make bench``, bench/BENCHMARKS.md)."""
        packed = b"".join(
            itertools.starmap(self.row_packer.pack, map(msgspec.structs.astuple, rows))
        )
        return np.frombuffer(packed, dtype=np.float64).reshape(len(rows), len(self.features))


def _envelope_decoder(features: list[str]) -> msgspec.json.Decoder[Any] | None:
    """A decoder of ``{"features": {...}}`` / ``{"instances": [{...}, ...]}`` whose rows are
    typed structs of exactly these features as floats (ints accepted, bools and strings not):
    msgspec checks every row while parsing, with no dict per row. None for feature names
    msgspec cannot match (a ``"``, a ``\\`` or a control character): every body of such a
    model takes the checked path."""
    try:
        row = msgspec.defstruct(
            "Row",
            [(f"f{i}", float) for i in range(len(features))],
            rename={f"f{i}": name for i, name in enumerate(features)},  # even "a (cm)"
            forbid_unknown_fields=True,
            gc=False,
        )
    except ValueError:
        return None
    envelope = msgspec.defstruct(
        "Envelope",
        [
            ("features", msgspec.UnsetType | row, msgspec.UNSET),
            ("instances", msgspec.UnsetType | list[row], msgspec.UNSET),  # type: ignore[valid-type]
        ],
        forbid_unknown_fields=True,
        gc=False,
    )
    return msgspec.json.Decoder(envelope)


def _onnx(model: LoadedModel, data: bytes | None, info: dict[str, Any]) -> OnnxEngine | None:
    if data is None or not info or "error" in info:
        return None
    try:
        return OnnxEngine(data, info["input"], info["output"], info.get("embedding_output"))
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
    engine: SklearnEngine | OnnxEngine | None = _onnx(model, model.onnx, info)
    embedding: SklearnEmbedding | OnnxEngine | None = None
    if engine is not None:
        embedding = _onnx(model, model.embedding_onnx, info.get("embedding") or {})
    if engine is None:
        _needs_sklearn(model, "its predictions")
        engine = SklearnEngine(model.pipeline, model.features)
    if embedding is None:
        _needs_sklearn(model, "its embedding")
        embedding = SklearnEmbedding(model.pipeline, model.features)
    return Served(model, engine, embedding)


def top_of(proba: np.ndarray, label_index: np.ndarray) -> np.ndarray:
    """Each row's probability of its predicted class (``label_index`` is ``proba``'s argmax).
    The same values as ``proba.max(axis=1)``, which takes ~35 µs per 1,000 two-class rows (a
    reduction along a 2-long axis) against ~4 µs here (bench/BENCHMARKS.md)."""
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

    @property
    def labels(self) -> list[Any]:
        classes = self.served.classes
        return [classes[i] for i in self.label_index.tolist()]

    @functools.cached_property
    def top(self) -> np.ndarray:
        """Each row's probability of its predicted class (metrics and answers both read it)."""
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
        )
        part.top = self.top[start:stop]  # cached_property: a plain attribute once set
        return part


_FP32_MAX = float(np.finfo(np.float32).max)


def _json_kind(value: Any) -> str:
    """A JSON value as a client wrote it: ``null`` (an empty cell?), ``true``, ``"abc"``..."""
    if value is None:
        return "null (an empty value)"
    if isinstance(value, bool | str):
        kind = "a string" if isinstance(value, str) else "a boolean"
        return f"{kind} {orjson.dumps(value).decode()[:40]}"
    if isinstance(value, list | dict):
        return "an array" if isinstance(value, list) else "an object"
    return type(value).__name__


def _csv_float(cell: str) -> float:
    """A CSV cell as a number, the way numpy's reader (``csv_matrix``) reads one: ``float()``
    without the digit separators (``1_000``) and non-ASCII digits it also accepts."""
    cell = cell.strip()
    if "_" in cell or not cell.isascii():
        raise ValueError(cell)
    return float(cell)


def _is_number(cell: str) -> bool:
    try:
        _csv_float(cell)
    except ValueError:
        return False
    return True


def _header_names(cells: list[str], features: list[str]) -> list[str | None]:
    """A CSV line's cells as the features they name (surrounding spaces aside), None for a
    cell that names none: the line is a header if no cell is None."""
    names = {f.strip(): f for f in features} | {f: f for f in features}
    return [names.get(c, names.get(c.strip())) for c in cells]


def csv_matrix(text: str, features: list[str], max_rows: int | None) -> np.ndarray | None:
    """A well-formed ``text/csv`` body (see ``ModelRuntime.parse_csv``) as a float64 matrix,
    read by numpy's C reader (``np.loadtxt``): ~1.2 ms for 1,000 rows of 30 features, where
    reading every cell in Python took ~9 ms (bench/BENCHMARKS.md). None for any other body,
    which the checked reading then reads again to name its first problem: a cell that is not
    a number, a row of another width, a value out of range, more rows than ``max_rows``."""
    ends = [i for i in (text.find("\n"), text.find("\r")) if i >= 0]
    first_end = min(ends, default=len(text))
    try:
        cells = next(csv.reader([text[:first_end]], strict=True), [])
    except csv.Error:
        return None
    head = _header_names(cells, features)
    if head and None not in head:  # a header line: the features, in any order
        if sorted(map(str, head)) != sorted(features):
            return None
        text, order = text[first_end:], [head.index(f) for f in features]
    else:
        order = list(range(len(features)))
    lines = text.count("\n") + text.count("\r") - text.count("\r\n") + 1
    if not text.strip() or (max_rows is not None and lines > 2 * (max_rows + 1)):
        return None  # the checked reading stops at its limit (numpy's would warn of blanks)
    if '"' in text:
        return None  # numpy reads '"1"2' as 12 where csv refuses it: quoted cells are checked
    try:
        X = np.loadtxt(
            io.StringIO(text, newline=None),  # \r\n and \r end lines, as in csv.reader
            delimiter=",",
            comments=None,
            dtype=np.float64,
            ndmin=2,
        )
    except ValueError:
        return None
    if X.shape[1] != len(features) or not len(X) or not in_range(X):
        return None
    if max_rows is not None and len(X) > max_rows:
        return None
    return X if order == list(range(len(features))) else np.ascontiguousarray(X[:, order])


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{where}: must be a number, got {_json_kind(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise InvalidInput(f"{where}: {value!r:.40} is too large for a float") from None
    if not math.isfinite(number):
        raise InvalidInput(f"{where}: must be a finite number, got {value!r}")
    if abs(number) > FEATURE_LIMIT:
        raise InvalidInput(f"{where}: {value!r:.40} {_BEYOND}")
    return number


_BEYOND = f"is beyond ±{FEATURE_LIMIT:g}, too large to predict or train on"


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
                # Waiting for a first model (a bootstrap still training) is no error.
                waiting = self._served is None and isinstance(exc, ModelNotFound)
                (logger.warning if waiting else logger.error)("model load failed: %s", exc.message)
                raise
            try:
                served = make_served(model)
            except MLPlatformError as exc:
                if self._served is None:
                    self.not_ready_reason = f"{exc.type}: {exc.message}"
                logger.error("model %s not servable: %s", model.version, exc.message)
                raise
            served.engine.run(np.zeros((1, len(served.features))))  # warm up
            self.load_seconds = time.perf_counter() - started
            self._served = served  # the atomic swap
            # Move everything alive now (the model, its runtime, the libraries...) out of the cyclic
            # collector's view: otherwise each full collection, which parsing big JSON
            # batches triggers often, walks it all. Measured: p99 of a 1,000-row request
            # 140 ms -> 25 ms (bench/BENCHMARKS.md). Refcounting still frees a replaced model.
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

    # -- input validation -----------------------------------------------------------------

    def _explain(self, rows: list[Any], field: str, served: Served) -> InvalidInput:
        """The precise error for rows the fast path refused (slow; only on bad input)."""
        features = served.features
        for i, row in enumerate(rows):
            where = f"{field}[{i}]" if field == "instances" else field
            if not isinstance(row, dict):
                return InvalidInput(f"{where}: must be an object of feature: value")
            unknown = [k for k in row if k not in served.feature_set]
            if unknown:
                return InvalidInput(f"{where}: unknown feature {unknown[0]!r}")
            for name in features:
                if name not in row:
                    missing = [f for f in features if f not in row]
                    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                    return InvalidInput(f"{where}: missing feature {name!r}{more}")
                try:
                    _number(row[name], f"{where}.{name}")
                except InvalidInput as exc:
                    return exc
        return InvalidInput(f"{field}: invalid rows")

    def validate_rows(self, rows: list[Any], field: str = "instances") -> np.ndarray:
        """Check JSON rows against the feature schema; return them as a float64 matrix."""
        served = self.served
        n = len(served.features)
        try:
            # C-level loops only: pick the features in order (KeyError if one is missing),
            # refuse extra keys by length, then one pass over every value's type.
            if not all(type(row) is dict and len(row) == n for row in rows):
                raise ValueError
            values = list(itertools.chain.from_iterable(map(served.getter, rows)))
            if not set(map(type, values)) <= _NUMBER_TYPES:  # bool is not a number here
                raise ValueError
            X = np.array(values, dtype=np.float64).reshape(len(rows), n)
            if not in_range(X):
                raise ValueError
        except (ValueError, TypeError, OverflowError, KeyError):
            raise self._explain(rows, field, served) from None
        return X

    def decode_json(self, body: bytes) -> tuple[np.ndarray, str] | None:
        """The fast path for a well-formed JSON body: its rows as a float64 matrix and the field
        they came in (``features`` or ``instances``). None for anything else, which the checked
        path (``loads`` then ``validate_rows``) then parses again to name the problem."""
        served = self.served
        if served.json_decoder is None:
            return None
        try:
            envelope = served.json_decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
            return None  # UnicodeDecodeError: invalid UTF-8 in an object key
        if (envelope.features is msgspec.UNSET) == (envelope.instances is msgspec.UNSET):
            return None
        field_ = "instances" if envelope.features is msgspec.UNSET else "features"
        rows = envelope.instances if field_ == "instances" else [envelope.features]
        X = served.matrix(rows)
        if not rows or not in_range(X):
            return None
        return X, field_

    def parse_csv(self, body: bytes, max_rows: int | None = None) -> np.ndarray:
        """Rows as ``text/csv`` (SageMaker style), with or without a header line. numpy's
        reader reads a well-formed body (``csv_matrix``); any other is read again here, cell
        by cell, to name its first problem. Reading stops past ``max_rows`` rows (+ a
        header), or twice as many lines blank ones included: a body of many more is refused
        without parsing all of it."""
        features = self.served.features
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InvalidInput("csv: body is not UTF-8 text") from None
        fast = csv_matrix(text, features, max_rows)
        if fast is not None:
            return fast
        numbered: list[tuple[int, list[str]]] = []
        try:
            for n, row in enumerate(
                csv.reader(io.StringIO(text, newline=""), strict=True), start=1
            ):
                if any(c.strip() for c in row):
                    numbered.append((n, row))
                if max_rows is not None and (
                    len(numbered) > max_rows + 1 or n > 2 * (max_rows + 1)
                ):
                    raise InvalidInput(
                        f"csv: over the limit of {max_rows} rows per request (reading "
                        f"stopped at line {n})"
                    )
        except csv.Error as exc:
            raise InvalidInput(f"csv: malformed ({exc})") from None
        first = _header_names(numbered[0][1], features) if numbered else []
        if first and None in first and any(first) and not all(map(_is_number, numbered[0][1])):
            at = first.index(None)
            unknown = numbered[0][1][at].strip()
            raise InvalidInput(
                f"csv header: unknown column {unknown!r:.60}; the columns are the features of "
                "GET /model"
                if unknown
                else f"csv header: column {at + 1} has no name (an index column? send the "
                "features only, e.g. DataFrame.to_csv(index=False))"
            )
        if first and None not in first:
            header = [str(h) for h in first]
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
        out = np.empty((len(numbered), len(features)), dtype=np.float64)
        order = [header.index(f) for f in features]
        for i, (line, row) in enumerate(numbered):
            if len(row) != len(header):
                raise InvalidInput(
                    f"csv line {line}: expected {len(header)} values, got {len(row)}"
                )
            for j, k in enumerate(order):
                cell = row[k].strip()
                try:
                    value = _csv_float(cell)
                except ValueError:
                    raise InvalidInput(
                        f"csv line {line}, column {features[j]!r}: {cell!r:.40} is not a number"
                    ) from None
                if not math.isfinite(value):
                    raise InvalidInput(
                        f"csv line {line}, column {features[j]!r}: must be a finite number"
                    )
                if abs(value) > FEATURE_LIMIT:
                    raise InvalidInput(
                        f"csv line {line}, column {features[j]!r}: {cell!r:.40} {_BEYOND}"
                    )
                out[i, j] = value
        return out

    def tensor_rows(self, data: Any, shape: Any, datatype: str, name: str) -> np.ndarray:
        """An Open Inference Protocol input tensor ``[n, n_features]`` as a float64 matrix.

        ``data``: the JSON ``data`` (flat or nested lists), or the binary data as an array."""
        features = self.served.features
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
        dtype = np.float32 if datatype == "FP32" else np.float64
        try:
            # Flat data (or one level of rows) gets the same C-level type pass as JSON rows:
            # numbers only, bool is not one. Deeper nesting goes to the slow, exact check.
            if isinstance(data, np.ndarray):  # binary tensor data: already numbers
                arr = data.reshape(-1)
            else:
                nested = isinstance(data, list) and data and isinstance(data[0], list)
                if nested and (len(data) != shape[0] or set(map(len, data)) != {shape[1]}):
                    raise ValueError  # rows of the wrong count or length ("ragged")
                flat = list(itertools.chain.from_iterable(data)) if nested else data
                if not isinstance(flat, list) or not set(map(type, flat)) <= _NUMBER_TYPES:
                    raise ValueError
                arr = np.asarray(flat, dtype=dtype).reshape(-1)
            ok = arr.size == shape[0] * shape[1] and in_range(arr)
        except (ValueError, TypeError, OverflowError):
            ok = False
        if not ok:
            values = data.tolist() if isinstance(data, np.ndarray) else data
            raise self._explain_tensor(values, shape, datatype, where) from None
        return arr.reshape(shape).astype(np.float64, copy=False)

    @staticmethod
    def _explain_tensor(data: Any, shape: list[int], datatype: str, where: str) -> InvalidInput:
        flat: list[Any] = []
        stack = [data]
        while stack:  # flatten nested lists without recursion
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(reversed(item))
            else:
                flat.append(item)
        if len(flat) != shape[0] * shape[1]:
            return InvalidInput(
                f"{where}.data: {len(flat)} values do not fill shape {shape} "
                f"({shape[0] * shape[1]} values)"
            )
        for i, v in enumerate(flat):
            try:
                number = _number(v, f"{where}.data[{i}]")
            except InvalidInput as exc:
                return exc
            if datatype == "FP32" and abs(number) > _FP32_MAX:
                return InvalidInput(f"{where}.data[{i}]: {v!r:.40} is too large for FP32")
        return InvalidInput(
            f"{where}.data: must be {shape[0] * shape[1]} numbers, flat or as rows of {shape[1]}"
        )

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
            proba, Z = backup_model.predict_proba(_frame(X, served.features)), None
            backup = True
        if not np.isfinite(proba).all():
            bad = int(np.flatnonzero(~np.isfinite(proba).all(axis=1))[0])
            raise InvalidInput(
                f"row {bad}: values too large for the model (its arithmetic overflowed)"
            )
        return BatchResult(served, X, proba, np.argmax(proba, axis=1), backup, Z)
