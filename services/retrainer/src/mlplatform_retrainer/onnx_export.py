"""Convert a fitted pipeline to ONNX at publish time, and prove the conversion.

Two graphs per version, each checked on every row of the training data before it is
published:

- ``embedding.onnx``: the pipeline's ``embedding`` step, raw features -> ``PCA_1..PCA_n``
  (output ``embedding``). Its output must match scikit-learn's within ``TOLERANCE``.
- ``model.onnx``: the whole pipeline, raw features -> class ``probabilities``. They must match
  scikit-learn's within ``TOLERANCE`` and give identical labels. Linear models match to
  ~1e-15; tree ensembles keep thresholds as float32 in ONNX and match to ~1e-7. When the
  pipeline starts with its ``embedding`` step, ``model.onnx`` is the embedding graph joined
  to the rest of the pipeline's graph and returns the ``embedding`` too (checked the same
  way): serving writes it into the prediction log from the run that predicted the rows, so
  the embedding is computed once per row, not twice (bench/BENCHMARKS.md). ``embedding.onnx``
  embeds the rows for the log when ``model.onnx`` does not return them (the joined graph
  failed its check, or the version was published before).

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
EMBEDDING_OUTPUT = "embedding"
MODEL_FILE = "model.onnx"
EMBEDDING_FILE = "embedding.onnx"


def _to_onnx(
    estimator: Any, n_features: int, input_name: str = INPUT, **kwargs: Any
) -> Any:  # onnx.ModelProto
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DoubleTensorType

    return to_onnx(
        estimator,
        initial_types=[(input_name, DoubleTensorType([None, n_features]))],
        target_opset=OPSET,
        **kwargs,
    )


def _run(model: Any, outputs: list[str], X: np.ndarray) -> list[np.ndarray]:
    """Run a graph with ONNX Runtime on ``X``: the named outputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got: list[np.ndarray] = session.run(outputs, {INPUT: X})
    return got


