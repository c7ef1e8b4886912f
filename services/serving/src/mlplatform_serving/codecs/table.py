"""Typed columns: a version's features as the codecs check and encode them, whatever the wire.

A value of a number feature is a finite number within ``FEATURE_LIMIT``; of a category
feature, text (a number is taken as its text, ``category_value``); a missing value (JSON
``null``, an empty CSV cell) only where the schema allows it. Rows come out as the float
matrix of ``schema.encode``: a category as its index in the version's values, a value it never
saw as ``len(values)`` (accepted; the data plane counts them), a missing value as NaN.

A version whose features are all non-nullable numbers is ``plain``: the codecs keep their
fast, numbers-only paths for it, and this module is not on its way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mlplatform_common.errors import InvalidInput
from mlplatform_common.schema import category_value, in_range, is_category, nullable
from mlplatform_serving.codecs.common import NUMBER_TYPES, json_kind, number

if TYPE_CHECKING:
    from mlplatform_serving.runtime import Served

# Where a cell is, for an error: (row index, feature name) -> "instances[3].island".
Where = Callable[[int, str], str]


class Table:
    """What checking and encoding one version's typed columns needs, built once (``of``)."""

    def __init__(self, schema: list[dict[str, Any]]) -> None:
        self.schema = schema
        self.features = [f["name"] for f in schema]
        self.categories: list[dict[str, float] | None] = [
            {v: float(i) for i, v in enumerate(f["categories"])} if is_category(f) else None
            for f in schema
        ]
        self.nullable = [nullable(f) for f in schema]
        self.plain = not any(self.nullable) and all(c is None for c in self.categories)
        # Number columns that may hold NaN (missing): the range check skips NaN there only.
        self.nan_ok = np.array(
            [n and c is None for n, c in zip(self.nullable, self.categories, strict=True)]
        )

    @staticmethod
    def of(served: Served) -> Table:
        """The table of a loaded version, kept with it."""
        table: Table | None = served.codecs.get("table")
        if table is None:
            table = served.codecs["table"] = Table(served.model.manifest["feature_schema"])
        return table

    def choices(self, j: int) -> str:
        values = list(self.categories[j] or ())
        more = f" and {len(values) - 10} more" if len(values) > 10 else ""
        shown = ", ".join(values[:10]) + more
        return f"a category of {self.features[j]!r} ({shown})"

    def column(self, j: int, values: list[Any], where: Where) -> np.ndarray:
        """One feature's values (JSON values, or CSV cells already read: None for an empty
        one) as encoded floats; ``InvalidInput`` naming the first bad cell."""
        lookup = self.categories[j]
        name = self.features[j]
        if lookup is None:
            types = set(map(type, values))
            allowed = NUMBER_TYPES | ({type(None)} if self.nullable[j] else set())
            if types <= allowed:
                try:
                    # None -> NaN; a number too large for a float raises OverflowError
                    arr = np.array(values, dtype=np.float64)
                    missing = np.isnan(arr)
                    # NaN only where a value was missing (None): a NaN sent as a number is not
                    nulls = values.count(None) if self.nullable[j] else 0
                    if int(missing.sum()) == nulls and in_range(arr[~missing] if nulls else arr):
                        return arr
                except OverflowError:
                    pass
            for i, v in enumerate(values):  # the first bad cell (slow; only on bad input)
                if v is None and self.nullable[j]:
                    continue
                if v is None:
                    raise InvalidInput(
                        f"{where(i, name)}: missing, and {name!r} may not be missing (it had a "
                        "value in every training row)"
                    )
                if isinstance(v, str):
                    raise InvalidInput(
                        f"{where(i, name)}: must be a number, got {json_kind(v)} ({name!r} is a "
                        "number feature)"
                    )
                number(v, where(i, name))
            raise InvalidInput(f"{where(0, name)}: invalid values")  # not reached
        out = np.empty(len(values), dtype=np.float64)
        unknown = float(len(lookup))
        get = lookup.get
        for i, v in enumerate(values):
            kind = type(v)
            if kind is str:
                out[i] = get(v, unknown)
            elif v is None:
                if not self.nullable[j]:
                    raise InvalidInput(
                        f"{where(i, name)}: missing, and {name!r} may not be missing (it had a "
                        "value in every training row)"
                    )
                out[i] = math.nan
            elif kind is int or (kind is float and math.isfinite(v)):
                out[i] = get(category_value(v), unknown)
            else:
                raise InvalidInput(
                    f"{where(i, name)}: must be text, {self.choices(j)}, got {json_kind(v)}"
                )
        return out

    def matrix(self, columns: Sequence[Sequence[Any]], where: Where) -> np.ndarray:
        """Every feature's values (in the order of ``features``) as the encoded matrix."""
        n = len(columns[0]) if columns else 0
        X = np.empty((n, len(self.features)), dtype=np.float64)
        for j, values in enumerate(columns):
            X[:, j] = self.column(j, values if type(values) is list else list(values), where)
        return X

    def in_range(self, X: np.ndarray) -> bool:
        """``schema.in_range`` for encoded rows: NaN only in nullable number columns (category
        codes are in range by construction)."""
        return self.nan_in_range(X, self.nan_ok)

    @staticmethod
    def nan_in_range(X: np.ndarray, nan_ok: np.ndarray) -> bool:
        """``schema.in_range`` with NaN allowed in the columns ``nan_ok`` marks."""
        if not nan_ok.any():
            return in_range(X)
        missing = np.isnan(X)
        if missing[:, ~nan_ok].any():
            return False
        return in_range(X[~missing])
