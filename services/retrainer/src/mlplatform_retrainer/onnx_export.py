"""Convert a fitted pipeline to ONNX at publish time, and prove the conversion.

Two graphs per version, each checked on every row of the training data before it is
published:

- ``embedding.onnx``: the pipeline's ``embedding`` step, encoded rows -> ``PCA_1..PCA_n``
  (output ``embedding``). Its output must match scikit-learn's within ``TOLERANCE``.
- ``model.onnx``: the whole pipeline, encoded rows -> class ``probabilities``
  (classification) or predicted ``value``s (regression, float64, ``[n, 1]``); the manifest's
  ``onnx.output`` names it. Probabilities must match scikit-learn's within ``TOLERANCE`` and
  give identical labels; values must match ``predict`` within ``TOLERANCE`` times the scale
  of the predictions (``max(1, max |prediction|)``: an error in the target's units). Linear
  models match to ~1e-15; tree ensembles keep thresholds as float32 in ONNX and match to
  ~1e-7. When the pipeline starts with its ``embedding`` step, ``model.onnx`` is the
  embedding graph joined to the rest of the pipeline's graph and returns the ``embedding``
  too (checked the same way): serving writes it into the prediction log from the run that
  predicted the rows, so the embedding is computed once per row, not twice
  (bench/BENCHMARKS.md). ``embedding.onnx`` embeds the rows for the log when ``model.onnx``
  does not return them (the joined graph failed its check, or the version was published
  before).

Two converters are replaced here (``_register_converters``): SimpleImputer on doubles (ONNX
Runtime's ``Imputer`` has no float64 kernel) and the hist gradient boosting models (skl2onnx
builds their tree node with a Python ``bool`` attribute newer protobuf refuses). Tree
ensembles that ONNX Runtime only runs in float32 (regression forests, hist gradient
boosting) get the rest of the pipeline converted on float32 between two casts
(``_float32_rest``); the check on every row decides whether that graph is published.

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
VALUE_OUTPUT = "value"
EMBEDDING_OUTPUT = "embedding"
MODEL_FILE = "model.onnx"
EMBEDDING_FILE = "embedding.onnx"
REGRESSION = "regression"
REGISTERED_OPSET = {"": OPSET, "ai.onnx.ml": 3}
"""Registered models' graphs: onnxmltools' LightGBM converter writes ai.onnx.ml 3 at most."""


def _impute_doubles(scope: Any, operator: Any, container: Any) -> None:
    """SimpleImputer on float64 as ``Where(IsNaN(x), statistics, x)``, the statistics kept in
    float64 (skl2onnx's ``Imputer`` node keeps them as float32 and has no float64 kernel)."""
    from skl2onnx.common.data_types import DoubleTensorType
    from skl2onnx.operator_converters.common import concatenate_variables
    from skl2onnx.operator_converters.imputer_op import convert_sklearn_imputer
    from skl2onnx.proto import onnx_proto

    op = operator.raw_operator
    stats = np.asarray(getattr(op, "statistics_", []), dtype=np.float64)
    missing_nan = isinstance(op.missing_values, float) and np.isnan(op.missing_values)
    if not isinstance(operator.inputs[0].type, DoubleTensorType):
        convert_sklearn_imputer(scope, operator, container)
        return
    if not missing_nan or np.isnan(stats).any() or stats.size != operator.inputs[0].type.shape[1]:
        # other markers, or columns scikit-learn drops (all missing): not handled here
        raise NotImplementedError("SimpleImputer on doubles: only NaN, every column kept")
    x = concatenate_variables(scope, operator.inputs, container)
    fill = scope.get_unique_variable_name("fill")
    container.add_initializer(fill, onnx_proto.TensorProto.DOUBLE, [1, stats.size], stats.tolist())
    missing = scope.get_unique_variable_name("missing")
    container.add_node("IsNaN", [x], [missing], name=scope.get_unique_operator_name("IsNaN"))
    container.add_node(
        "Where",
        [missing, fill, x],
        [operator.outputs[0].full_name],
        name=scope.get_unique_operator_name("Where"),
    )


def _int_missing_tracks(original: Any) -> Any:
    """skl2onnx's converter with the trees' ``nodes_missing_value_tracks_true`` as ints (it
    passes ``False`` for leaves, which protobuf refuses for an ints attribute)."""

    def convert(scope: Any, operator: Any, container: Any) -> None:
        add_node = container.add_node

        def add(op_type: str, inputs: Any, outputs: Any, **attrs: Any) -> Any:
            tracks = attrs.get("nodes_missing_value_tracks_true")
            if tracks is not None:
                attrs["nodes_missing_value_tracks_true"] = [int(v) for v in tracks]
            return add_node(op_type, inputs, outputs, **attrs)

        container.add_node = add
        try:
            original(scope, operator, container)
        finally:
            del container.add_node  # the instance attribute: the method again

    return convert


_registered = False


def _register_converters() -> None:
    global _registered
    if _registered:
        return
    from skl2onnx import update_registered_converter
    from skl2onnx.common._registration import get_converter, get_shape_calculator
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.impute import SimpleImputer

    alias = "SklearnSimpleImputer"
    update_registered_converter(SimpleImputer, alias, get_shape_calculator(alias), _impute_doubles)
    for cls, options in (
        (
            HistGradientBoostingClassifier,
            {
                "zipmap": [True, False, "columns"],
                "nocl": [True, False],
                "raw_scores": [True, False],
                "output_class_labels": [False, True],
            },
        ),
        (HistGradientBoostingRegressor, {"raw_scores": [True, False]}),
    ):
        alias = f"Sklearn{cls.__name__}"
        update_registered_converter(
            cls,
            alias,
            get_shape_calculator(alias),
            _int_missing_tracks(get_converter(alias)),
            options=options,
        )
    _register_boosting()
    _registered = True


def _register_boosting() -> None:
    """XGBoost's and LightGBM's scikit-learn models through onnxmltools' converters, where the
    retrainer's ``boosting`` extra is installed (registered models)."""
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    classifier_options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    try:
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
    except ImportError:
        return
    for module, prefix, converter in (
        ("xgboost", "XGBoostXGB", convert_xgboost),
        ("lightgbm", "LightGbmLGBM", convert_lightgbm),
    ):
        try:
            library = __import__(module)
        except ImportError:
            continue
        head = "XGB" if module == "xgboost" else "LGBM"
        update_registered_converter(
            getattr(library, f"{head}Classifier"),
            f"{prefix}Classifier",
            calculate_linear_classifier_output_shapes,
            converter,
            options=classifier_options,
        )
        update_registered_converter(
            getattr(library, f"{head}Regressor"),
            f"{prefix}Regressor",
            calculate_linear_regressor_output_shapes,
            converter,
        )


def _to_onnx(
    estimator: Any,
    n_features: int,
    input_name: str = INPUT,
    float32: bool = False,
    opset: Any = OPSET,
    **kwargs: Any,
) -> Any:  # onnx.ModelProto
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    _register_converters()
    tensor = FloatTensorType if float32 else DoubleTensorType
    return to_onnx(
        estimator,
        initial_types=[(input_name, tensor([None, n_features]))],
        target_opset=opset,
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


def _check(output: str, got: np.ndarray, expected: np.ndarray, tolerance: float) -> dict[str, Any]:
    return {
        "input": INPUT,
        "output": output,
        "checked_rows": len(expected),
        "max_abs_diff": _diff(got, expected),
        "tolerance": tolerance,
    }


def _failed(what: str, exc: Exception) -> dict[str, Any]:
    logger.warning("ONNX conversion of the %s failed (%s: %s)", what, type(exc).__name__, exc)
    return {"error": f"{type(exc).__name__}: {exc}"[:500]}


def _output_types(task: str, float32: bool = False) -> dict[str, Any]:
    """to_onnx arguments that name a regressor's output ``value`` (skl2onnx: ``variable``)."""
    if task != REGRESSION:
        return {}
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    tensor = FloatTensorType if float32 else DoubleTensorType
    return {"final_types": [(VALUE_OUTPUT, tensor([None, 1]))]}


def convert(
    pipeline: Any, X_check: pd.DataFrame, task: str = "classification"
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The checked ONNX files of a pipeline and what the checks found (for the manifest).

    Graphs take one float64 tensor ``input`` of shape ``[n, n_features]`` (rows encoded by the
    feature schema) and compute in float64 as scikit-learn does (tree ensembles ONNX Runtime
    runs only in float32: on float32 between two casts); ``model.onnx`` returns ``info["output"]``:
    ``probabilities`` (no ZipMap) for classification, ``value`` (``[n, 1]``) for regression,
    checked within ``info["tolerance"]`` (for regression ``TOLERANCE`` times
    ``max(1, max |prediction|)``: the target's scale), and, when ``info["embedding_output"]``
    names it, the embedding. ``info["error"]`` says why there is no ``model.onnx``;
    ``info["embedding"]["error"]`` why there is no ``embedding.onnx``;
    ``info["embedding_output_error"]`` why the joined graph was not kept (the whole
    pipeline's graph, without the embedding output, then is).
    """
    X = X_check.to_numpy(dtype=np.float64)
    if task == REGRESSION:
        expected = np.asarray(pipeline.predict(X_check), dtype=np.float64).reshape(-1, 1)
        tolerance = TOLERANCE * max(1.0, float(np.abs(expected).max(initial=0.0)))
        output, options = VALUE_OUTPUT, None
    else:
        expected = pipeline.predict_proba(X_check)
        tolerance, output = TOLERANCE, OUTPUT
        options = {id(pipeline.steps[-1][1]): {"zipmap": False}}
    check = _Check(task, output, expected, tolerance, X)
    files: dict[str, bytes] = {}
    embedding_info, embedding_graph, Z = _convert_embedding(pipeline, X_check, files)
    joined_error = None
    if embedding_graph is not None and pipeline.steps[0][0] == "embedding":
        rest, n = pipeline[1:], Z.shape[1]
        info, data = check.graph(
            "joined graph", lambda: _joined(embedding_graph, rest, n, options, task), Z
        )
        if data is None and _is_tree_ensemble(pipeline.steps[-1][1]):
            # No float64 kernel, or float64 thresholds scikit-learn's trees do not use.
            first = info["error"]
            info, data = check.graph(
                "joined graph, trees on float32",
                lambda: _joined(embedding_graph, rest, n, options, task, float32=True),
                Z,
            )
            if data is None:
                info["error"] = f"{first}; trees on float32: {info['error']}"[:500]
        if data is not None:
            files[MODEL_FILE] = data
            return files, {**info, "embedding": embedding_info}
        joined_error = info["error"]
        logger.warning("publishing the whole pipeline's graph, without the embedding output")
    info, data = check.graph(
        "pipeline",
        lambda: _to_onnx(pipeline, X.shape[1], options=options, **_output_types(task)),
        None,
    )
    if joined_error is not None:
        info["embedding_output_error"] = joined_error
    if data is None:
        logger.warning("no ONNX for this version: serving will use scikit-learn")
        return {}, info
    files[MODEL_FILE] = data
    return files, {**info, "embedding": embedding_info}


def convert_registered(
    model: Any, embedding: Any, X_check: pd.DataFrame, task: str
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The checked ONNX files of a registered model (``mlplatform_common.registered``):
    ``model.onnx`` from the user's own estimator or pipeline, tried on float64 and then on
    float32 between two casts (XGBoost's and LightGBM's trees), and ``embedding.onnx`` from the
    drift embedding; each checked on every reference row as ``convert``'s are. Only models
    whose features are all numbers are converted: the user's model takes category text, and
    the platform's graphs take category codes."""
    X = X_check.to_numpy(dtype=np.float64)
    model = _without_booster_names(model)
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    if task == REGRESSION:
        expected = np.asarray(model.predict(X_check), dtype=np.float64).reshape(-1, 1)
        tolerance = TOLERANCE * max(1.0, float(np.abs(expected).max(initial=0.0)))
        output, options = VALUE_OUTPUT, None
    else:
        expected = np.asarray(model.predict_proba(X_check), dtype=np.float64)
        tolerance, output = TOLERANCE, OUTPUT
        options = {id(final): {"zipmap": False}}
    check = _Check(task, output, expected, tolerance, X)
    files: dict[str, bytes] = {}
    embedding_info, _graph, _Z = _convert_embedding({"embedding": embedding}, X_check, files)
    lightgbm = type(final).__module__.startswith("lightgbm")
    fix = _thresholds_up if lightgbm else (lambda graph: graph)
    info, data = check.graph(
        "registered model",
        lambda: fix(
            _to_onnx(
                model, X.shape[1], options=options, opset=REGISTERED_OPSET, **_output_types(task)
            )
        ),
        None,
    )
    if data is None:
        first = info["error"]
        info, data = check.graph(
            "registered model on float32",
            lambda: fix(
                _float32_rest(
                    model, X.shape[1], options, task, input_name=INPUT, opset=REGISTERED_OPSET
                )
            ),
            None,
        )
        if data is None:
            info["error"] = f"{first}; on float32: {info['error']}"[:500]
    if data is None:
        return files, {**info, "embedding": embedding_info}
    files[MODEL_FILE] = data
    return files, {**info, "embedding": embedding_info}


def _thresholds_up(graph: Any) -> Any:
    """LightGBM sends a row left when its value is <= a float64 threshold; the converter keeps
    thresholds in float32, rounded to the nearest, so a value just under one (bmi 33.1 under
    33.10000000000001, kept as 33.0999985) went right. One float32 step up keeps every value
    <= the threshold left (only a value within about 1.5 float32 steps above it goes wrong)."""
    for node in graph.graph.node:
        if node.domain != "ai.onnx.ml" or not node.op_type.startswith("TreeEnsemble"):
            continue
        attrs = {a.name: a for a in node.attribute}
        values = np.asarray(attrs["nodes_values"].floats, dtype=np.float32)
        leq = np.asarray([m == b"BRANCH_LEQ" for m in attrs["nodes_modes"].strings])
        values[leq] = np.nextafter(values[leq], np.float32(np.inf))
        attrs["nodes_values"].floats[:] = values.tolist()
    return graph


def _without_booster_names(model: Any) -> Any:
    """A copy of the model whose XGBoost booster has no feature names: onnxmltools reads the
    features of a booster by the names ``f0, f1, ...`` only (the graph takes one tensor)."""
    import copy

    final = model.steps[-1][1] if hasattr(model, "steps") else model
    if not callable(getattr(final, "get_booster", None)):
        return model
    model = copy.deepcopy(model)
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    final.get_booster().feature_names = None
    return model


def _is_tree_ensemble(estimator: Any) -> bool:
    return hasattr(estimator, "estimators_") or hasattr(estimator, "_predictors")


class _Check:
    """Builds a model graph and checks its outputs on every row against scikit-learn's."""

    def __init__(
        self, task: str, output: str, expected: np.ndarray, tolerance: float, X: np.ndarray
    ) -> None:
        self.task, self.output, self.expected, self.tolerance, self.X = (
            task,
            output,
            expected,
            tolerance,
            X,
        )

    def graph(
        self, what: str, build: Any, Z: np.ndarray | None
    ) -> tuple[dict[str, Any], bytes | None]:
        """What the check found, and the graph's bytes if it passed. ``Z``: the embedding the
        graph must return too, or None."""
        outputs = [self.output] if Z is None else [self.output, EMBEDDING_OUTPUT]
        try:
            model = build()
            got = _run(model, outputs, self.X)
        except Exception as exc:  # any converter or runtime failure: this graph is not published
            return _failed(what, exc), None
        expected = self.expected
        info = {
            "file": MODEL_FILE,
            "opset": OPSET,
            **_check(self.output, got[0], expected, self.tolerance),
        }
        problems = []
        if not info["max_abs_diff"] <= self.tolerance:
            problems.append(f"{self.output}: max abs difference {info['max_abs_diff']:.3g}")
        if self.task != REGRESSION and not (
            got[0].shape == expected.shape and (got[0].argmax(1) == expected.argmax(1)).all()
        ):
            problems.append("labels differ")
        if Z is not None:
            info["embedding_output"] = EMBEDDING_OUTPUT
            info["embedding_max_abs_diff"] = diff = _diff(got[1], Z)
            if not diff <= TOLERANCE:
                problems.append(f"embedding: max abs difference {diff:.3g}")
        if problems:
            why = f"{'; '.join(problems)} (tolerance {self.tolerance:.3g})"
            logger.warning("ONNX %s not published: %s", what, why)
            return {**info, "error": why}, None
        logger.info(
            "ONNX %s checked on %d rows (max abs diff %.2g)",
            what,
            len(self.X),
            info["max_abs_diff"],
        )
        return info, model.SerializeToString()


def _joined(
    embedding_graph: Any,
    rest: Any,
    n_components: int,
    options: Any,
    task: str = "classification",
    float32: bool = False,
) -> Any:
    """One graph: the embedding graph, its output fed to the graph of the pipeline's other
    steps (``float32``: converted on float32, between two casts); outputs the model's output
    and ``embedding``."""
    import onnx.compose

    if float32:
        head = _float32_rest(rest, n_components, options, task)
    else:
        head = _to_onnx(
            rest, n_components, input_name=EMBEDDING_OUTPUT, options=options, **_output_types(task)
        )
    output = VALUE_OUTPUT if task == REGRESSION else OUTPUT
    # The two graphs name their inner values alike ("variable", ...): prefix the second's.
    head = onnx.compose.add_prefix(head, "classifier/", rename_outputs=False)
    return onnx.compose.merge_models(
        embedding_graph,
        head,
        io_map=[(EMBEDDING_OUTPUT, "classifier/" + EMBEDDING_OUTPUT)],
        outputs=[output, EMBEDDING_OUTPUT],
    )


def _float32_rest(
    rest: Any,
    n_in: int,
    options: Any,
    task: str,
    input_name: str = EMBEDDING_OUTPUT,
    opset: Any = OPSET,
) -> Any:
    """The graph of ``rest`` converted on float32, taking and returning float64: ONNX Runtime
    runs regression forests and hist gradient boosting only in float32 (and so does
    scikit-learn's forest; hist gradient boosting compares in float64, so a row near a
    threshold may differ: the check on every row decides)."""
    from onnx import TensorProto, helper

    inner = "input32"
    head = _to_onnx(
        rest,
        n_in,
        input_name=inner,
        float32=True,
        options=options,
        opset=opset,
        **_output_types(task, True),
    )
    graph = head.graph
    casts = [helper.make_node("Cast", [input_name], [inner], to=TensorProto.DOUBLE)]
    casts[0].attribute[0].i = TensorProto.FLOAT
    outputs = []
    for out in graph.output:
        if out.type.tensor_type.elem_type != TensorProto.FLOAT:
            outputs.append(out)
            continue
        narrow = out.name + "32"
        for node in graph.node:
            node.output[:] = [narrow if o == out.name else o for o in node.output]
        casts.append(helper.make_node("Cast", [narrow], [out.name], to=TensorProto.DOUBLE))
        wide = helper.make_tensor_value_info(out.name, TensorProto.DOUBLE, None)
        wide.type.tensor_type.shape.CopyFrom(out.type.tensor_type.shape)
        outputs.append(wide)
    new_input = helper.make_tensor_value_info(input_name, TensorProto.DOUBLE, [None, n_in])
    new_graph = helper.make_graph(
        [casts[0], *graph.node, *casts[1:]],
        graph.name,
        [new_input],
        outputs,
        initializer=list(graph.initializer),
    )
    model = helper.make_model(new_graph, opset_imports=list(head.opset_import))
    model.ir_version = head.ir_version
    return model


def _convert_embedding(
    pipeline: Any, X_check: pd.DataFrame, files: dict[str, bytes]
) -> tuple[dict[str, Any], Any, np.ndarray]:
    """What the embedding's check found, its graph (None if not published) and scikit-learn's
    embedding of the rows."""
    steps = pipeline if isinstance(pipeline, dict) else dict(pipeline.steps)
    step = steps.get("embedding")
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
    info = _check(EMBEDDING_OUTPUT, got, Z, TOLERANCE)
    if not info["max_abs_diff"] <= TOLERANCE:
        why = f"max abs difference {info['max_abs_diff']:.3g} (tolerance {TOLERANCE})"
        logger.warning("ONNX embedding not published: %s", why)
        return {**info, "error": why}, None, Z
    files[EMBEDDING_FILE] = graph.SerializeToString()
    return {"file": EMBEDDING_FILE, **info}, graph, Z
