"""Retrain runs and the line of versions, shaped for tables (plain logic, no Streamlit)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _fmt(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None if value is None else str(value)
    return f"{value:.4f}"


def gate_line(gate: Any) -> str | None:
    """The gate's decision in one line: both scores on the same holdout, side by side."""
    if not isinstance(gate, dict):
        return None
    verb = "promote" if gate.get("promote") else "reject"
    which = f" ({gate['holdout']})" if gate.get("holdout") else ""  # runs before it: unsaid
    return (
        f"{verb}: candidate {_fmt(gate.get('candidate'))} vs production "
        f"{_fmt(gate.get('current'))} on {gate.get('holdout_rows', '?')} holdout rows{which} "
        f"(tolerance {_fmt(gate.get('tolerance'))})"
    )


def run_row(run: dict[str, Any]) -> dict[str, Any]:
    """One run as a table row: when, what triggered it, the outcome, the gate's numbers side
    by side, the reasons, and the version it produced."""
    gate = _dict(run.get("gate"))
    reasons = run.get("reasons")
    reasons = [str(r) for r in reasons] if isinstance(reasons, list) else []
    # the numbers first, the long texts last: a narrow page still shows the gate's scores
    return {
        "at": run.get("at"),
        "outcome": run.get("outcome"),
        "version": run.get("version"),
        "metric": run.get("metric") or gate.get("metric"),
        "candidate": gate.get("candidate"),
        "production score": gate.get("current"),
        "tolerance": gate.get("tolerance"),
        "holdout rows": gate.get("holdout_rows"),
        "production after": run.get("followed") or run.get("production"),
        "new labelled rows": run.get("new_rows"),
        "trigger": "; ".join(reasons) or None,
        "gate": gate_line(run.get("gate")),
        "id": run.get("id"),
    }


def runs_table(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """The runs as rows, in the order given (the API answers newest first)."""
    columns = list(run_row({}).keys())
    return pd.DataFrame([run_row(r) for r in runs if isinstance(r, dict)], columns=columns)


def lineage(models: dict[str, Any]) -> pd.DataFrame:
    """Each version with its data set, its parent and when it was made, oldest first."""
    rows = []
    for m in models.get("versions") or []:
        if not isinstance(m, dict):
            continue
        data = _dict(m.get("training_data"))
        rows.append(
            {
                "version": m.get("version"),
                "parent": m.get("parent"),
                "dataset": data.get("dataset"),
                "created_at": m.get("created_at"),
                "estimator": m.get("estimator"),
            }
        )
    frame = pd.DataFrame(rows, columns=["version", "parent", "dataset", "created_at", "estimator"])
    return frame.sort_values("created_at", kind="stable", na_position="first").reset_index(
        drop=True
    )


def compare_metrics(a: dict[str, Any], b: dict[str, Any]) -> pd.DataFrame:
    """Split and metric of either version side by side, with the difference (b - a)."""
    rows = []
    ma = _dict(a.get("metrics"))
    mb = _dict(b.get("metrics"))
    for split in sorted(set(ma) | set(mb)):
        sa = _dict(ma.get(split))
        sb = _dict(mb.get(split))
        for metric in sorted(set(sa) | set(sb)):
            va, vb = sa.get(metric), sb.get(metric)
            diff = (
                float(vb) - float(va)
                if isinstance(va, int | float) and isinstance(vb, int | float)
                else None
            )
            rows.append(
                {
                    "split": split,
                    "metric": metric,
                    str(a.get("version")): va,
                    str(b.get("version")): vb,
                    "difference": diff,
                }
            )
    return pd.DataFrame(rows)


def _schema(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for f in manifest.get("feature_schema") or []:
        if isinstance(f, dict) and f.get("name"):
            out[str(f["name"])] = f
    return out


def compare_schemas(a: dict[str, Any], b: dict[str, Any]) -> pd.DataFrame:
    """Each feature of either version: its type (and whether it may be missing) in each, and
    what changed (added, removed, type, nullable, categories)."""
    sa, sb = _schema(a), _schema(b)
    va, vb = str(a.get("version")), str(b.get("version"))
    rows = []
    for name in [*sa, *(n for n in sb if n not in sa)]:
        fa, fb = sa.get(name), sb.get(name)
        change = []
        if fa is None:
            change.append("added")
        elif fb is None:
            change.append("removed")
        else:
            for key in ("dtype", "nullable"):
                if fa.get(key) != fb.get(key):
                    change.append(key)
            if sorted(map(str, fa.get("categories") or [])) != sorted(
                map(str, fb.get("categories") or [])
            ):
                change.append("categories")
        rows.append(
            {
                "feature": name,
                va: _describe(fa),
                vb: _describe(fb),
                "change": ", ".join(change) or "same",
            }
        )
    return pd.DataFrame(rows)


def _describe(feature: dict[str, Any] | None) -> str | None:
    if feature is None:
        return None
    kind = str(feature.get("dtype") or "number")
    return kind + (", nullable" if feature.get("nullable") else "")


def domain(values: list[float], pad: float = 0.15) -> tuple[float, float]:
    """An axis range around the values with a margin of ``pad`` of their spread, so versions a
    few thousandths apart look apart (a 0-1 axis makes 0.951 and 0.958 one bar height)."""
    found = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not found:
        return (0.0, 1.0)
    low, high = min(found), max(found)
    margin = (high - low) * pad or max(abs(high) * 0.01, 1e-3)
    return (low - margin, high + margin)
