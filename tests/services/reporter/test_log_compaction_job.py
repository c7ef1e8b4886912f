"""The report job compacts the prediction log's closed days (issue 25, item 4)."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from mlplatform_common import datalog, keys
from mlplatform_common.registry import LoadedModel
from mlplatform_common.storage import Store
from mlplatform_reporter import job
from tests.services.reporter.conftest import log_traffic, reporter_settings


@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_a_report_compacts_closed_days_and_reads_the_same_rows_after(
    store: Store, model: LoadedModel, heldout: pd.DataFrame
) -> None:
    now = time.time()
    for i, start in enumerate(range(0, 40, 8)):  # five batches two days ago
        log_traffic(store, model, heldout.iloc[start : start + 8], ts=now - 2 * 86_400 + i)
    log_traffic(store, model, heldout.iloc[40:50], ts=now - 60)  # today
    settings = reporter_settings(window_hours=72, log_retention_days=0)
    before = datalog.read_predictions(store).reset_index(drop=True)
    old_day = keys.predictions_day(now - 2 * 86_400)
    assert len(store.list_keys(old_day)) == 5

    first = job.run(settings, store=store, now=now)
    assert first.compacted == {"days": 1, "batches": 5, "objects": 1, "leftovers": 0}
    [compacted] = store.list_keys(old_day)
    assert keys.is_compacted(compacted)
    assert not any(keys.is_compacted(k) for k in store.list_keys(keys.predictions_day(now)))
    after = datalog.read_predictions(store).reset_index(drop=True)
    pd.testing.assert_frame_equal(after[before.columns], before)

    again = job.run(settings, store=store, now=now + 1)
    assert again.compacted is not None and again.compacted["days"] == 0
    assert again.result.rows["production"] == first.result.rows["production"] == 50
    off = job.run(reporter_settings(window_hours=72, log_compact=False), store=store, now=now + 2)
    assert off.compacted is None
