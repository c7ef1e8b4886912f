"""Batch scoring (SageMaker's batch transform): a CSV or Parquet table in the model's part of
the store, scored in chunks by the production version (or a named one), written back beside
it with prediction ids, and logged like online traffic, flagged as batch.

Everything is checked before anything is written: the keys, the version (loaded through the
registry, so its signature and files are verified), the header against the version's
features and every cell as serving checks a row. A bad file writes nothing. Then each chunk
is scored and its rows go to the prediction log (``datalog.write_predictions``, the
serving's writer and format, with ``datalog.SOURCE_COLUMN`` = ``batch``), so the reporter
counts them and ``/feedback`` resolves their ids from the stored log. The output is written
last, in one whole-object write: it exists complete or not at all. A run stopped by a store
failure midway may leave the log rows of the chunks it scored; running it again scores
them again under new ids.

The engine is the serving's choice (``mlplatform_serving.runtime.make_served``): ONNX Runtime
when the version has a checked ONNX file, else the scikit-learn pipeline; the embedding for
the log comes from the same run when the graph returns it, else from the embedding graph or
the pipeline's embedding step.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from mlplatform_common import datalog, keys
from mlplatform_common.errors import InvalidInput, NotFound, ObjectNotFound
from mlplatform_common.registry import LoadedModel, ModelRegistry
from mlplatform_common.schema import (
    REGRESSION,
    check_columns,
    decode,
    embedding_columns,
    encode_checked,
)
from mlplatform_common.settings import CommonSettings
from mlplatform_common.storage import Store, open_store, validate_key

logger = logging.getLogger("mlplatform.retrainer")

DEFAULT_CHUNK_ROWS = 10_000
MAX_CHUNK_ROWS = 1_000_000  # under the 16**6 prediction ids one batch of ids has
FORMATS = {".csv": "csv", ".parquet": "parquet"}
# Keys the platform owns (a signed version, the alias, the log, the reports, the state, other
# models): a batch output never overwrites them.
OWNED = (keys.MODELS, "registry/", "production/", keys.REPORTS, "state/", keys.NAMED)
PARQUET_MAGIC = b"PAR1"
CONTENT_TYPES = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}


def _format_of(key: str, what: str) -> str:
    suffix = PurePosixPath(key).suffix.lower()
    if suffix not in FORMATS:
        raise InvalidInput(
            f"{what} {key!r:.120}: the name must end in .csv or .parquet (the format), "
            f"not {suffix or 'no extension'!r}"
        )
    return FORMATS[suffix]


def output_key_for(input_key: str) -> str:
    """The default output: ``<input without extension>.predictions.<same extension>``."""
    path = PurePosixPath(input_key)
    return str(path.with_name(f"{path.stem}.predictions{path.suffix}"))


def _check_keys(input_key: str, output_key: str) -> tuple[str, str]:
    """Both keys valid, their formats, and an output that is neither the input nor a key the
    platform owns."""
    validate_key(input_key)
    validate_key(output_key)
    fmt = _format_of(input_key, "input")
    out_fmt = _format_of(output_key, "output")
    if output_key == input_key:
        raise InvalidInput(f"output {output_key!r:.120}: the same key as the input")
    if output_key.startswith(OWNED):
        raise InvalidInput(
            f"output {output_key!r:.120}: under {', '.join(OWNED)}, which the platform owns; "
            "write beside the input instead"
        )
    return fmt, out_fmt


def read_table(data: bytes, fmt: str, name: str) -> pd.DataFrame:
    """An input file as a frame: a CSV's cells as text (an empty cell missing, as serving's CSV
    reading has it; numbers are read by ``encode_checked``), a Parquet file's columns as
    typed."""
    try:
        if fmt == "csv":
            text = data.decode("utf-8-sig")
            frame = pd.read_csv(
                io.StringIO(text),
                dtype=str,
                keep_default_na=False,
                na_values=[""],
                skip_blank_lines=True,
            )
        else:
            # Parquet starts and ends with its magic: anything else is refused here, before
            # the reader parses a footer of random bytes.
            if len(data) < 12 or data[:4] != PARQUET_MAGIC or data[-4:] != PARQUET_MAGIC:
                raise InvalidInput(f"{name}: not a readable Parquet file (no Parquet magic)")
            frame = pd.read_parquet(io.BytesIO(data), engine="fastparquet")
    except InvalidInput:
        raise
    except UnicodeDecodeError:
        raise InvalidInput(f"{name}: not a CSV file (not UTF-8 text)") from None
    except pd.errors.EmptyDataError:
        raise InvalidInput(f"{name}: empty, no header and no rows") from None
    except Exception as exc:  # each reader has its own errors for a file that is not one
        kind = "CSV" if fmt == "csv" else "Parquet"
        raise InvalidInput(f"{name}: not a readable {kind} file ({str(exc)[:160]})") from None
    if frame.empty:
        raise InvalidInput(f"{name}: a header but no rows")
    return frame.reset_index(drop=True)


@dataclass
class Engine:
    """A version's prediction engine as serving chooses it: ``run`` gives the probabilities
    (a regression's values ``[n]``) and, when the graph returns it, the embedding."""

    model: LoadedModel
    regression: bool
    name: str
    _run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]
    _embed: Callable[[np.ndarray], np.ndarray]

    def run(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """The answers, the embedding and whether the backup gave them: as in serving
        (``ModelRuntime.predict``), the backup answers when the primary model raises, and its
        rows are logged without an embedding."""
        try:
            out, Z = self._run(X)
        except Exception:
            if self.model.backup is None:
                raise
            logger.exception("primary model %s failed; the backup answers", self.model.version)
            frame = pd.DataFrame(X, columns=self.model.features)
            backup = self.model.backup
            answer = backup.predict(frame) if self.regression else backup.predict_proba(frame)
            answer = np.asarray(answer, dtype=np.float64)
            # Rows the backup answered are logged without an embedding, as serving logs them.
            width = int(self.model.manifest.get("n_components") or 0)
            return (
                (answer.reshape(-1) if self.regression else answer),
                _no_embedding(X, width),
                True,
            )
        if Z is None:
            with np.errstate(all="ignore"):
                Z = self._embed(X)
        return out, np.asarray(Z, dtype=np.float64), False


def _no_embedding(X: np.ndarray, width: int) -> np.ndarray:
    return np.full((len(X), width), np.nan)


def _session(model: LoadedModel, data: bytes | None, info: dict[str, Any]) -> Any | None:
    """An ONNX Runtime session of a checked graph, or None (none, failed its check, or not
    loadable: scikit-learn answers, as in serving's ``runtime._onnx``)."""
    if data is None or not info or "error" in info:
        return None
    import onnxruntime as ort

    try:
        return ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:
        logger.warning("ONNX file of %s not usable (%s); using scikit-learn", model.version, exc)
        return None


def make_engine(model: LoadedModel) -> Engine:
    """ONNX Runtime for what the version has checked ONNX files for, scikit-learn otherwise
    (the rule of serving's ``runtime.make_served``)."""
    regression = model.manifest.get("task") == REGRESSION
    features = model.features
    info = model.manifest.get("onnx") or {}

    def frame(X: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(X, columns=features)

    def sklearn_run(X: np.ndarray) -> tuple[np.ndarray, None]:
        if regression:
            return np.asarray(model.pipeline.predict(frame(X)), dtype=np.float64).reshape(-1), None
        return np.asarray(model.pipeline.predict_proba(frame(X))), None

    def sklearn_embed(X: np.ndarray) -> np.ndarray:
        return np.asarray(model.pipeline.named_steps["embedding"].transform(frame(X)))

    run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]] = sklearn_run
    embed: Callable[[np.ndarray], np.ndarray] = sklearn_embed
    name = "sklearn"
    session = _session(model, model.onnx, info)
    if session is not None:
        outputs = [info["output"], *filter(None, [info.get("embedding_output")])]

        def onnx_run(X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            got = session.run(outputs, {info["input"]: X})
            first = np.asarray(got[0], dtype=np.float64)
            return (first.reshape(-1) if regression else first), (got[1] if len(got) > 1 else None)

        run, name = onnx_run, "onnxruntime"
        embedding_info = info.get("embedding") or {}
        embedding = _session(model, model.embedding_onnx, embedding_info)
        if embedding is not None:

            def onnx_embed(X: np.ndarray) -> np.ndarray:
                return np.asarray(
                    embedding.run([embedding_info["output"]], {embedding_info["input"]: X})[0]
                )

            embed = onnx_embed
    return Engine(model, regression, name, run, embed)


def _log_frame(
    model: LoadedModel,
    X: np.ndarray,
    out: np.ndarray,
    Z: np.ndarray,
    backup: bool,
    ids: datalog.PredictionIds,
    ts: float,
    regression: bool,
) -> pd.DataFrame:
    """One chunk's prediction log rows in the serving's format (``predlog.to_frame``: the
    compact id and probability columns, categories as text) plus the batch flag."""
    n = len(X)
    columns: dict[str, Any] = {
        "request_id": pd.Categorical.from_codes(np.zeros(n, dtype=np.int32), [ids.batch]),
        "request_row": np.arange(n, dtype=np.int32),
        "ts": np.full(n, ts),
        "model_version": pd.Categorical.from_codes(np.zeros(n, dtype=np.int8), [model.version]),
    }
    if regression:
        columns["prediction"] = out
    else:
        labels = np.argmax(out, axis=1)
        columns["prediction"] = pd.Categorical.from_codes(labels, [str(c) for c in model.classes])
        columns["probability"] = out[np.arange(n), labels]
        columns.update({f"proba_{j}": np.ascontiguousarray(out[:, j]) for j in range(out.shape[1])})
    columns["backup"] = np.full(n, backup)
    columns[datalog.SOURCE_COLUMN] = pd.Categorical.from_codes(
        np.zeros(n, dtype=np.int8), [datalog.BATCH]
    )
    frame = pd.DataFrame(columns)
    features = decode(X, model.manifest["feature_schema"])
    Z = Z.copy()
    Z[~np.isfinite(Z)] = np.nan
    embedded = pd.DataFrame(Z, columns=embedding_columns(Z.shape[1]))
    return pd.concat([frame, features, embedded], axis=1)


def output_columns(model: LoadedModel, regression: bool) -> list[str]:
    """The columns an output adds to the input's: ``prediction_id``, the prediction (a
    regression's ``value``; else ``prediction``, its ``probability`` and ``proba_<class>`` per
    class), ``model_version``."""
    answer = (
        ["value"]
        if regression
        else ["prediction", "probability", *(f"proba_{c}" for c in model.classes)]
    )
    return ["prediction_id", *answer, "model_version"]


def _answers(
    model: LoadedModel, out: np.ndarray, ids: datalog.PredictionIds, regression: bool
) -> pd.DataFrame:
    """One chunk's ``output_columns``."""
    columns: dict[str, Any] = {"prediction_id": list(ids)}
    if regression:
        columns["value"] = out
    else:
        labels = np.argmax(out, axis=1)
        columns["prediction"] = np.asarray(model.classes)[labels]
        columns["probability"] = out[np.arange(len(out)), labels]
        for j, cls in enumerate(model.classes):
            columns[f"proba_{cls}"] = out[:, j]
    columns["model_version"] = model.version
    return pd.DataFrame(columns)


def _table_bytes(frame: pd.DataFrame, fmt: str) -> bytes:
    if fmt == "csv":
        return frame.to_csv(index=False).encode()
    buf = io.BytesIO()
    frame.to_parquet(buf, engine="fastparquet", index=False)
    return buf.getvalue()


def run_batch(
    settings: CommonSettings,
    input_key: str,
    output_key: str | None = None,
    version: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score ``input_key`` (a ``.csv`` or ``.parquet`` key in the model's part of the store)
    with ``version`` (default: production) and write ``output_key`` (default:
    ``output_key_for(input_key)``). ``progress`` gets a line per chunk
    (``rows 20000/100000 (20%)``).

    Returns ``input``, ``output``, ``rows``, ``chunks``, ``version``, ``engine`` and
    ``log_keys`` (the prediction log objects written).

    Raises:
        InvalidInput: a bad key, chunk size, file, header or cell (nothing written).
        NotFound: no input object; ModelNotFound: no such version (or none in production).
        IntegrityError: the version fails verification.
    """
    if not 1 <= chunk_rows <= MAX_CHUNK_ROWS:
        raise InvalidInput(f"chunk rows: {chunk_rows} is not between 1 and {MAX_CHUNK_ROWS}")
    output_key = output_key or output_key_for(input_key)
    fmt, out_fmt = _check_keys(input_key, output_key)
    store: Store = open_store(settings)
    registry = ModelRegistry(store, settings.require_signing_key())
    version = version or registry.production_version()
    model = registry.load(version)
    try:
        data = store.get(input_key)
    except ObjectNotFound:
        raise NotFound(f"input {input_key!r:.120}: no such object in {store.url}") from None
    name = f"input {input_key}"
    frame = read_table(data, fmt, name)
    schema = model.manifest["feature_schema"]
    check_columns(list(frame.columns), schema, name)
    where: Callable[[int], str] = (
        (lambda i: f"{name}: line {i + 2}") if fmt == "csv" else (lambda i: f"{name}: row {i + 1}")
    )
    X = encode_checked(frame, schema, where)
    engine = make_engine(model)
    clash = [c for c in output_columns(model, engine.regression) if c in frame.columns]
    if clash:
        raise InvalidInput(f"{name}: column {clash[0]!r} is also an output column; rename it")

    total = len(X)
    logger.info(
        "scoring %s (%d rows) with model %s on %s in chunks of %d",
        input_key,
        total,
        model.version,
        engine.name,
        chunk_rows,
    )
    # Every chunk is scored before anything is written: a row the model cannot answer (its
    # arithmetic overflowed) refuses the file as a bad cell does, with nothing written.
    scored = []
    for start in range(0, total, chunk_rows):
        chunk = X[start : start + chunk_rows]
        out, Z, backup = engine.run(chunk)
        finite = np.isfinite(out).reshape(len(out), -1).all(axis=1)
        if not finite.all():
            raise InvalidInput(
                f"{where(start + int(np.flatnonzero(~finite)[0]))}: values too large for the "
                "model (its arithmetic overflowed)"
            )
        ts = time.time()
        scored.append((chunk, out, Z, backup, datalog.new_prediction_ids(len(chunk), ts), ts))
        done = start + len(chunk)
        progress(f"rows {done}/{total} ({done * 100 // total}%)")
    log_keys = [
        # Named by the time of the write, as the serving's are: a report window that has
        # closed before it cannot miss it.
        datalog.write_predictions(
            store, _log_frame(model, chunk, out, Z, backup, ids, ts, engine.regression)
        )
        for chunk, out, Z, backup, ids, ts in scored
    ]
    answers = pd.concat(
        [_answers(model, out, ids, engine.regression) for _, out, _, _, ids, _ in scored],
        ignore_index=True,
    )
    result = pd.concat([frame, answers], axis=1)
    store.put(output_key, _table_bytes(result, out_fmt), CONTENT_TYPES[out_fmt])
    progress(f"wrote {output_key} ({total} rows, model {model.version})")
    return {
        "input": input_key,
        "output": output_key,
        "rows": total,
        "chunks": len(scored),
        "version": model.version,
        "engine": engine.name,
        "log_keys": log_keys,
    }
