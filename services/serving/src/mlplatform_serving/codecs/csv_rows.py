"""CSV rows: a ``text/csv`` body (SageMaker style), with or without a header line, in. Its
answers are those of JSON rows (``json_rows.encode``).

numpy's C reader reads a well-formed body (``csv_matrix``); any other is read again cell by
cell to name its first problem. A version with category features or missing values
(``Table``) is always read cell by cell: an empty cell is a missing value, a category's cell is
its text as it is.
"""

from __future__ import annotations

import csv
import io
import math

import numpy as np

from mlplatform_common.errors import InvalidInput
from mlplatform_common.schema import FEATURE_LIMIT, in_range
from mlplatform_serving.codecs.common import BEYOND
from mlplatform_serving.codecs.table import Table


def _csv_float(cell: str) -> float:
    """A CSV cell as a number, the way numpy's reader (``csv_matrix``) reads one: ``float()``
    without the digit separators (``1_000``) and non-ASCII digits it also accepts."""
    cell = cell.strip()
    if "_" in cell or not cell.isascii():
        raise ValueError(cell)
    return float(cell)


def _is_number(cell: str) -> bool:
    try:
        _csv_float(cell)
    except ValueError:
        return False
    return True


def _header_names(cells: list[str], features: list[str]) -> list[str | None]:
    """A CSV line's cells as the features they name (surrounding spaces aside), None for a
    cell that names none: the line is a header if no cell is None."""
    names = {f.strip(): f for f in features} | {f: f for f in features}
    return [names.get(c, names.get(c.strip())) for c in cells]


def csv_matrix(text: str, features: list[str], max_rows: int | None) -> np.ndarray | None:
    """A well-formed ``text/csv`` body (see ``decode``) as a float64 matrix, read by numpy's
    C reader (``np.loadtxt``): several times faster than reading every cell in Python
    (bench/BENCHMARKS.md, session 10). None for any other body,
    which the checked reading then reads again to name its first problem: a cell that is not
    a number, a row of another width, a value out of range, more rows than ``max_rows``."""
    ends = [i for i in (text.find("\n"), text.find("\r")) if i >= 0]
    first_end = min(ends, default=len(text))
    try:
        cells = next(csv.reader([text[:first_end]], strict=True), [])
    except csv.Error:
        return None
    head = _header_names(cells, features)
    if head and None not in head:  # a header line: the features, in any order
        if sorted(map(str, head)) != sorted(features):
            return None
        text, order = text[first_end:], [head.index(f) for f in features]
    else:
        order = list(range(len(features)))
    lines = text.count("\n") + text.count("\r") - text.count("\r\n") + 1
    if not text.strip() or (max_rows is not None and lines > 2 * (max_rows + 1)):
        return None  # the checked reading stops at its limit (numpy's would warn of blanks)
    if '"' in text:
        return None  # numpy reads '"1"2' as 12 where csv refuses it: quoted cells are checked
    try:
        X = np.loadtxt(
            io.StringIO(text, newline=None),  # \r\n and \r end lines, as in csv.reader
            delimiter=",",
            comments=None,
            dtype=np.float64,
            ndmin=2,
        )
    except ValueError:
        return None
    if X.shape[1] != len(features) or not len(X) or not in_range(X):
        return None
    if max_rows is not None and len(X) > max_rows:
        return None
    return X if order == list(range(len(features))) else np.ascontiguousarray(X[:, order])


