"""The archived reports as time series, and where each version was promoted (plain logic).

Each report's ``summary.json`` is one point in time (its window's end); the Monitoring page
draws the frames built here. Nothing here touches Streamlit or the network.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from mlplatform_webapp import summary

QUALITY = {
    "classification": ("f1", "accuracy", "roc_auc"),
    "regression": ("mae", "rmse", "r2"),
}
"""The quality metrics the trend draws per task."""


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _parse_time(value: Any) -> datetime | None:
    number = _number(value)
    if number is not None:
        return datetime.fromtimestamp(number, UTC)
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        # a report id is a sortable stamp such as 20261206T101500 (seconds, maybe more digits)
        for fmt, width in (("%Y%m%dT%H%M%S", 15), ("%Y%m%dT%H%M", 13), ("%Y%m%d", 8)):
            try:
                return datetime.strptime(value[:width], fmt).replace(tzinfo=UTC)
            except ValueError:
                continue
    return None


def report_time(report_id: str, doc: Any) -> datetime | None:
    """When a report's window ends: ``window.until``, else the time in its id."""
    window = doc.get("window") if isinstance(doc, dict) else None
    if isinstance(window, dict):
        for key in ("until", "until_iso"):
            found = _parse_time(window.get(key))
            if found is not None:
                return found
    return _parse_time(report_id)