def _diff(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")


def _check(output: str, got: np.ndarray, expected: np.ndarray) -> dict[str, Any]:
    return {
        "input": INPUT,
        "output": output,
        "checked_rows": len(expected),
        "max_abs_diff": _diff(got, expected),
        "tolerance": TOLERANCE,
    }


def _failed(what: str, exc: Exception) -> dict[str, Any]:
    logger.warning("ONNX conversion of the %s failed (%s: %s)", what, type(exc).__name__, exc)
    return {"error": f"{type(exc).__name__}: {exc}"[:500]}


def convert(
    pipeline: Any, X_check: pd.DataFrame, task: str = "classification"
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The checked ONNX files of a pipeline and what the checks found (for the manifest).

    Graphs take one float64 tensor ``input`` of shape ``[n, n_features]`` and compute in
    float64 as scikit-learn does; ``model.onnx`` returns ``probabilities`` (no ZipMap) and,
    when ``info["embedding_output"]`` names it, the embedding. ``info["error"]`` says why there
    is no ``model.onnx``; ``info["embedding"]["error"]`` why there is no ``embedding.onnx``;
    ``info["embedding_output_error"]`` why the joined graph was not kept (the whole
    pipeline's graph, without the embedding output, then is).
    """
    if task != "classification":
        return {}, {"error": f"{task} graphs are not converted (served by scikit-learn)"}
    X = X_check.to_numpy(dtype=np.float64)
    expected = pipeline.predict_proba(X_check)
    files: dict[str, bytes] = {}
    embedding_info, embedding_graph, Z = _convert_embedding(pipeline, X_check, files)
    classifier = pipeline.steps[-1][1]
    options = {id(classifier): {"zipmap": False}}
    joined_error = None
    if embedding_graph is not None and pipeline.steps[0][0] == "embedding":
        info, data = _checked(
            "joined graph",
            lambda: _joined(embedding_graph, pipeline[1:], Z.shape[1], options),
            X,
            expected,
            Z,
        )
        if data is not None:
            files[MODEL_FILE] = data
            return files, {**info, "embedding": embedding_info}
        joined_error = info["error"]
        logger.warning("publishing the whole pipeline's graph, without the embedding output")
    info, data = _checked(
        "pipeline", lambda: _to_onnx(pipeline, X.shape[1], options=options), X, expected, None
    )
    if joined_error is not None:
        info["embedding_output_error"] = joined_error
    if data is None:
        logger.warning("no ONNX for this version: serving will use scikit-learn")
        return {}, info
    files[MODEL_FILE] = data
    return files, {**info, "embedding": embedding_info}


def _checked(
    what: str, build: Any, X: np.ndarray, expected: np.ndarray, Z: np.ndarray | None
) -> tuple[dict[str, Any], bytes | None]:
    """Build a model graph and check its outputs on ``X``: what the check found, and the
    graph's bytes if it passed. ``Z``: the embedding the graph must return too, or None."""
    outputs = [OUTPUT] if Z is None else [OUTPUT, EMBEDDING_OUTPUT]
    try:
        model = build()
        got = _run(model, outputs, X)
    except Exception as exc:  # any converter or runtime failure: this graph is not published
        return _failed(what, exc), None
    info = {"file": MODEL_FILE, "opset": OPSET, **_check(OUTPUT, got[0], expected)}
    problems = []
    if not info["max_abs_diff"] <= TOLERANCE:
        problems.append(f"probabilities: max abs difference {info['max_abs_diff']:.3g}")
    if not (got[0].shape == expected.shape and (got[0].argmax(1) == expected.argmax(1)).all()):
        problems.append("labels differ")
    if Z is not None:
        info["embedding_output"] = EMBEDDING_OUTPUT
        info["embedding_max_abs_diff"] = diff = _diff(got[1], Z)
        if not diff <= TOLERANCE:
            problems.append(f"embedding: max abs difference {diff:.3g}")
    if problems:
        why = f"{'; '.join(problems)} (tolerance {TOLERANCE})"
        logger.warning("ONNX %s not published: %s", what, why)
        return {**info, "error": why}, None
    logger.info(
        "ONNX %s checked on %d rows (max abs diff %.2g)", what, len(X), info["max_abs_diff"]
    )
    return info, model.SerializeToString()


def _joined(embedding_graph: Any, rest: Any, n_components: int, options: Any) -> Any:
    """One graph: the embedding graph, its output fed to the graph of the pipeline's other
    steps; outputs ``probabilities`` and ``embedding``."""
    import onnx.compose

    head = _to_onnx(rest, n_components, input_name=EMBEDDING_OUTPUT, options=options)
    # The two graphs name their inner values alike ("variable", ...): prefix the second's.
    head = onnx.compose.add_prefix(head, "classifier/", rename_outputs=False)
    return onnx.compose.merge_models(
        embedding_graph,
        head,
        io_map=[(EMBEDDING_OUTPUT, "classifier/" + EMBEDDING_OUTPUT)],
        outputs=[OUTPUT, EMBEDDING_OUTPUT],
    )


def _convert_embedding(
    pipeline: Any, X_check: pd.DataFrame, files: dict[str, bytes]
) -> tuple[dict[str, Any], Any, np.ndarray]:
    """What the embedding's check found, its graph (None if not published) and scikit-learn's
    embedding of the rows."""
    step = dict(pipeline.steps).get("embedding")
    if step is None:
        return {"error": "the pipeline has no 'embedding' step"}, None, np.empty((0, 0))
    Z = np.asarray(step.transform(X_check), dtype=np.float64)
    X = X_check.to_numpy(dtype=np.float64)
    try:
        from skl2onnx.common.data_types import DoubleTensorType

        final = [(EMBEDDING_OUTPUT, DoubleTensorType([None, Z.shape[1]]))]
        graph = _to_onnx(step, X.shape[1], final_types=final)
        got = _run(graph, [EMBEDDING_OUTPUT], X)[0]
    except Exception as exc:
        return _failed("embedding", exc), None, Z
    info = _check(EMBEDDING_OUTPUT, got, Z)
    if not info["max_abs_diff"] <= TOLERANCE:
        why = f"max abs difference {info['max_abs_diff']:.3g} (tolerance {TOLERANCE})"
        logger.warning("ONNX embedding not published: %s", why)
        return {**info, "error": why}, None, Z
    files[EMBEDDING_FILE] = graph.SerializeToString()
    return {"file": EMBEDDING_FILE, **info}, graph, Z
