"""The report archive: the newest complete report, the list, a report's files."""

from __future__ import annotations

import pytest

from mlplatform_common import keys
from mlplatform_common.errors import NotFound
from mlplatform_common.reports import ArchivedReport, ReportArchive
from mlplatform_common.storage import Store


def _report(store: Store, rid: str, **summary: object) -> None:
    ReportArchive(store).write(rid, f"<html>{rid}</html>", {"id": rid, **summary})


def test_no_report_yet(store: Store) -> None:
    archive = ReportArchive(store)
    assert archive.latest() is None
    assert archive.newest(10) == []


def test_the_newest_complete_report_skips_one_without_its_summary(store: Store) -> None:
    _report(store, "20261101T000000000Z", drift=0.1)
    _report(store, "20261102T000000000Z", drift=0.2)
    # the reporter writes the HTML first: a report caught in between has no summary yet
    store.put(keys.report_file("20261103T000000000Z", "report.html"), b"<html></html>")
    archive = ReportArchive(store)
    assert archive.latest() == {"id": "20261102T000000000Z", "drift": 0.2}
    assert [r.id for r in archive.newest(10)] == ["20261102T000000000Z", "20261101T000000000Z"]


def test_reports_come_newest_first_up_to_the_limit(store: Store) -> None:
    for day in (3, 1, 2):  # written out of order: the ids sort by time
        _report(store, f"202611{day:02d}T000000000Z", n=day)
    newest = ReportArchive(store).newest(2)
    assert newest == [
        ArchivedReport("20261103T000000000Z", {"id": "20261103T000000000Z", "n": 3}),
        ArchivedReport("20261102T000000000Z", {"id": "20261102T000000000Z", "n": 2}),
    ]


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b"[1, 2]", b'"text"'])
def test_a_malformed_summary_is_skipped(store: Store, body: bytes) -> None:
    _report(store, "20261101T000000000Z", n=1)
    store.put(keys.report_file("20261102T000000000Z", "report.html"), b"<html></html>")
    store.put(keys.report_file("20261102T000000000Z", "summary.json"), body)
    archive = ReportArchive(store)
    assert archive.latest() == {"id": "20261101T000000000Z", "n": 1}
    assert [r.id for r in archive.newest(5)] == ["20261101T000000000Z"]


def test_a_report_file_is_read_and_a_missing_one_is_not_found(store: Store) -> None:
    _report(store, "20261101T000000000Z")
    archive = ReportArchive(store)
    assert archive.file("20261101T000000000Z", "report.html") == b"<html>20261101T000000000Z</html>"
    with pytest.raises(NotFound, match="does not exist"):
        archive.file("20261109T000000000Z", "report.html")
    with pytest.raises(NotFound, match="does not exist"):
        archive.file("../../etc", "passwd")  # not a key at all
