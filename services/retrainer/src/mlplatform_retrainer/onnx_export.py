"""Convert a fitted pipeline to ONNX at publish time, and prove the conversion.

Two graphs per version, each checked on every row of the training data before it is
published:

- ``model.onnx``: the whole pipeline, raw features -> class probabilities. Its probabilities
  must match scikit-learn's within ``TOLERANCE`` and its predicted labels must be identical.
  Linear models match to ~1e-15; tree ensembles keep thresholds as float32 in ONNX and match
  to ~1e-7.
- ``embedding.onnx``: the pipeline's ``embedding`` step, raw features -> ``PCA_1..PCA_n``, which
  serving writes into the prediction log. Same tolerance.

With both, serving needs neither scikit-learn nor SciPy (the serving image ships without them).
A pipeline that does not convert, or does not match, is published without the file and is
served by scikit-learn.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger("mlplatform.retrainer")

TOLERANCE = 1e-6
OPSET = 17
INPUT = "input"
OUTPUT = "probabilities"
MODEL_FILE = "model.onnx"
EMBEDDING_FILE = "embedding.onnx"


def _run(
    estimator: Any, X: np.ndarray, output: str | None, options: Any
) -> tuple[bytes, str, np.ndarray]:
    """Convert ``estimator`` and run the graph with ONNX Runtime on ``X``.

    Returns the ONNX bytes, the output's name and the output; raises whatever the converter
    or the runtime raises.
    """
    import onnxruntime as ort
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DoubleTensorType

    model = to_onnx(
        estimator,
        initial_types=[(INPUT, DoubleTensorType([None, X.shape[1]]))],
        target_opset=OPSET,
        options=options,
    )
    output = output or model.graph.output[0].name
    data = model.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got: np.ndarray = session.run([output], {INPUT: X})[0]
    return data, output, got


def _check(output: str, got: np.ndarray, expected: np.ndarray) -> dict[str, Any]:
    diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
    return {
        "input": INPUT,
        "output": output,
        "checked_rows": len(expected),
        "max_abs_diff": diff,
        "tolerance": TOLERANCE,
    }


def _failed(what: str, exc: Exception) -> dict[str, Any]:
    logger.warning(
        "ONNX conversion of the %s failed (%s: %s); serving will use scikit-learn for it",
        what,
        type(exc).__name__,
        exc,
    )
    return {"error": f"{type(exc).__name__}: {exc}"[:500]}


def convert(pipeline: Any, X_check: pd.DataFrame) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The checked ONNX files of a pipeline and what the checks found (for the manifest).

    Graphs take one float64 tensor ``input`` of shape ``[n, n_features]``; ``model.onnx``
    returns ``label`` and ``probabilities`` (no ZipMap), computed in float64 as scikit-learn
    does. ``info["error"]`` says why there is no ``model.onnx``; ``info["embedding"]["error"]``
    why there is no ``embedding.onnx``.
    """
    X = X_check.to_numpy(dtype=np.float64)
    classifier = pipeline.steps[-1][1]
    try:
        data, output, got = _run(pipeline, X, OUTPUT, {id(classifier): {"zipmap": False}})
    except Exception as exc:  # any converter or runtime failure means: no ONNX for this version
        return {}, _failed("pipeline", exc)
    expected = pipeline.predict_proba(X_check)
    info = {"file": MODEL_FILE, "opset": OPSET, **_check(output, got, expected)}
    same_labels = got.shape == expected.shape and bool(
        (got.argmax(axis=1) == expected.argmax(axis=1)).all()
    )
    if not (info["max_abs_diff"] <= TOLERANCE and same_labels):
        why = (
            f"max abs difference {info['max_abs_diff']:.3g} (tolerance {TOLERANCE}), "
            f"same labels: {same_labels}"
        )
        logger.warning("ONNX conversion not published: %s", why)
        return {}, {**info, "error": why}
    logger.info(
        "ONNX conversion checked on %d rows (max abs diff %.2g)", len(X), info["max_abs_diff"]
    )
    files = {MODEL_FILE: data}
    info["embedding"] = _convert_embedding(pipeline, X_check, files)
    return files, info


def _convert_embedding(
    pipeline: Any, X_check: pd.DataFrame, files: dict[str, bytes]
) -> dict[str, Any]:
    step = dict(pipeline.steps).get("embedding")
    if step is None:
        return {"error": "the pipeline has no 'embedding' step"}
    try:
        data, output, got = _run(step, X_check.to_numpy(dtype=np.float64), None, None)
    except Exception as exc:
        return _failed("embedding", exc)
    info = _check(output, got, np.asarray(step.transform(X_check)))
    if not info["max_abs_diff"] <= TOLERANCE:
        why = f"max abs difference {info['max_abs_diff']:.3g} (tolerance {TOLERANCE})"
        logger.warning("ONNX embedding not published: %s", why)
        return {**info, "error": why}
    files[EMBEDDING_FILE] = data
    return {"file": EMBEDDING_FILE, **info}
