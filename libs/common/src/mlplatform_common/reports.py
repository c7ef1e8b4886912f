"""The report archive: ``reports/<id>/report.html``, then ``summary.json``.

The reporter writes a report's HTML first and its summary last, so a report without a readable
summary (still being written, or broken) is not complete: every reader skips it. Report ids
sort by time (the reporter's ``report_id``), so the newest is the last id.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from mlplatform_common import keys
from mlplatform_common.errors import InvalidInput, NotFound, ObjectNotFound
from mlplatform_common.storage import Store

HTML = "report.html"
SUMMARY = "summary.json"


@dataclass(frozen=True)
class ArchivedReport:
    """A complete report: its id and its summary."""

    id: str
    summary: dict[str, Any]


class ReportArchive:
    """The reports archived in a store: written by the reporter, read by the retrainer (the
    latest report's triggers) and serving (the list, a report's files)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def write(self, report_id: str, html: str, summary: dict[str, Any]) -> None:
        """Archive one report: the HTML, then the summary (the marker of a complete report)."""
        self.store.put(keys.report_file(report_id, HTML), html.encode(), "text/html")
        self.store.put_json(keys.report_file(report_id, SUMMARY), summary)

    def _summary(self, report_id: str) -> dict[str, Any] | None:
        try:
            summary = self.store.get_json(keys.report_file(report_id, SUMMARY))
        except (ObjectNotFound, ValueError):  # not written yet, or not JSON
            return None
        return summary if isinstance(summary, dict) else None

    def complete(self) -> Iterator[ArchivedReport]:
        """The complete reports, newest first; each summary is read when it is reached."""
        for report_id in reversed(self.store.list_dirs(keys.REPORTS)):
            summary = self._summary(report_id)
            if summary is not None:
                yield ArchivedReport(report_id, summary)

    def newest(self, limit: int) -> list[ArchivedReport]:
        """Up to ``limit`` complete reports, newest first."""
        out: list[ArchivedReport] = []
        for report in self.complete():
            if len(out) >= limit:
                break
            out.append(report)
        return out

    def latest(self) -> dict[str, Any] | None:
        """The summary of the newest complete report, or None."""
        return next((report.summary for report in self.complete()), None)

    def file(self, report_id: str, filename: str) -> bytes:
        """One file of a report; ``NotFound`` when the report or the file does not exist (or
        the id is no key at all)."""
        try:
            return self.store.get(keys.report_file(report_id, filename))
        except (ObjectNotFound, InvalidInput):
            raise NotFound(f"report {report_id!r:.80} does not exist") from None
