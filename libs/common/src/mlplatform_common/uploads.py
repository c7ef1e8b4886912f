"""Model uploads: ``POST /admin/models`` keeps a model file and its reference data in the
store; the retrainer registers them (``actions.register(upload_id)``) and writes the outcome.

Serving cannot register a model itself: its image has no scikit-learn, and loading a user's
pickle is running its code, which the retrainer does in a separate process with a timeout.
The objects of one upload, in the model's part of the store (``keys.upload_file``):

- ``model.<ext>``: the model file as sent (``.skops``, ``.joblib``, ``.pkl``);
- ``data.csv``: its reference rows (a Parquet upload converted, ``datasets.to_csv``);
- ``request.json``: target, task, promote, trust and the file names, written last: an
  upload without it is not one;
- ``outcome.json``: ``{"state": "published", "version", ...}`` or ``{"state": "refused",
  "reason"}``, written once by the retrainer, which then deletes the model and the data.
  The request and the outcome (a few hundred bytes) stay, so the status can still be read.
  A run that failed where a retry may succeed (the store did not answer) writes no outcome
  and deletes nothing: the upload stays pending and the Job's retry registers it.

Only the standard library and the store: serving imports it.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from mlplatform_common import keys
from mlplatform_common.errors import InvalidInput, NotFound, ObjectNotFound
from mlplatform_common.storage import Store

SKOPS = "skops"
PICKLE = "joblib"
MODEL_FORMATS = {".skops": SKOPS, ".joblib": PICKLE, ".pkl": PICKLE, ".pickle": PICKLE}
"""A model file's format by its suffix: skops is loaded safely, the others are pickles."""
DATA_SUFFIXES = (".csv", ".parquet")

PENDING, PUBLISHED, REFUSED = "pending", "published", "refused"
REQUEST, OUTCOME, DATA = "request.json", "outcome.json", "data.csv"

DEFAULT_MAX_MB = 200.0
"""Default of ``MLPLATFORM_MODEL_UPLOAD_MAX_MB``: the largest ``POST /admin/models`` body."""


class UploadRefused(InvalidInput):
    """The retrainer refused to register an upload; the message is its one-line reason."""


def new_id() -> str:
    """A fresh upload id (``keys.UPLOAD_ID``)."""
    return uuid.uuid4().hex


def model_format(filename: str) -> str:
    """``skops`` or ``joblib`` by the file name's suffix; else ``InvalidInput`` naming the
    ones accepted."""
    suffix = "." + filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    fmt = MODEL_FORMATS.get(suffix)
    if fmt is None:
        raise InvalidInput(
            f"model: unknown model format {suffix or '(no suffix)'!r} ({filename[:80]!r}); use "
            ".skops (loaded safely) or .joblib/.pkl (a pickle: loading it runs its code)"
        )
    return fmt


def safe_filename(filename: str, default: str) -> str:
    """The base name of a file as sent, reduced to letters, digits, ``.``, ``_`` and ``-``
    (it becomes a file name in the retrainer's temporary folder and the manifest's
    ``source_file``)."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", filename.replace("\\", "/").rsplit("/", 1)[-1])
    base = base.strip(".-")[-100:].lstrip(".-")
    return base or default


def dataset_name(filename: str, upload_id: str) -> str:
    """The data set the reference rows are kept as (``datasets/<name>/``): the file's name
    and the upload's, so two uploads of ``reference.csv`` never replace each other's."""
    stem = filename.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0].lower()
    stem = re.sub(r"[^a-z0-9_-]+", "-", stem).strip("-_")[:48].strip("-_")
    return f"{stem or 'reference'}-{upload_id[:8]}"


def model_key(upload_id: str, request: dict[str, Any]) -> str:
    suffix = "." + str(request["model_file"]).rsplit(".", 1)[-1].lower()
    return keys.upload_file(upload_id, f"model{suffix}")


def store_upload(
    store: Store,
    upload_id: str,
    model: bytes,
    data_csv: bytes,
    request: dict[str, Any],
) -> None:
    """Write an upload: the model, the data, then its request (its existence says the upload
    is whole). A failed write removes what was written."""
    request = {**request, "submitted_at": time.time()}
    written: list[str] = []
    try:
        for key, body, kind in (
            (model_key(upload_id, request), model, "application/octet-stream"),
            (keys.upload_file(upload_id, DATA), data_csv, "text/csv"),
        ):
            store.put(key, body, kind)
            written.append(key)
        store.put_json(keys.upload_file(upload_id, REQUEST), request)
    except BaseException:
        for key in written:
            store.delete(key)
        raise


def remove(store: Store, upload_id: str) -> None:
    """Delete every object of an upload (one that could not be handed to the retrainer)."""
    for key in store.list_keys(keys.upload_file(upload_id, "")):
        store.delete(key)


def read_request(store: Store, upload_id: str) -> dict[str, Any]:
    """An upload's request; ``NotFound`` for an id that is no upload."""
    try:
        request: dict[str, Any] = store.get_json(keys.upload_file(_check(upload_id), REQUEST))
    except ObjectNotFound:
        raise NotFound(f"upload {upload_id!r}: no such upload of this model") from None
    return request


def outcome(store: Store, upload_id: str) -> dict[str, Any] | None:
    """The registration's outcome, or None while it is pending."""
    try:
        done: dict[str, Any] = store.get_json(keys.upload_file(_check(upload_id), OUTCOME))
    except ObjectNotFound:
        return None
    return done


def finish(store: Store, upload_id: str, result: dict[str, Any]) -> dict[str, Any]:
    """Write the outcome (``state`` published or refused), then delete the model and the data:
    a refused or registered upload's files have no further use (a published version has its
    own copy, the data set its own). Only for a final outcome: a run that may succeed when
    retried writes none and keeps the files for the retry."""
    result = {**result, "finished_at": time.time()}
    store.put_json(keys.upload_file(_check(upload_id), OUTCOME), result)
    drop_files(store, upload_id)
    return result


def drop_files(store: Store, upload_id: str) -> None:
    """Delete the model and the data of an upload that has its outcome (again, if a run wrote
    the outcome and then lost the store)."""
    request = read_request(store, upload_id)
    for key in (model_key(upload_id, request), keys.upload_file(upload_id, DATA)):
        store.delete(key)


def status(store: Store, upload_id: str) -> dict[str, Any]:
    """What ``GET /admin/models/uploads/{id}`` answers: the state (pending, published,
    refused), the version or the reason, and when it was submitted."""
    request = read_request(store, upload_id)
    done = outcome(store, upload_id) or {"state": PENDING}
    return {
        "upload": upload_id,
        **done,
        "model_file": request.get("model_file"),
        "submitted_at": request.get("submitted_at"),
    }


def _check(upload_id: str) -> str:
    if not re.match(keys.UPLOAD_ID, upload_id or ""):
        raise NotFound(f"upload {upload_id[:40]!r}: no such upload (ids are 1-32 letters/digits)")
    return upload_id


__all__ = [
    "DATA_SUFFIXES",
    "DEFAULT_MAX_MB",
    "MODEL_FORMATS",
    "PENDING",
    "PUBLISHED",
    "REFUSED",
    "UploadRefused",
    "dataset_name",
    "drop_files",
    "finish",
    "model_format",
    "new_id",
    "outcome",
    "read_request",
    "remove",
    "safe_filename",
    "status",
    "store_upload",
]
