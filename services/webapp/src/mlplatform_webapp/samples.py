"""Rows for the Predict page: reference medians and held-out rows shipped with the package.

``data/held_out.csv`` is the retrainer's fixed test split of the shipped data set (stratified,
seed 42, 20 %), so a "random sample" is a row the first model never trained on. A model whose
schema does not match those columns gets rows drawn from its own reference statistics instead.
"""

from __future__ import annotations

import random
from functools import lru_cache
from importlib import resources
from typing import Any

import pandas as pd

TARGET = "target"


@lru_cache(maxsize=1)
def held_out() -> pd.DataFrame:
    """The shipped held-out rows (features and ``target``)."""
    with resources.files("mlplatform_webapp").joinpath("data/held_out.csv").open("rb") as f:
        return pd.read_csv(f)


def medians(schema: list[dict[str, Any]]) -> dict[str, float]:
    """Each feature's reference median (its mean when the schema has no median)."""
    return {f["name"]: float(f.get("median", f.get("mean", 0.0))) for f in schema}


def random_row(
    schema: list[dict[str, Any]], rng: random.Random | None = None
) -> tuple[dict[str, float], Any, str]:
    """A row to try: ``(features, true target or None, where it came from)``."""
    rng = rng or random.Random()  # noqa: S311 - picking a demo row, not security
    names = [f["name"] for f in schema]
    rows = held_out()
    if names and set(names) <= set(rows.columns):
        i = rng.randrange(len(rows))
        row = rows.iloc[i]
        target = row[TARGET].item() if TARGET in rows.columns else None
        return {n: float(row[n]) for n in names}, target, f"held-out row {i + 1} of {len(rows)}"
    out = {}
    for f in schema:
        lo = float(f.get("q01", f.get("min", 0.0)))
        hi = float(f.get("q99", f.get("max", lo)))
        value = rng.gauss(float(f.get("mean", lo)), float(f.get("std", 0.0)))
        out[f["name"]] = float(min(max(value, lo), hi))
    return out, None, "drawn from the reference statistics"
