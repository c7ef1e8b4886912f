"""Rows for the Predict page: reference medians and held-out rows shipped with the package.

``data/held_out.csv`` is the retrainer's fixed test split of the shipped data set (stratified,
seed 42, 20 %), so a "random sample" is a row the first model never trained on. A model whose
schema does not match those columns (another data set, categories) gets rows drawn from its own
reference statistics instead: categories by their shares in training.
"""

from __future__ import annotations

import random
from functools import lru_cache
from importlib import resources
from typing import Any

import pandas as pd

from mlplatform_common.schema import is_category
from mlplatform_webapp import cards

TARGET = "target"


@lru_cache(maxsize=1)
def held_out() -> pd.DataFrame:
    """The shipped held-out rows (features and ``target``)."""
    with resources.files("mlplatform_webapp").joinpath("data/held_out.csv").open("rb") as f:
        return pd.read_csv(f)


def medians(schema: list[dict[str, Any]]) -> dict[str, Any]:
    """Each feature's first value: a number's reference median (its mean when the schema has no
    median), a category's most common value."""
    return {f["name"]: cards.default_value(f) for f in schema}


def random_row(
    schema: list[dict[str, Any]], rng: random.Random | None = None
) -> tuple[dict[str, Any], Any, str]:
    """A row to try: ``(features, true target or None, where it came from)``."""
    rng = rng or random.Random()  # noqa: S311 - picking a demo row, not security
    names = [f["name"] for f in schema]
    rows = held_out()
    typed = any(is_category(f) for f in schema)
    if names and not typed and set(names) <= set(rows.columns):
        i = rng.randrange(len(rows))
        row = rows.iloc[i]
        target = row[TARGET].item() if TARGET in rows.columns else None
        return {n: float(row[n]) for n in names}, target, f"held-out row {i + 1} of {len(rows)}"
    drawn = {f["name"]: draw(f, rng) for f in schema}
    return drawn, None, "values drawn from the training data's statistics"


def draw(spec: dict[str, Any], rng: random.Random) -> Any:
    """One value of a feature from its reference statistics: a category by its shares in
    training, a number from a normal of its mean and spread kept within its 1-99 % range."""
    if is_category(spec):
        categories = list(spec.get("categories") or [])
        shares = list(spec.get("shares") or [])
        if not categories:
            return cards.EMPTY
        weights = shares if len(shares) == len(categories) and sum(shares) > 0 else None
        return rng.choices(categories, weights=weights)[0]
    lo = float(spec.get("q01", spec.get("min", 0.0)))
    hi = float(spec.get("q99", spec.get("max", lo)))
    value = rng.gauss(float(spec.get("mean", lo)), float(spec.get("std", 0.0)))
    return float(min(max(value, lo), hi))
