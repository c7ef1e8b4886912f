"""The retrainer's run records (``state/retrain-runs/<stamp>.json``), read newest first a page
at a time: serving's ``GET /retrain-runs``."""

from __future__ import annotations

import logging
from typing import Any

from mlplatform_common import keys
from mlplatform_common.errors import ObjectNotFound
from mlplatform_common.storage import Store

logger = logging.getLogger("mlplatform.common")


def newest_runs(
    store: Store, limit: int, before: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """Up to ``limit`` run records older than the stamp ``before`` (all when None), newest
    first, each with its stamp as ``id``; and the cursor of the next page (the last stamp
    given), or None when no older record is left.

    Stamps sort by time, so a page is a filter on the listed names before any record is read.
    A record that vanished or is not a JSON object is skipped (logged), not an error: one bad
    object must not hide every run."""
    stamps = sorted(
        (s for s in map(keys.retrain_run_stamp, store.list_keys(keys.RETRAIN_RUNS)) if s),
        reverse=True,
    )
    if before is not None:
        stamps = [s for s in stamps if s < before]
    runs: list[dict[str, Any]] = []
    for stamp in stamps:
        if len(runs) == limit:
            return runs, runs[-1]["id"]
        try:
            record = store.get_json(keys.retrain_run(stamp))
        except (ObjectNotFound, ValueError) as exc:
            logger.warning("retrain run %s skipped: not readable (%s)", stamp, exc)
            continue
        if not isinstance(record, dict):
            logger.warning("retrain run %s skipped: not a JSON object", stamp)
            continue
        runs.append({**record, "id": stamp})
    return runs, None
