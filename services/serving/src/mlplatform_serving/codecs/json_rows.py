"""JSON rows: ``{"features": {...}}`` or ``{"instances": [{...}, ...]}`` in, the answers of
``POST /predict`` out.

A well-formed body is read by a typed msgspec decoder of the version's features (no dict per
row); any other body is parsed again by the checked path, which names its first problem. A
version with category features or missing values (not ``Table.plain``) takes text and ``null``
where its schema allows them, each column encoded by ``table.Table``.
"""

from __future__ import annotations

import itertools
import operator
import struct
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import orjson

from mlplatform_common import datalog
from mlplatform_common.errors import InvalidInput
from mlplatform_common.schema import in_range, is_category, nullable
from mlplatform_serving.codecs.common import NUMBER_TYPES, number, parse_json, parse_model
from mlplatform_serving.codecs.table import Table
from mlplatform_serving.dataplane import check_batch
from mlplatform_serving.schemas import PredictRequest

if TYPE_CHECKING:
    from collections.abc import Callable

    from mlplatform_serving.runtime import BatchResult, Served


def _value_type(spec: dict[str, Any] | None) -> Any:
    """A feature's value type for msgspec: a float (ints accepted, bools and strings not);
    for a category, text or a number (its text); ``None`` too where the schema allows it."""
    if spec is None or not (is_category(spec) or nullable(spec)):
        return float
    kind: Any = str | float if is_category(spec) else float
    return kind | None if nullable(spec) else kind


def _envelope_decoder(
    features: list[str], schema: list[dict[str, Any]] | None = None
) -> msgspec.json.Decoder[Any] | None:
    """A decoder of ``{"features": {...}}`` / ``{"instances": [{...}, ...]}`` whose rows are
    typed structs of exactly these features (``_value_type``): msgspec checks every row while
    parsing, with no dict per row. None for feature names msgspec cannot match (a ``"``, a
    ``\\`` or a control character): every body of such a model takes the checked path."""
    specs: list[dict[str, Any] | None] = [*schema] if schema else [None] * len(features)
    try:
        row = msgspec.defstruct(
            "Row",
            [(f"f{i}", _value_type(spec)) for i, spec in enumerate(specs)],
            rename={f"f{i}": name for i, name in enumerate(features)},  # even "a (cm)"
            forbid_unknown_fields=True,
            gc=False,
        )
    except ValueError:
        return None
    envelope = msgspec.defstruct(
        "Envelope",
        [
            ("features", msgspec.UnsetType | row, msgspec.UNSET),
            ("instances", msgspec.UnsetType | list[row], msgspec.UNSET),  # type: ignore[valid-type]
        ],
        forbid_unknown_fields=True,
        gc=False,
    )
    return msgspec.json.Decoder(envelope)


