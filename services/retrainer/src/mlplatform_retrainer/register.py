"""Register a model trained elsewhere: ``mlplatform register`` (docs/architecture.md,
"Registered models").

A fitted scikit-learn-compatible estimator or Pipeline (XGBoost and LightGBM through their
scikit-learn API) and its reference data become a signed version like a trained one:

1. the reference data is read and checked (``schema.parse_dataset``);
2. the model file is loaded and run on every reference row in a separate process first
   (``probe``), with a timeout: a model that crashes, hangs or raises, is not fitted, is not a
   model, or does not take the data's columns is refused with one line, and nothing is written;
3. the task and classes come from the model, the feature schema from the data;
4. the drift embedding is PCA over the model's own transformed features when the pipeline has
   steps before its final estimator, else over the numeric raw features;
5. ONNX is converted and checked where it can be (``onnx_export.convert_registered``);
6. the version is published through the registry (``origin: registered``), a candidate unless
   ``promote``.

Formats: ``.skops`` is loaded with skops.io, which refuses any type not trusted (scikit-learn's
own are); ``trust`` names the others the user trusts. ``.joblib``/``.pkl`` are pickles: loading
one runs whatever code it holds.
"""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import sklearn

from mlplatform_common import keys, uploads
from mlplatform_common.errors import DatasetError, InvalidInput, MLPlatformError
from mlplatform_common.quality import to_builtin
from mlplatform_common.registered import ModelTransformEmbedding, RegisteredModel, raw_rows
from mlplatform_common.registry import MODEL, REF_DATA, ModelRegistry
from mlplatform_common.schema import (
    CLASSIFICATION,
    REGRESSION,
    Dataset,
    embed,
    encoded_frame,
    feature_schema,
    is_category,
    parse_dataset,
)
from mlplatform_common.storage import Store, open_store
from mlplatform_retrainer import onnx_export
from mlplatform_retrainer.job import read_with_progress, stage, upload_dataset, validated
from mlplatform_retrainer.settings import RetrainerSettings
from mlplatform_retrainer.train import evaluate

logger = logging.getLogger("mlplatform.retrainer")

SKOPS, PICKLE, FORMATS = uploads.SKOPS, uploads.PICKLE, uploads.MODEL_FORMATS
DEFAULT_TIMEOUT = 120.0
"""Seconds the separate process may take to load the model and predict the reference rows."""
_REFUSED = 3
"""The probe's exit code for a model it refuses (its one line on stderr says why)."""


class RegistrationError(InvalidInput):
    """A model file or its reference data cannot be registered: the message says why."""


@dataclass
class Registered:
    version: str
    manifest: dict[str, Any]
    promoted: bool
    alias: dict[str, Any] | None = None


