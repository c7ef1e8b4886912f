"""What every codec shares: the checks a feature value passes, and parsing JSON text."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError

from mlplatform_common.errors import InvalidInput
from mlplatform_common.schema import FEATURE_LIMIT

# The types a JSON number decodes to (bool is not one here).
NUMBER_TYPES = {float, int}
FP32_MAX = float(np.finfo(np.float32).max)
BEYOND = f"is beyond ±{FEATURE_LIMIT:g}, too large to predict or train on"


def json_kind(value: Any) -> str:
    """A JSON value as a client wrote it: ``null`` (an empty cell?), ``true``, ``"abc"``..."""
    if value is None:
        return "null (an empty value)"
    if isinstance(value, bool | str):
        kind = "a string" if isinstance(value, str) else "a boolean"
        return f"{kind} {orjson.dumps(value).decode()[:40]}"
    if isinstance(value, list | dict):
        return "an array" if isinstance(value, list) else "an object"
    return type(value).__name__


def number(value: Any, where: str) -> float:
    """``value`` as a feature value (a finite number within ``FEATURE_LIMIT``), or the
    ``InvalidInput`` that says why it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{where}: must be a number, got {json_kind(value)}")
    try:
        out = float(value)
    except OverflowError:
        raise InvalidInput(f"{where}: {value!r:.40} is too large for a float") from None
    if not math.isfinite(out):
        raise InvalidInput(f"{where}: must be a finite number, got {value!r}")
    if abs(out) > FEATURE_LIMIT:
        raise InvalidInput(f"{where}: {value!r:.40} {BEYOND}")
    return out


def loads(body: bytes) -> Any:
    """Parse JSON fast (orjson); on failure, re-parse with the standard library only to word
    the error (it also reads NaN and huge integers, which validation then names)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except RecursionError:
        raise InvalidInput("body: JSON nested too deeply") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"body: not valid JSON ({exc})") from None
    except ValueError:  # an integer literal past Python's 4300-digit conversion limit
        raise InvalidInput("body: a number has too many digits") from None


def parse_json(body: bytes) -> Any:
    """Parse a JSON body with errors a client can act on."""
    if not body.strip():
        raise InvalidInput("body: empty; send a JSON object")
    return loads(body)


def parse_model(model: type[Any], data: Any) -> Any:
    """Validate with pydantic, naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise InvalidInput(f"{where}: {err['msg']}") from None