def points(entries: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per report, oldest first: ``at``, ``report``, ``version``, ``task`` and the
    numbers every trend needs (NaN where a report lacks one). Reports without a time are left
    out: they cannot be placed on a time axis."""
    rows: list[dict[str, Any]] = []
    for entry in entries:
        doc = entry.get("summary")
        report_id = str(entry.get("id"))
        at = report_time(report_id, doc)
        if at is None or not isinstance(doc, dict):
            continue
        drift = _dict(doc.get("drift"))
        quality = _dict(doc.get("quality"))
        counts = _dict(doc.get("rows"))
        flat = summary.numbers(doc)
        row: dict[str, Any] = {
            "at": at,
            "report": report_id,
            "version": doc.get("model_version"),
            "task": doc.get("task") or "classification",
            "predictions": _number(counts.get("production", counts.get("current"))),
            "labelled rows": _number(quality.get("rows", counts.get("labelled"))),
        }
        for space in ("embedding", "raw"):
            part = drift.get(space)
            row[f"drift share ({space})"] = (
                _number(part.get("share")) if isinstance(part, dict) else None
            )
        if row["drift share (embedding)"] is None:  # an older, flat summary
            row["drift share (embedding)"] = flat.get("Drift share")
        for metric in {*QUALITY["classification"], *QUALITY["regression"]}:
            row[metric] = _number(quality.get(metric))
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    return frame.sort_values("at", kind="stable").reset_index(drop=True)


def within(frame: pd.DataFrame, days: float | None, now: datetime | None = None) -> pd.DataFrame:
    """The rows of the last ``days`` (all of them for None), counted back from ``now`` (the
    newest report when not given, so an old archive still shows its last stretch)."""
    if frame.empty or days is None:
        return frame
    end = now or frame["at"].max()
    return frame[frame["at"] >= end - pd.Timedelta(days=days)].reset_index(drop=True)


def long(frame: pd.DataFrame, columns: list[str], name: str = "series") -> pd.DataFrame:
    """``at``, ``version``, ``name``, ``value`` for each present, non-empty column."""
    present = [c for c in columns if c in frame.columns and frame[c].notna().any()]
    if frame.empty or not present:
        return pd.DataFrame(columns=["at", "version", name, "value"])
    out = frame.melt(id_vars=["at", "version"], value_vars=present, var_name=name)
    return out.dropna(subset=["value"]).reset_index(drop=True)


def quality_metrics(frame: pd.DataFrame) -> list[str]:
    """The task's trended metrics that the frame has a value of (the newest report's task)."""
    if frame.empty:
        return []
    task = str(frame["task"].iloc[-1])
    return [m for m in QUALITY.get(task, QUALITY["classification"]) if frame[m].notna().any()]


def feature_scores(entries: list[dict[str, Any]], space: str = "raw") -> pd.DataFrame:
    """``at``, ``feature``, ``score`` (the drift test's p-value: lower is more drift) for each
    feature of each report's ``drift.<space>.scores``."""
    rows: list[dict[str, Any]] = []
    for entry in entries:
        doc = entry.get("summary")
        at = report_time(str(entry.get("id")), doc)
        part = ((doc or {}).get("drift") or {}).get(space) if isinstance(doc, dict) else None
        scores = part.get("scores") if isinstance(part, dict) else None
        if at is None or not isinstance(scores, dict):
            continue
        for feature, score in scores.items():
            value = _number(score)
            if value is not None:
                rows.append({"at": at, "feature": str(feature), "score": value})
    frame = pd.DataFrame(rows, columns=["at", "feature", "score"])
    return frame.sort_values(["at", "feature"], kind="stable").reset_index(drop=True)


def prediction_mix(entries: list[dict[str, Any]]) -> pd.DataFrame:
    """``at``, ``prediction``, ``share``: each report's predicted classes' shares, when its
    summary records them (``predictions.counts`` or ``predictions`` as class -> count)."""
    rows: list[dict[str, Any]] = []
    for entry in entries:
        doc = entry.get("summary")
        at = report_time(str(entry.get("id")), doc)
        found = doc.get("predictions") if isinstance(doc, dict) else None
        counts = found.get("counts", found) if isinstance(found, dict) else None
        if at is None or not isinstance(counts, dict):
            continue
        numbers = {str(k): _number(v) for k, v in counts.items()}
        total = sum(v for v in numbers.values() if v is not None)
        for label, count in numbers.items():
            if count is not None and total > 0:
                rows.append({"at": at, "prediction": label, "share": count / total})
    return pd.DataFrame(rows, columns=["at", "prediction", "share"])


def prediction_values(entries: list[dict[str, Any]]) -> pd.DataFrame:
    """``at``, ``version``, ``statistic``, ``value``: a regression's predicted values per report
    (the summary's ``predictions`` ``p10``, ``p50``, ``p90`` and ``mean``)."""
    rows: list[dict[str, Any]] = []
    for entry in entries:
        doc = entry.get("summary")
        at = report_time(str(entry.get("id")), doc)
        found = doc.get("predictions") if isinstance(doc, dict) else None
        if at is None or not isinstance(found, dict) or "counts" in found:
            continue
        for statistic in ("p10", "p50", "p90", "mean"):
            value = _number(found.get(statistic))
            if value is not None:
                version = str(doc.get("model_version", "")) if isinstance(doc, dict) else ""
                rows.append({"at": at, "version": version, "statistic": statistic, "value": value})
    return pd.DataFrame(rows, columns=["at", "version", "statistic", "value"])


def promotions(models: dict[str, Any], runs: list[dict[str, Any]] | None = None) -> pd.DataFrame:
    """``at``, ``version``: when each version went into production. A promoted retrain run's
    time wins (it is when the alias moved); else the version's ``promoted_at`` or, lacking
    that, its ``created_at``."""
    found: dict[str, datetime] = {}
    for manifest in models.get("versions") or []:
        if not isinstance(manifest, dict) or not manifest.get("version"):
            continue
        at = _parse_time(manifest.get("promoted_at")) or _parse_time(manifest.get("created_at"))
        if at is not None:
            found[str(manifest["version"])] = at
    for run in runs or []:
        if isinstance(run, dict) and run.get("outcome") == "promoted" and run.get("version"):
            at = _parse_time(run.get("at"))
            if at is not None:
                found[str(run["version"])] = at
    frame = pd.DataFrame(
        [{"at": at, "version": v} for v, at in found.items()], columns=["at", "version"]
    )
    return frame.sort_values("at", kind="stable").reset_index(drop=True)