def model_format(path: Path) -> str:
    """``skops`` or ``joblib`` by the file's suffix."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise RegistrationError(
            f"{path.name}: unknown model format {path.suffix or '(no suffix)'!r}; use .skops "
            "(loaded safely) or .joblib/.pkl (a pickle: loading it runs its code)"
        )
    return fmt


def load_model(path: Path, trust: Sequence[str] = ()) -> Any:
    """Load a model file by its format; a skops file only if every type it holds is trusted
    (scikit-learn's own, or named in ``trust``)."""
    fmt = model_format(path)
    if not path.is_file():
        raise RegistrationError(f"{path}: no such file")
    if fmt == SKOPS:
        import skops.io

        try:
            untrusted = skops.io.get_untrusted_types(file=path)
        except Exception as exc:
            raise RegistrationError(f"{path.name} is not a skops file ({_line(exc)})") from None
        refused = [t for t in untrusted if t not in trust]
        if refused:
            raise RegistrationError(
                f"{path.name} holds types that are not trusted: {', '.join(refused)}; loading "
                "them runs their code: if you trust them, pass --trust TYPE for each"
            )
        try:
            return skops.io.load(path, trusted=list(untrusted))
        except Exception as exc:
            raise RegistrationError(f"{path.name} could not be loaded ({_line(exc)})") from None
    try:
        return joblib.load(path)
    except Exception as exc:
        raise RegistrationError(
            f"{path.name} could not be loaded as a joblib/pickle file ({_line(exc)})"
        ) from None


def _line(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text[:300]


def is_classifier(model: Any) -> bool:
    return hasattr(model, "classes_")


def check_model(model: Any, name: str, rows: pd.DataFrame) -> pd.DataFrame:
    """That ``model`` is a fitted model taking exactly ``rows``' columns and predicts every
    row; returns the rows in the model's column order."""
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    if not callable(getattr(model, "predict", None)):
        raise RegistrationError(
            f"{name} is not a model: it holds a {type(model).__name__}, which has no predict"
        )
    try:
        check_is_fitted(model)
    except NotFittedError:
        raise RegistrationError(
            f"{name}: the {type(model).__name__} is not fitted; fit it before registering it"
        ) from None
    except TypeError as exc:
        raise RegistrationError(f"{name} is not a scikit-learn model ({_line(exc)})") from None
    names = getattr(model, "feature_names_in_", None)
    if names is not None:
        names = [str(n) for n in names]
        missing = [n for n in names if n not in rows.columns]
        extra = [c for c in rows.columns if c not in names]
        problems = []
        if missing:
            problems.append(f"lacks the model's features {missing}")
        if extra:
            problems.append(f"has columns the model was not fitted on {extra}")
        if problems:
            raise RegistrationError(
                f"the reference data {' and '.join(problems)} (besides the target)"
            )
        rows = rows[names]
    else:
        n = getattr(model, "n_features_in_", None)
        if n is not None and n != rows.shape[1]:
            raise RegistrationError(
                f"{name} takes {n} features; the reference data has {rows.shape[1]} "
                f"besides the target: {list(rows.columns)}"
            )
    try:
        predictions = np.asarray(model.predict(rows))
        if is_classifier(model):
            if not callable(getattr(model, "predict_proba", None)):
                raise RegistrationError(
                    f"{name}: the classifier has no predict_proba; the platform answers with "
                    "class probabilities"
                )
            proba = np.asarray(model.predict_proba(rows), dtype=np.float64)
            if proba.shape != (len(rows), len(model.classes_)):
                raise RegistrationError(
                    f"{name}: predict_proba gave shape {proba.shape}, not "
                    f"({len(rows)}, {len(model.classes_)})"
                )
    except RegistrationError:
        raise
    except Exception as exc:
        raise RegistrationError(f"{name} raised on the reference rows: {_line(exc)}") from None
    if len(predictions) != len(rows):
        raise RegistrationError(
            f"{name} gave {len(predictions)} predictions for {len(rows)} reference rows"
        )
    return rows


def probe(path: Path, rows: pd.DataFrame, trust: Sequence[str], timeout: float) -> dict[str, Any]:
    """Load the model and predict ``rows`` in a separate process (a model file is untrusted
    code until it has shown it loads and predicts): what it found, or ``RegistrationError``
    with one line for a model that is refused, crashes or does not finish in ``timeout``."""
    with tempfile.TemporaryDirectory(prefix="mlplatform-register-") as tmp:
        spec: dict[str, Any] = {
            "model": str(path.resolve()),
            "rows": str(Path(tmp) / "rows.pkl"),
            "out": str(Path(tmp) / "out.json"),
            "trust": list(trust),
        }
        rows.to_pickle(spec["rows"])
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "mlplatform_retrainer.register", json.dumps(spec)],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RegistrationError(
                f"{path.name} did not load and predict the {len(rows)} reference rows within "
                f"{timeout:g}s (--timeout); refused"
            ) from None
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        if proc.returncode == _REFUSED and lines:
            raise RegistrationError(lines[-1])
        if proc.returncode < 0:
            name = signal.Signals(-proc.returncode).name
            raise RegistrationError(
                f"{path.name} crashed the process that loaded it and predicted the reference "
                f"rows ({name}); refused"
            )
        if proc.returncode != 0:
            last = lines[-1] if lines else f"exit code {proc.returncode}"
            raise RegistrationError(f"{path.name}: loading it failed ({last[:300]})")
        found: dict[str, Any] = json.loads(Path(spec["out"]).read_text())
        return found


def _probe_main(spec_text: str) -> int:
    """The separate process of ``probe``: one line on stderr and exit code ``_REFUSED`` for a
    refused model."""
    spec = json.loads(spec_text)
    path = Path(spec["model"])
    try:
        model = load_model(path, spec["trust"])
        rows = check_model(model, path.name, pd.read_pickle(spec["rows"]))
    except RegistrationError as exc:
        print(exc.message, file=sys.stderr)
        return _REFUSED
    found = {"features": list(rows.columns), "classifier": is_classifier(model)}
    Path(spec["out"]).write_text(json.dumps(found))
    return 0


def read_table(path: Path) -> bytes:
    """The reference data as CSV bytes (what the store keeps as the data set): a CSV as it is,
    a Parquet file converted."""
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    if path.suffix.lower() not in (".csv", ".parquet"):
        raise DatasetError(f"{path.name}: the reference data must be a .csv or .parquet file")
    raw = read_with_progress(path)
    if path.suffix.lower() == ".parquet":
        try:
            frame = pd.read_parquet(io.BytesIO(raw))
        except Exception as exc:
            raise DatasetError(f"{path.name}: not a readable Parquet file ({_line(exc)})") from None
        return frame.to_csv(index=False).encode()
    return raw


def _embedding(
    model: Any, X: pd.DataFrame, schema: list[dict[str, Any]], n_components: int, seed: int
) -> tuple[Any, str]:
    """The drift embedding fitted on the reference rows (encoded) and what it is over."""
    from sklearn.compose import ColumnTransformer
    from sklearn.decomposition import PCA
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from mlplatform_retrainer.train import embedding_rank, preprocessor

    if isinstance(model, Pipeline) and len(model.steps) > 1:
        head = model[:-1]
        try:
            Z = head.transform(raw_rows(X, schema))
            Z = np.nan_to_num(np.asarray(Z.toarray() if hasattr(Z, "toarray") else Z, float))
            n = max(1, min(n_components, Z.shape[1], len(Z)))
            pca = PCA(n_components=n, random_state=seed).fit(Z)
            return ModelTransformEmbedding(head, pca, schema), "model transform"
        except Exception as exc:  # a step whose output is not numbers: the raw features then
            logger.warning("the model's transform steps give no embedding (%s)", _line(exc))
    numbers = [j for j, f in enumerate(schema) if not is_category(f)]
    if numbers:
        steps: list[tuple[str, Any]] = [("scale", StandardScaler())]
        if any(schema[j].get("nullable") for j in numbers):
            steps.insert(0, ("impute", SimpleImputer(strategy="median")))
        prep = ColumnTransformer([("numbers", Pipeline(steps), numbers)], sparse_threshold=0)
        rank, space = len(numbers), "raw numbers"
    else:  # categories only: one-hot, as trained versions embed them
        prep, rank, space = preprocessor(schema), embedding_rank(schema), "raw features"
    n = max(1, min(n_components, rank, len(X)))
    embedding = Pipeline([("prep", prep), ("pca", PCA(n_components=n, random_state=seed))])
    return embedding.fit(X), space


def _clone_check(model: Any) -> dict[str, Any]:
    """What a retrain (item 3 of issue 27: refit a clone) needs to know."""
    try:
        sklearn.base.clone(model)
    except Exception as exc:
        return {"clone": False, "reason": _line(exc)}
    return {"clone": True}


def as_classes(y: pd.Series, classes: list[Any]) -> pd.Series:
    """Labels as the model's classes (a CSV's "1" is the class 1); others left as they are."""
    lookup = {str(c): c for c in classes}
    return y.map(lambda v: lookup.get(str(v), v))


@dataclass
class Wrapped:
    """A fitted user model wrapped as the platform runs it, with what its version records."""

    model: RegisteredModel
    schema: list[dict[str, Any]]
    Xe: pd.DataFrame
    """The rows it was fitted on (or registered with), encoded by ``schema``."""
    y: pd.Series
    classes: list[Any]
    embedding_space: str
    ref_data: pd.DataFrame
    task: str

    @property
    def pipeline(self) -> RegisteredModel:  # as the gate scores a trained candidate
        return self.model


def wrap(
    model: Any, X: pd.DataFrame, y: pd.Series, task: str, n_components: int, seed: int
) -> Wrapped:
    """``model`` (fitted on ``X``, in its column order, and ``y``) behind the platform's encoded
    rows, with a drift embedding fitted on ``X`` and ``X`` embedded as its reference data."""
    schema = feature_schema(X)
    Xe = encoded_frame(X, schema)
    classes: list[Any] = []
    if task == CLASSIFICATION:
        classes = [to_builtin(c) for c in np.asarray(model.classes_)]
    embedding, space = _embedding(model, Xe, schema, n_components, seed)
    wrapped = RegisteredModel(model, schema, embedding)
    ref_data = embed(wrapped, Xe).reset_index(drop=True)
    ref_data["target"] = y.to_numpy()
    return Wrapped(wrapped, schema, Xe, y, classes, space, ref_data, task)


def version_files(
    wrapped: Wrapped,
    dataset: Dataset,
    *,
    metrics: dict[str, dict[str, float]],
    fields: dict[str, Any],
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The files and the manifest of a version of a registered model (converted to ONNX where
    it can be); ``fields`` are the caller's (parent, format, a refit's gate and data)."""
    model, schema = wrapped.model.model, wrapped.schema
    if any(is_category(f) for f in schema):
        categories = [f["name"] for f in schema if is_category(f)]
        onnx_files: dict[str, bytes] = {}
        onnx_info: dict[str, Any] = {
            "error": f"category features {categories}: the model takes their text, the "
            "platform's graphs take codes; served by scikit-learn"
        }
    else:
        embedding = wrapped.model.named_steps["embedding"]
        onnx_files, onnx_info = onnx_export.convert_registered(
            model, embedding, wrapped.Xe, wrapped.task
        )
    files = {
        MODEL: _dump(wrapped.model),
        REF_DATA: wrapped.ref_data.to_csv(index=False).encode(),
        **onnx_files,
    }
    manifest = {
        "origin": "registered",
        "task": wrapped.task,
        "target": dataset.target,
        "feature_schema": schema,
        "classes": wrapped.classes,
        "class_names": [dataset.class_names.get(str(c), str(c)) for c in wrapped.classes],
        "n_components": int(wrapped.ref_data.shape[1] - 1),
        "embedding_space": wrapped.embedding_space,
        "estimator": _estimator_name(model),
        "backup_estimator": None,
        "metrics": metrics,
        "training_data": {
            "dataset": dataset.name,
            "sha256": dataset.sha256,
            "rows": len(dataset.X),
        },
        "retrain": _clone_check(model),
        "sklearn_version": sklearn.__version__,
        "onnx": onnx_info,
        **fields,
    }
    return files, manifest


def register(
    settings: RetrainerSettings,
    model_path: Path,
    data_path: Path,
    target: str,
    *,
    task: str | None = None,
    promote: bool = False,
    trust: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
    upload_id: str | None = None,
) -> Registered:
    """Check, convert, sign and publish a model trained elsewhere with its reference data
    (module docstring). Raises ``RegistrationError``/``DatasetError`` before anything is
    written to the store. ``upload_id``: the upload it comes from, recorded in the manifest
    (``upload``) so a retried run finds the version (``register_upload``)."""
    fmt = model_format(model_path)
    raw = read_table(data_path)
    dataset = parse_dataset(raw, target, name=data_path.stem, task=task)
    logger.info("%s", validated(dataset))
    # The rows as serving will hand them to the model: encoded by the schema, decoded back.
    data_schema = feature_schema(dataset.X)
    with stage(
        f"loading {model_path.name} and predicting the {len(dataset.X):,} reference rows in a "
        f"separate process (timeout {timeout:g} s)",
        f"{model_path.name} loaded and predicted them",
    ):
        found = probe(
            model_path, raw_rows(encoded_frame(dataset.X, data_schema), data_schema), trust, timeout
        )
    model_task = CLASSIFICATION if found["classifier"] else REGRESSION
    if task is not None and task != model_task:
        raise RegistrationError(f"--task {task}, but {model_path.name} is a {model_task} model")
    if dataset.task != model_task:
        dataset = parse_dataset(raw, target, name=data_path.stem, task=model_task)
        logger.info("task %s: %s is a %s model", model_task, model_path.name, model_task)
    # The model's column order: scikit-learn checks it against the order it was fitted in.
    dataset = Dataset(**{**dataset.__dict__, "X": dataset.X[found["features"]]})
    model = load_model(model_path, trust)  # shown above to load and predict
    classes: list[Any] = []
    if model_task == CLASSIFICATION:
        classes = [to_builtin(c) for c in np.asarray(model.classes_)]
        unknown = sorted({str(v) for v in dataset.y.unique()} - {str(c) for c in classes})
        if unknown:
            raise RegistrationError(
                f"target {target!r} has values {unknown[:10]} that {model_path.name} does not "
                f"predict (its classes: {classes[:20]})"
            )
        dataset.y = as_classes(dataset.y, classes)
    with stage(
        "computing the drift embedding and the reference scores, converting to ONNX",
        "version files ready",
    ):
        wrapped = wrap(
            model, dataset.X, dataset.y, model_task, settings.n_components, settings.seed
        )
        files, manifest = version_files(
            wrapped,
            dataset,
            metrics={"reference": evaluate(wrapped.model, wrapped.Xe, wrapped.y, model_task)},
            fields={
                "parent": None,
                "format": fmt,
                "source_file": model_path.name,
                **({"upload": upload_id} if upload_id else {}),
            },
        )
    store = open_store(settings, ensure=True)
    registry = ModelRegistry(store, settings.require_signing_key())
    size = sum(len(b) for b in files.values()) + len(dataset.raw)
    with stage(
        f"storing {keys.dataset(dataset.name).rsplit('/', 1)[0]} and the version's "
        f"{len(files)} files ({size / 2**20:.1f} MB)",
        "stored",
    ):
        upload_dataset(store, dataset)
        version = registry.publish(files, manifest)
    # Imported here: retrain imports this module for refits of registered versions.
    from mlplatform_retrainer.retrain import promote as promote_version

    alias = promote_version(settings, version, store=store) if promote else None
    return Registered(version, registry.manifest(version), promote, alias)


def register_upload(
    settings: RetrainerSettings, upload_id: str, timeout: float = DEFAULT_TIMEOUT
) -> Registered:
    """Register a model uploaded through serving (``POST /admin/models``, which keeps it with
    ``uploads.store_upload`` and starts this with ``actions.register(upload_id)``), as
    ``register`` does a local file, and write the outcome for the upload: the version, or the
    refusal's one line (``uploads.UploadRefused``, raised too).

    A retryable error (``MLPlatformError.retryable``: the store did not answer, the retrain lock
    is held) writes no outcome and keeps the upload's files: it is raised, the run exits 1 and
    the Job's retry registers the upload. A retried run reads the outcome first, then looks for
    a version an earlier run published from this upload (its manifest's ``upload``) before its
    outcome could be written: nothing is registered twice."""
    store = open_store(settings, ensure=True)
    done = uploads.outcome(store, upload_id)
    if done is not None:
        uploads.drop_files(store, upload_id)  # an earlier run may have failed to delete them
        if done["state"] == uploads.REFUSED:
            raise uploads.UploadRefused(done["reason"])
        registry = ModelRegistry(store, settings.require_signing_key())
        return Registered(done["version"], registry.manifest(done["version"]), done["promoted"])
    request = uploads.read_request(store, upload_id)
    try:
        registry = ModelRegistry(store, settings.require_signing_key())
        version = _published_from(registry, upload_id)
        if version is None:
            registered = _register_stored(settings, store, upload_id, request, timeout)
        else:
            logger.info("upload %s was published as %s by an earlier run", upload_id, version)
            registered = Registered(version, registry.manifest(version), False)
    except MLPlatformError as exc:
        if exc.retryable:
            logger.warning("upload %s stays pending, to be retried: %s", upload_id, exc.message)
            raise
        uploads.finish(store, upload_id, {"state": uploads.REFUSED, "reason": exc.message})
        raise uploads.UploadRefused(exc.message) from None
    except Exception as exc:  # the user's model raised in this process, or a bug: an outcome
        logger.exception("registering upload %s failed", upload_id)
        reason = f"the registration failed ({_line(exc)}); see the retrainer's log"
        uploads.finish(store, upload_id, {"state": uploads.REFUSED, "reason": reason})
        raise uploads.UploadRefused(reason) from None
    result: dict[str, Any] = {
        "state": uploads.PUBLISHED,
        "version": registered.version,
        "promoted": False,
    }
    retried = False
    try:
        if request.get("promote"):
            from mlplatform_retrainer.retrain import promote as promote_version

            registered.alias = promote_version(settings, registered.version, store=store)
            registered.promoted = True
            result.update(promoted=True, rollout=registered.alias["rollout"])
    except MLPlatformError as exc:
        retried = exc.retryable  # the retry finds the version by its upload and promotes it
        result["reason"] = f"published, but not put in production: {exc.message}"
        raise
    finally:
        if not retried:
            uploads.finish(store, upload_id, result)
    return registered


def _published_from(registry: ModelRegistry, upload_id: str) -> str | None:
    """The version an earlier run published from this upload, if any (newest first)."""
    for manifest in reversed(registry.list_versions()):
        if manifest.get("upload") == upload_id:
            return str(manifest["version"])
    return None


def _register_stored(
    settings: RetrainerSettings,
    store: Store,
    upload_id: str,
    request: dict[str, Any],
    timeout: float,
) -> Registered:
    """``register`` on the upload's files, copied from the store to a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="mlplatform-upload-") as tmp:
        model_path = Path(tmp) / request["model_file"]
        model_path.write_bytes(store.get(uploads.model_key(upload_id, request)))
        data_path = Path(tmp) / f"{request['dataset']}.csv"
        data_path.write_bytes(store.get(keys.upload_file(upload_id, uploads.DATA)))
        # Promoted by the caller, once the version is published: a failed rollout is then
        # told apart from a refused model.
        return register(
            settings,
            model_path,
            data_path,
            request["target"],
            task=request.get("task"),
            trust=request.get("trust") or (),
            timeout=timeout,
            upload_id=upload_id,
        )


def _estimator_name(model: Any) -> str:
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    return f"{type(final).__module__}.{type(final).__name__}"


def _dump(obj: Any) -> bytes:
    buf = io.BytesIO()
    joblib.dump(obj, buf)
    return buf.getvalue()


def describe(registered: Registered, store_url: str) -> str:
    """A short summary for the terminal."""
    m = registered.manifest
    scores = ", ".join(f"{k}={v:.3f}" for k, v in m["metrics"]["reference"].items())
    where = "in production" if registered.promoted else "published as a candidate"
    engine = "onnxruntime" if "error" not in m["onnx"] else "scikit-learn"
    return (
        f"model {registered.version} ({m['task']}, {m['estimator']}) {where} at {store_url}\n"
        f"  reference rows: {scores}\n  served by {engine}"
        + (f" ({m['onnx']['error'][:160]})" if engine == "scikit-learn" else "")
    )


__all__ = [
    "Registered",
    "RegistrationError",
    "describe",
    "load_model",
    "register",
    "register_upload",
]


if __name__ == "__main__":
    sys.exit(_probe_main(sys.argv[1]))