class RowsCodec:
    """What reading one version's JSON rows needs, built once per version (``of``)."""

    def __init__(self, features: list[str], table: Table | None = None) -> None:
        self.features = features
        # None for a version of non-nullable numbers only: the numbers-only paths below.
        self.table = table if table is not None and not table.plain else None
        self.feature_set = frozenset(features)
        # itemgetter of one name returns a value, not a tuple; keep it a tuple for chain().
        self.getter = (
            operator.itemgetter(*features) if len(features) > 1 else lambda row: (row[features[0]],)
        )
        self.decoder = _envelope_decoder(features, self.table.schema if self.table else None)
        self.row_packer = struct.Struct(f"={len(features)}d")  # one row as float64s

    @staticmethod
    def of(served: Served) -> RowsCodec:
        """The codec of a loaded version, kept with it: a reload brings its own."""
        codec: RowsCodec | None = served.codecs.get("json_rows")
        if codec is None:
            codec = served.codecs["json_rows"] = RowsCodec(served.features, Table.of(served))
        return codec

    def matrix(self, rows: list[Any]) -> np.ndarray:
        """Decoded rows (``decoder``'s structs) as a float64 matrix (read-only). Each row's
        floats are packed to bytes in C loops (``starmap``, ``struct``): faster than
        ``np.fromiter`` over the values (bench/BENCHMARKS.md, ``bench.steps``)."""
        packed = b"".join(
            itertools.starmap(self.row_packer.pack, map(msgspec.structs.astuple, rows))
        )
        return np.frombuffer(packed, dtype=np.float64).reshape(len(rows), len(self.features))

    def fast(self, body: bytes) -> tuple[np.ndarray, str] | None:
        """A well-formed body's rows as a float64 matrix and the field they came in
        (``features`` or ``instances``); None for anything else, which ``checked`` then
        parses again to name the problem."""
        if self.decoder is None:
            return None
        try:
            envelope = self.decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
            return None  # UnicodeDecodeError: invalid UTF-8 in an object key
        if (envelope.features is msgspec.UNSET) == (envelope.instances is msgspec.UNSET):
            return None
        field_ = "instances" if envelope.features is msgspec.UNSET else "features"
        rows = envelope.instances if field_ == "instances" else [envelope.features]
        if self.table is not None:
            try:
                return self.typed(rows, field_), field_
            except InvalidInput:
                return None
        X = self.matrix(rows)
        if not rows or not in_range(X):
            return None
        return X, field_

    def typed(self, rows: list[Any], field: str) -> np.ndarray:
        """Decoded rows of a version with categories or missing values, encoded by column."""
        if not rows:
            raise InvalidInput(f"{field}: empty batch; send at least one row")
        columns = list(zip(*map(msgspec.structs.astuple, rows), strict=True))
        assert self.table is not None
        return self.table.matrix(columns, _where(field))

    def checked(self, body: bytes, max_rows: int) -> tuple[np.ndarray, str]:
        """Any body the fast path refused: parsed again, and its first problem named."""
        data = parse_json(body)
        if type(data) is list:  # rows without the envelope: pydantic's "valid dictionary" says less
            raise InvalidInput(
                'body: a JSON array; send {"instances": [...]} for many rows, or '
                '{"features": {...}} for one'
            )
        # The envelope's shape is checked by hand: pydantic would copy every row of a batch
        # before validate reads them again. Any other shape gets pydantic's exact error.
        one = type(data) is dict and len(data) == 1
        features: dict[str, Any] | None
        instances: list[Any] | None
        if one and type(data.get("features")) is dict:
            features, instances = data["features"], None
        elif one and type(data.get("instances")) is list:
            features, instances = None, data["instances"]
        else:
            req = parse_model(PredictRequest, data)
            features, instances = req.features, req.instances
        if (features is None) == (instances is None):
            raise InvalidInput("body: give exactly one of 'features' (one row) or 'instances'")
        if instances is None:
            return self.validate([features], "features"), "features"
        check_batch(len(instances), "instances", max_rows)  # before checking every row
        return self.validate(instances, "instances"), "instances"

    def validate(self, rows: list[Any], field: str = "instances") -> np.ndarray:
        """Check JSON rows against the feature schema; return them as a float64 matrix."""
        n = len(self.features)
        if self.table is not None:
            if not all(type(row) is dict and len(row) == n for row in rows):
                raise self._explain(rows, field)
            try:
                columns = list(zip(*map(self.getter, rows), strict=True))
            except KeyError:
                raise self._explain(rows, field) from None
            return self.table.matrix(columns, _where(field))
        try:
            # C-level loops only: pick the features in order (KeyError if one is missing),
            # refuse extra keys by length, then one pass over every value's type.
            if not all(type(row) is dict and len(row) == n for row in rows):
                raise ValueError
            values = list(itertools.chain.from_iterable(map(self.getter, rows)))
            if not set(map(type, values)) <= NUMBER_TYPES:  # bool is not a number here
                raise ValueError
            X = np.array(values, dtype=np.float64).reshape(len(rows), n)
            if not in_range(X):
                raise ValueError
        except (ValueError, TypeError, OverflowError, KeyError):
            raise self._explain(rows, field) from None
        return X

    def _explain(self, rows: list[Any], field: str) -> InvalidInput:
        """The precise error for rows the fast path refused (slow; only on bad input)."""
        features = self.features
        for i, row in enumerate(rows):
            where = f"{field}[{i}]" if field == "instances" else field
            if not isinstance(row, dict):
                return InvalidInput(f"{where}: must be an object of feature: value")
            unknown = [k for k in row if k not in self.feature_set]
            if unknown:
                return InvalidInput(f"{where}: unknown feature {unknown[0]!r}")
            for name in features:
                if name not in row:
                    missing = [f for f in features if f not in row]
                    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                    return InvalidInput(f"{where}: missing feature {name!r}{more}")
                try:
                    if self.table is None:  # typed columns are checked by Table.matrix
                        number(row[name], f"{where}.{name}")
                except InvalidInput as exc:
                    return exc
        return InvalidInput(f"{field}: invalid rows")


def _where(field: str) -> Callable[[int, str], str]:
    """A cell's place as errors name it: ``instances[3].island``, ``features.island``."""
    if field == "instances":
        return lambda i, name: f"instances[{i}].{name}"
    return lambda i, name: f"{field}.{name}"