def decode(
    body: bytes, features: list[str], max_rows: int | None = None, table: Table | None = None
) -> np.ndarray:
    """A CSV body's rows (of ``features``) as a float64 matrix. numpy's reader reads a
    well-formed body (``csv_matrix``); any other is read again here, cell by cell, to name
    its first problem. Reading stops past ``max_rows`` rows (+ a
    header), or twice as many lines blank ones included: a body of many more is refused
    without parsing all of it."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput("csv: body is not UTF-8 text") from None
    typed = table is not None and not table.plain
    fast = None if typed else csv_matrix(text, features, max_rows)
    if fast is not None:
        return fast
    numbered: list[tuple[int, list[str]]] = []
    try:
        for n, row in enumerate(csv.reader(io.StringIO(text, newline=""), strict=True), start=1):
            if any(c.strip() for c in row):
                numbered.append((n, row))
            if max_rows is not None and (len(numbered) > max_rows + 1 or n > 2 * (max_rows + 1)):
                raise InvalidInput(
                    f"csv: over the limit of {max_rows} rows per request (reading "
                    f"stopped at line {n})"
                )
    except csv.Error as exc:
        raise InvalidInput(f"csv: malformed ({exc})") from None
    first = _header_names(numbered[0][1], features) if numbered else []
    if first and None in first and any(first) and not all(map(_is_number, numbered[0][1])):
        at = first.index(None)
        unknown = numbered[0][1][at].strip()
        raise InvalidInput(
            f"csv header: unknown column {unknown!r:.60}; the columns are the features of "
            "GET /model"
            if unknown
            else f"csv header: column {at + 1} has no name (an index column? send the "
            "features only, e.g. DataFrame.to_csv(index=False))"
        )
    if first and None not in first:
        header = [str(h) for h in first]
        if sorted(header) != sorted(features):
            missing = [f for f in features if f not in header]
            raise InvalidInput(
                f"csv header: missing feature {missing[0]!r}"
                if missing
                else "csv header: a feature is named twice"
            )
        numbered = numbered[1:]
    else:
        header = features
    if not numbered:
        raise InvalidInput("csv: no data rows")
    if typed:
        assert table is not None
        return _typed(numbered, header, table)
    out = np.empty((len(numbered), len(features)), dtype=np.float64)
    order = [header.index(f) for f in features]
    for i, (line, row) in enumerate(numbered):
        if len(row) != len(header):
            raise InvalidInput(f"csv line {line}: expected {len(header)} values, got {len(row)}")
        for j, k in enumerate(order):
            cell = row[k].strip()
            try:
                value = _csv_float(cell)
            except ValueError:
                raise InvalidInput(
                    f"csv line {line}, column {features[j]!r}: {cell!r:.40} is not a number"
                ) from None
            if not math.isfinite(value):
                raise InvalidInput(
                    f"csv line {line}, column {features[j]!r}: must be a finite number"
                )
            if abs(value) > FEATURE_LIMIT:
                raise InvalidInput(
                    f"csv line {line}, column {features[j]!r}: {cell!r:.40} {BEYOND}"
                )
            out[i, j] = value
    return out


def _typed(numbered: list[tuple[int, list[str]]], header: list[str], table: Table) -> np.ndarray:
    """Rows of a version with categories or missing values: each column's cells (None for an
    empty one; numbers read as numbers in number columns) encoded by ``table``."""
    for line, row in numbered:
        if len(row) != len(header):
            raise InvalidInput(f"csv line {line}: expected {len(header)} values, got {len(row)}")
    lines = [line for line, _ in numbered]
    columns: list[list[object]] = []
    for j, name in enumerate(table.features):
        k = header.index(name)
        cells: list[object] = []
        for line, row in numbered:
            cell = row[k]
            if not cell.strip():
                cells.append(None)
            elif table.categories[j] is not None:
                cells.append(cell)
            else:
                try:
                    value = _csv_float(cell)
                except ValueError:
                    raise InvalidInput(
                        f"csv line {line}, column {name!r}: {cell.strip()!r:.40} is not a number"
                    ) from None
                if not math.isfinite(value):  # "nan" is no missing cell: an empty one is
                    raise InvalidInput(f"csv line {line}, column {name!r}: must be a finite number")
                cells.append(value)
        columns.append(cells)
    return table.matrix(columns, lambda i, name: f"csv line {lines[i]}, column {name!r}")
