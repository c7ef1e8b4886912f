"""The store layout: keys made by ``keys`` are taken apart by ``keys`` again."""

from __future__ import annotations

from mlplatform_common import datalog, keys
from mlplatform_common.storage import Store


def test_a_feedback_key_gives_back_its_id_its_day_and_its_time() -> None:
    ts = 1_780_000_000.123  # 2026-05-28 UTC
    key = keys.feedback_row(ts, "4f0c" * 8)
    assert key == "production/feedback/dt=2026-05-28/001780000000123-" + "4f0c" * 8 + ".json"
    assert keys.feedback_id(key) == "4f0c" * 8
    assert keys.written_at(key) == 1_780_000_000.123
    assert key.startswith(keys.feedback_day(ts)) and key.startswith(keys.FEEDBACK)


def test_a_stored_feedback_row_is_found_under_its_key_and_its_id(store: Store) -> None:
    key = datalog.write_feedback(store, {"feedback_id": "abc123", "target": "1"}, ts=86_400.5)
    assert keys.feedback_id(key) == "abc123"
    assert keys.written_at(key) == 86_400.5
    assert store.get_json(key)["feedback_id"] == "abc123"
    assert datalog.feedback_keys(store) == [key]
    assert datalog.feedback_keys(store, since=86_400.5) == []


def test_a_predictions_batch_key_sorts_by_time_within_its_day() -> None:
    first = keys.predictions_batch(5.0, "aaaa")
    later = keys.predictions_batch(60.0, "0000")
    assert first == "production/predictions/dt=1970-01-01/000000000005000-aaaa.parquet"
    assert first < later and later.startswith(keys.predictions_day(5.0))
    assert keys.written_at(later) == 60.0
    # an empty suffix is the name every object written after the time sorts after
    assert keys.predictions_day(5.0) + keys.object_name(5.0, "") < first
    assert keys.predictions_day(86_400.0) == "production/predictions/dt=1970-01-02/"


def test_a_foreign_object_name_has_no_time() -> None:
    assert keys.written_at("production/feedback/dt=2026-01-01/notes.txt") == 0.0


def test_a_model_file_key_gives_back_its_version() -> None:
    key = keys.model_file("v12", "manifest.json")
    assert key == "models/v12/manifest.json"
    assert keys.model_version_of(key) == "v12"


def test_every_fixed_key_lives_under_its_area() -> None:
    assert keys.retrain_run("20260101T000000000000") == (
        "state/retrain-runs/20260101T000000000000.json"
    )
    assert keys.RETRAIN_STATS == "state/retrain-stats.json"
    assert keys.dataset("breast_cancer") == "datasets/breast_cancer/raw.csv"
    assert keys.dataset("x", "meta.json").startswith(keys.DATASETS)
    assert keys.report_file("r1", "summary.json") == "reports/r1/summary.json"
    assert keys.trigger("k") == "state/triggers/k.json"


def test_a_day_partition_parses_back_to_its_utc_midnight() -> None:
    assert keys.partition_start(keys.PREDICTIONS + "dt=1970-01-02/x.parquet") == 86_400.0
    assert keys.partition_start(keys.predictions_batch(86_400.0 + 5, "b")) == 86_400.0
    assert keys.partition_start(keys.feedback_row(86_400.0 + 5, "f"), keys.FEEDBACK) == 86_400.0
    assert keys.partition_start(keys.PREDICTIONS + "dt=1970-13-01/x.parquet") is None
    assert keys.partition_start(keys.PREDICTIONS + "README") is None
    assert keys.partition_start(keys.FEEDBACK + "dt=1970-01-02/x.json") is None  # not the log
