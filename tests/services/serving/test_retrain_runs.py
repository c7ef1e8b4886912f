"""GET /retrain-runs: the retrainer's run records, newest first, a page at a time, on a local
store and on the real S3 server (SeaweedFS)."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from mlplatform_common import keys
from mlplatform_common.storage import Store
from mlplatform_serving.app import create_app
from tests.services.serving.conftest import assert_error, serving_settings

OUTCOMES = ("promoted", "rejected", "skipped", "locked", "held")


def _record(i: int) -> dict[str, object]:
    """A run record as the retrainer writes it (``retrain._write_run_record``)."""
    return {
        "at": f"2026-12-06T10:{i // 60:02d}:{i % 60:02d}+00:00",
        "outcome": OUTCOMES[i % len(OUTCOMES)],
        "reasons": [f"{50 + i} labelled rows since v1 (k=50)"],
        "version": f"v{i + 2}",
        "production": "v1",
        "new_rows": 50 + i,
        "metric": "f1",
        "direction": "higher is better",
        "gate": {"passed": i % 2 == 0, "candidate": 0.9 + i / 1000, "production": 0.95},
        "rollout": None,
        "followed": None,
    }


def _stamp(i: int) -> str:
    return f"20261206T10{i // 60:02d}{i % 60:02d}{i:06d}"


@pytest.fixture
def runs_store(store: Store) -> Store:
    """45 runs written out of order, and objects under the prefix that are no run record."""
    for i in [*range(20, 45), *range(20)]:
        store.put_json(keys.retrain_run(_stamp(i)), _record(i))
    store.put(keys.RETRAIN_RUNS + "notes.txt", b"not a run")
    return store


def test_paging_through_more_runs_than_one_page_newest_first(runs_store: Store) -> None:
    with TestClient(create_app(serving_settings(), runs_store)) as c:
        pages, before = [], None
        while True:
            params = {"limit": 20} | ({"before": before} if before else {})
            r = c.get("/retrain-runs", params=params)
            assert r.status_code == 200, r.text
            body = r.json()
            assert set(body) == {"runs", "next"}
            pages.append(body["runs"])
            before = body["next"]
            if before is None:
                break
        assert [len(p) for p in pages] == [20, 20, 5]
        ids = [run["id"] for page in pages for run in page]
        assert ids == [_stamp(i) for i in reversed(range(45))]  # every run once, newest first
        first = pages[0][0]
        assert first == {**_record(44), "id": _stamp(44)}  # the record as stored, plus its id
        # the default page is 20, and a cursor in the middle continues below it
        assert len(c.get("/retrain-runs").json()["runs"]) == 20
        r = c.get("/retrain-runs", params={"before": _stamp(3), "limit": 100}).json()
        assert [run["id"] for run in r["runs"]] == [_stamp(2), _stamp(1), _stamp(0)]
        assert r["next"] is None
        # exactly one page's worth left: no next page
        r = c.get("/retrain-runs", params={"before": _stamp(5), "limit": 5}).json()
        assert len(r["runs"]) == 5 and r["next"] is None


def test_a_record_the_retrainer_writes_is_listed(store: Store) -> None:
    # The stamp format of the retrainer's own writer is the one the cursor accepts.
    from mlplatform_retrainer.retrain import RunResult, _write_run_record

    _write_run_record(store, RunResult("rejected", ["drift share 0.6"], "v3", "v2", new_rows=7))
    with TestClient(create_app(serving_settings(), store)) as c:
        (run,) = c.get("/retrain-runs").json()["runs"]
        assert run["outcome"] == "rejected" and run["reasons"] == ["drift share 0.6"]
        assert run["version"] == "v3" and run["new_rows"] == 7
        assert re.match(keys.RETRAIN_RUN_STAMP, run["id"])
        r = c.get("/retrain-runs", params={"before": run["id"]})
        assert r.json() == {"runs": [], "next": None}


def test_an_empty_store_has_no_runs(store: Store) -> None:
    with TestClient(create_app(serving_settings(), store)) as c:
        r = c.get("/retrain-runs")
        assert r.status_code == 200, r.text
        assert r.json() == {"runs": [], "next": None}


def test_an_unreadable_record_is_skipped_not_an_error(store: Store) -> None:
    store.put_json(keys.retrain_run(_stamp(1)), _record(1))
    store.put(keys.retrain_run(_stamp(2)), b"{not json")
    store.put_json(keys.retrain_run(_stamp(3)), ["not", "an", "object"])
    with TestClient(create_app(serving_settings(), store)) as c:
        r = c.get("/retrain-runs")
        assert r.status_code == 200, r.text
        assert [run["id"] for run in r.json()["runs"]] == [_stamp(1)]


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"limit": 0}, "limit: Input should be greater than or equal to 1"),
        ({"limit": 101}, "limit: Input should be less than or equal to 100"),
        ({"limit": "ten"}, "limit: Input should be a valid integer"),
        ({"before": "yesterday"}, "before: String should match pattern"),
        ({"before": "../../models/v1/manifest"}, "before: String should match pattern"),
        ({"before": _stamp(1) + "0"}, "before: String should match pattern"),
    ],
)
def test_bad_parameters_are_422_naming_the_field(
    local_store: Store, params: dict[str, object], fragment: str
) -> None:
    with TestClient(create_app(serving_settings(), local_store)) as c:
        assert_error(c.get("/retrain-runs", params=params), 422, fragment)