def decode(body: bytes, served: Served, max_rows: int) -> tuple[np.ndarray, str]:
    """A JSON body's rows as a float64 matrix, and the field they came in."""
    codec = RowsCodec.of(served)
    return codec.fast(body) or codec.checked(body, max_rows)


def encode(result: BatchResult, ids: datalog.PredictionIds) -> bytes:
    """The body of ``POST /predict``'s answer (``PredictResponse``)."""
    return orjson.dumps(
        {
            "model_version": result.served.version,
            "engine": result.served.engine.name,
            "backup": result.backup,
            "predictions": answers(result, ids),
        }
    )


def answers(result: BatchResult, ids: datalog.PredictionIds) -> orjson.Fragment:
    """The per-row answers as a JSON list (``answer_dicts``), encoded.

    Up to 16 rows, from the dicts; beyond, spliced (``answers_spliced``): building a dict
    per row cost more than the whole prediction (bench/BENCHMARKS.md).
    """
    if len(ids) <= 16:
        return orjson.Fragment(orjson.dumps(answer_dicts(result, ids)))
    if result.value is not None:
        return values_spliced(result, ids)
    return answers_spliced(result, ids)


def answer_dicts(result: BatchResult, ids: datalog.PredictionIds) -> list[dict[str, Any]]:
    """What each row's answer is: a regression's value, or a class and its probabilities."""
    served = result.served
    if result.value is not None:
        version, backup = served.version, result.backup
        return [
            {"prediction_id": pid, "value": value, "model_version": version, "backup": backup}
            for pid, value in zip(ids, result.value.tolist(), strict=True)
        ]
    classes, keys_, names = served.classes, served.class_keys, served.class_names
    version, backup = served.version, result.backup
    tops = result.top.tolist()
    return [
        {
            "prediction_id": pid,
            "label": classes[i],
            "label_name": names[i],
            "probability": top,
            "probabilities": dict(zip(keys_, p, strict=True)),
            "model_version": version,
            "backup": backup,
        }
        for pid, i, top, p in zip(
            ids, result.label_index.tolist(), tops, result.proba.tolist(), strict=True
        )
    ]


def answers_spliced(result: BatchResult, ids: datalog.PredictionIds) -> orjson.Fragment:
    """``orjson.dumps(answer_dicts(...))`` without the dicts: every value is still encoded
    by orjson, but a batch's numbers in one call per column and the rest once per class,
    then spliced row by row in C loops. The tests compare both byte for byte."""
    if not ids:
        return orjson.Fragment(b"[]")
    served = result.served

    def dumps(value: Any) -> str:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()

    def numbers(column: np.ndarray) -> list[str]:
        return dumps(np.ascontiguousarray(column))[1:-1].split(",")

    per_class = [
        f'","label":{dumps(c)},"label_name":{dumps(name)},"probability":'
        for c, name in zip(served.classes, served.class_names, strict=True)
    ]
    parts: list[Any] = [
        itertools.repeat('{"prediction_id":"' + ids.batch),
        ids.suffixes(),
        map(per_class.__getitem__, result.label_index.tolist()),
        numbers(result.top),
    ]
    for j, key in enumerate(served.class_keys):
        parts += [itertools.repeat(("," if j else ',"probabilities":{') + dumps(key) + ":")]
        parts += [numbers(result.proba[:, j])]
    end = f'}},"model_version":{dumps(served.version)},"backup":{dumps(result.backup)}}},'
    parts.append(itertools.repeat(end))
    text = "".join(itertools.chain.from_iterable(zip(*parts, strict=False)))  # repeat()s
    return orjson.Fragment(f"[{text[:-1]}]".encode())


def values_spliced(result: BatchResult, ids: datalog.PredictionIds) -> orjson.Fragment:
    """A regression's ``answer_dicts`` without the dicts, as ``answers_spliced`` does."""
    assert result.value is not None
    served = result.served
    values = orjson.dumps(np.ascontiguousarray(result.value), option=orjson.OPT_SERIALIZE_NUMPY)
    end = orjson.dumps({"model_version": served.version, "backup": result.backup}).decode()
    parts: list[Any] = [
        itertools.repeat('{"prediction_id":"' + ids.batch),
        ids.suffixes(),
        itertools.repeat('","value":'),
        values.decode()[1:-1].split(","),
        itertools.repeat("," + end[1:] + ","),
    ]
    text = "".join(itertools.chain.from_iterable(zip(*parts, strict=False)))
    return orjson.Fragment(f"[{text[:-1]}]".encode())
