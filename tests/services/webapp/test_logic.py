"""The plain modules: API client errors, batch chunking, summary reading, sample rows."""

from __future__ import annotations

import httpx
import pytest

from mlplatform_webapp import batch, samples, summary
from mlplatform_webapp.api_client import ApiClient, ApiRejected, ApiUnavailable
from tests.conftest import free_port
from tests.services.webapp.conftest import (
    FLAT_SUMMARY,
    NESTED_SUMMARY,
    PARTIAL_NOTE,
    PARTIAL_SUMMARY,
)


def test_client_turns_a_down_api_into_one_line() -> None:
    client = ApiClient(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(ApiUnavailable) as err:
        client.model()
    assert "cannot be reached" in err.value.message and "\n" not in err.value.message


@pytest.mark.parametrize(
    ("status", "body", "kind", "text"),
    [
        (
            503,
            {"error": "no model loaded: v9 is missing", "type": "ModelNotReady"},
            ApiUnavailable,
            "unavailable: no model loaded",
        ),
        (
            500,
            "Internal Server Error\nTraceback (most recent call last):",
            ApiUnavailable,
            "failed (HTTP 500): Internal Server Error",
        ),
        (
            422,
            {"error": "instances[0]: unknown feature 'x'", "type": "InvalidInput"},
            ApiRejected,
            "unknown feature 'x'",
        ),
        (
            401,
            {"error": "missing or wrong bearer token", "type": "Unauthorized"},
            ApiRejected,
            "wrong bearer token",
        ),
    ],
)
def test_client_maps_status_codes_to_one_line(status, body, kind, text) -> None:  # type: ignore[no-untyped-def]
    def answer(request: httpx.Request) -> httpx.Response:
        if isinstance(body, dict):
            return httpx.Response(status, json=body)
        return httpx.Response(status, text=body)

    client = ApiClient("http://api.test", transport=httpx.MockTransport(answer))
    with pytest.raises(kind) as err:
        client.model()
    assert text in err.value.message
    assert "Traceback" not in err.value.message and err.value.status == status


def test_client_lets_the_api_name_a_non_finite_value(serving) -> None:
    row = samples.held_out().drop(columns="target").iloc[0].to_dict()
    with pytest.raises(ApiRejected) as err:
        ApiClient(serving.url).predict_one({**row, "mean_area": float("nan")})
    assert "mean_area" in err.value.message and "finite" in err.value.message


def test_batch_chunks_fall_back_to_rows_only_where_refused(serving) -> None:
    rows = samples.held_out().drop(columns="target").head(7).to_dict(orient="records")
    rows[1] = {**rows[1], "mean_texture": "abc"}
    rows[5] = {k: v for k, v in rows[5].items() if k != "worst_area"}
    calls: list[int] = []

    class Counting(ApiClient):
        def predict(self, rows):  # type: ignore[no-untyped-def]
            calls.append(len(rows))
            return super().predict(rows)

    progress: list[tuple[int, int]] = []
    answers, reasons, stopped = batch.predict_rows(
        Counting(serving.url), rows, chunk_rows=3, progress=lambda n, t: progress.append((n, t))
    )
    assert stopped is None
    assert [a is not None for a in answers] == [True, False, True, True, True, False, True]
    assert "mean_texture" in (reasons[1] or "") and "worst_area" in (reasons[5] or "")
    assert (reasons[1] or "").startswith("row")
    # chunks [0-2] refused -> 3 single rows; [3-5] refused -> 3 single rows; [6] in one call
    assert calls == [3, 1, 1, 1, 3, 1, 1, 1, 1]
    assert progress == [(3, 7), (6, 7), (7, 7)]


def test_batch_marks_the_rest_when_the_api_goes_away() -> None:
    rows = [{"a": 1.0}] * 5
    answers, reasons, stopped = batch.predict_rows(
        ApiClient(f"http://127.0.0.1:{free_port()}", timeout=2), rows, chunk_rows=2
    )
    assert stopped is not None and "cannot be reached" in stopped
    assert answers == [None] * 5 and all("unavailable" in (r or "") for r in reasons)


def test_read_upload_keeps_target_and_names_problems() -> None:
    features = ["a", "b"]
    up = batch.read_upload(b"a,b,target,note\n1,2,0,x\n,zz,1,y\n", features)
    assert up.rows == [{"a": 1.0, "b": 2.0}, {"a": None, "b": "zz"}]
    assert up.has_target and up.ignored == ["note"]
    with pytest.raises(batch.BatchFileError, match="lacks the feature column 'b'"):
        batch.read_upload(b"a\n1\n", features)
    with pytest.raises(batch.BatchFileError, match="no rows"):
        batch.read_upload(b"a,b\n", features)


def test_summary_numbers_from_either_shape() -> None:
    nested = summary.numbers(NESTED_SUMMARY)
    assert nested["Drift share"] == 0.3 and nested["Drifted features"] == 3
    # the raw features' drift too (the tiles showed the embedding's alone)
    assert nested["Drift share (raw)"] == 0.1 and nested["Drifted raw features"] == 3
    assert nested["F1"] == 0.915 and nested["Recall"] == 0.92 and nested["Accuracy"] == 0.9
    assert nested["Production rows"] == 120 and nested["Labelled rows"] == 40
    flat = summary.numbers(FLAT_SUMMARY)
    assert flat == {"Drift share": 0.5, "Drifted features": 2, "F1": 0.8, "Rows": 50}
    assert summary.numbers(None) == {} and summary.numbers({"drift": "n/a"}) == {}
    assert summary.notes(NESTED_SUMMARY) == ["window of 24 hours"]


def test_a_partial_quality_section_shows_one_line_saying_why() -> None:
    # Issue 22: a window of one class leaves some numbers undefined; the page says why once.
    partial = summary.numbers(PARTIAL_SUMMARY)
    assert partial["Accuracy"] == 1.0 and partial["Drift share"] == 0.2
    assert "F1" not in partial and "Precision" not in partial  # not shown as 0
    assert summary.quality_line(PARTIAL_SUMMARY) == "Q" + PARTIAL_NOTE[1:]
    assert summary.notes(PARTIAL_SUMMARY) == ["balanced accuracy (mean per-class recall) = 1.0000"]
    empty = {"quality": None, "quality_status": "empty", "quality_note": "no labelled rows"}
    assert summary.quality_line(empty) == "No labelled rows"
    complete = {**NESTED_SUMMARY, "quality_status": "complete", "quality_note": None}
    assert summary.quality_line(complete) is None and summary.quality_line(NESTED_SUMMARY) is None


def test_random_rows_come_from_the_held_out_split_or_the_statistics() -> None:
    schema = [{"name": "mean_radius"}, {"name": "worst_area"}]
    row, target, source = samples.random_row(schema)
    held = samples.held_out()
    assert (
        (held["mean_radius"] == row["mean_radius"]) & (held["worst_area"] == row["worst_area"])
    ).any()
    assert target in (0, 1) and "held-out" in source
    other = [{"name": "x", "mean": 5.0, "std": 100.0, "q01": 1.0, "q99": 9.0}]
    row, target, source = samples.random_row(other)
    assert 1.0 <= row["x"] <= 9.0 and target is None and "statistics" in source
