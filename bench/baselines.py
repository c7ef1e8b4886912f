"""Baselines that ``make bench`` runs beside the real serving, with the same uvicorn settings.

- ``floor_app``: a FastAPI app that answers a constant JSON (the HTTP floor).
- ``naive_app``: the course-style server: a pandas DataFrame per request, then ``predict``
  and ``predict_proba`` of the pickled pipeline (``BENCH_MODEL`` points at a ``model.joblib``).
"""

from __future__ import annotations

import os
from typing import Any

import joblib
import pandas as pd
from fastapi import FastAPI, Request

floor_app = FastAPI()
CONSTANT = {"prediction": 1, "probability": 0.97, "model_version": "v1"}


@floor_app.post("/predict")
async def floor_predict(request: Request) -> dict[str, Any]:
    await request.body()  # read it, as any server must
    return CONSTANT


@floor_app.post("/v2/models/mlplatform/infer")
async def floor_infer(request: Request) -> dict[str, Any]:
    await request.body()
    return CONSTANT


naive_app = FastAPI()
_model: Any = None


@naive_app.on_event("startup")
def _load() -> None:
    global _model
    _model = joblib.load(os.environ["BENCH_MODEL"])


@naive_app.post("/predict")
def naive_predict(payload: dict[str, Any]) -> dict[str, Any]:
    rows = payload.get("instances") or [payload["features"]]
    df = pd.DataFrame(rows)
    labels = _model.predict(df)
    proba = _model.predict_proba(df)
    return {
        "predictions": [
            {"label": int(label), "probability": float(p.max())}
            for label, p in zip(labels, proba, strict=True)
        ]
    }
