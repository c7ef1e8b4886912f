"""Timing of the jobs on synthetic data grown from the shipped set (prints one JSON line).

``python -m bench.jobs report``: an Evidently report, 100k reference x 20k production x 30.
``python -m bench.jobs retrain``: training (with the ONNX conversion and its check) on 100k rows.
``--rows N`` sizes either (the report's production rows are a fifth of N): `make bench` runs the
default, tests/bench the smallest.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import pandas as pd

from mlplatform_common.schema import load_dataset


def grow(n: int, seed: int, shift: float = 0.0) -> tuple[pd.DataFrame, pd.Series]:
    """``n`` rows resampled from the shipped data with 5% noise (and an optional shift)."""
    data = load_dataset("data/breast_cancer.csv")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(data.X), n)
    X = data.X.iloc[idx].reset_index(drop=True)
    X = X * (1 + rng.normal(0, 0.05, X.shape)) + shift * X.std().to_numpy()
    return X, data.y.iloc[idx].reset_index(drop=True)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


ROWS = 100_000
MIN_ROWS = 1_500  # the report's labelled rows (a fiftieth) reach its quality minimum, 30
MIN_LABELLED_ROWS = 30


def report(rows: int = ROWS) -> dict[str, float]:
    from mlplatform_reporter.report import DriftConfig, ReportInput, build_report
    from mlplatform_retrainer.train import TrainConfig, train

    production_rows = rows // 5
    labelled_rows = min(2000, production_rows // 10)
    X_ref, y_ref = grow(rows, 1)
    model = train(X_ref.iloc[:5000], y_ref.iloc[:5000], TrainConfig())
    from mlplatform_common.schema import embed

    ref_emb = embed(model.pipeline, X_ref)
    ref_emb["target"] = y_ref.to_numpy()
    X_prod, y_prod = grow(production_rows, 2, shift=0.3)
    production = X_prod.copy()
    labelled = X_prod.iloc[:labelled_rows].copy()
    labelled["target"] = y_prod.iloc[:labelled_rows].astype(str).to_numpy()
    labelled["prediction"] = [str(p) for p in model.pipeline.predict(X_prod.iloc[:labelled_rows])]
    labelled["proba_json"] = np.nan
    data = ReportInput(
        model_version="v1",
        classes=[0, 1],
        schema=model.schema,
        reference_embedding=ref_emb,
        reference_raw=X_ref,
        production=production,
        labelled=labelled,
    )
    started = time.perf_counter()
    result = build_report(data, DriftConfig(), model.pipeline, min_labelled_rows=MIN_LABELLED_ROWS)
    seconds = time.perf_counter() - started
    assert result.drift, "no drift computed"
    return {
        "reference_rows": rows,
        "production_rows": production_rows,
        "features": 30,
        "seconds": seconds,
        "peak_mb": peak_mb(),
    }


def retrain(rows: int = ROWS) -> dict[str, float]:
    from mlplatform_retrainer import onnx_export
    from mlplatform_retrainer.train import TrainConfig, train

    X, y = grow(rows, 3)
    started = time.perf_counter()
    result = train(X, y, TrainConfig())
    onnx_files, info = onnx_export.convert(result.pipeline, X)
    seconds = time.perf_counter() - started
    assert onnx_export.MODEL_FILE in onnx_files, f"no checked ONNX file: {info}"
    return {"rows": rows, "features": 30, "seconds": seconds, "peak_mb": peak_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.jobs")
    parser.add_argument("job", choices=["report", "retrain"])
    parser.add_argument(
        "--rows",
        type=int,
        default=ROWS,
        help=f"reference rows of the report (production: a fifth), training rows of the "
        f"retrain; at least {MIN_ROWS:,}",
    )
    args = parser.parse_args()
    if args.rows < MIN_ROWS:
        parser.error(f"--rows: at least {MIN_ROWS:,}")
    print(json.dumps({"report": report, "retrain": retrain}[args.job](args.rows)))


if __name__ == "__main__":
    main()
