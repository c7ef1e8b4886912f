"""``/metrics/system`` and ``/metrics/kpis`` shaped for the System page (plain logic)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def tiles(metrics: dict[str, Any], kpis: dict[str, Any]) -> dict[str, str]:
    """Label -> shown value of the headline numbers each answer has."""
    out: dict[str, str] = {}
    window = _number(metrics.get("window_seconds"))
    span = f" (last {window:g} s)" if window is not None else ""
    rps = _number(metrics.get("throughput_rps"))
    if rps is not None:
        out[f"Throughput{span}"] = f"{rps:.2f} req/s"
    for key, label in (("error_rate", "Error rate (5xx)"), ("client_error_rate", "Refused (4xx)")):
        value = _number(metrics.get(key))
        if value is not None:
            out[label] = f"{value:.2%}"
    p95 = _number((metrics.get("latency_seconds") or {}).get("p95"))
    if p95 is not None:
        out["p95 latency"] = f"{p95 * 1000:.1f} ms"
    predictions = _number(kpis.get("predictions"))
    if predictions is not None:
        out["Predictions"] = f"{predictions:.0f}"
    for key, label in (("mean_confidence", "Mean confidence"), ("backup_share", "Backup share")):
        value = _number(kpis.get(key))
        if value is not None:
            out[label] = f"{value:.3f}" if key == "mean_confidence" else f"{value:.2%}"
    labelled = _number(kpis.get("labelled_since_training"))
    if labelled is not None:
        out["Labelled since training"] = f"{labelled:.0f}"
    return out


def latency(metrics: dict[str, Any]) -> pd.DataFrame:
    """``percentile``, ``ms`` for p50, p95, p99 (empty before the first timed request)."""
    found = metrics.get("latency_seconds")
    rows = []
    if isinstance(found, dict) and (_number(metrics.get("requests")) or 0) > 0:
        for name, seconds in found.items():
            value = _number(seconds)
            if value is not None:
                rows.append({"percentile": str(name), "ms": value * 1000})
    return pd.DataFrame(rows, columns=["percentile", "ms"])


def by_version(kpis: dict[str, Any]) -> pd.DataFrame:
    """``version``, ``predictions``: the predictions each version made since the process
    started (``predictions_by_version``), in version order."""
    found = kpis.get("predictions_by_version")
    rows = []
    if isinstance(found, dict):
        for version, count in found.items():
            value = _number(count)
            if value is not None:
                rows.append({"version": str(version), "predictions": int(value)})
    frame = pd.DataFrame(rows, columns=["version", "predictions"])
    # v2 before v10: by the number after the "v"
    order = frame["version"].str.extract(r"(\d+)$")[0].astype(float)
    return (
        frame.assign(_n=order)
        .sort_values(["_n", "version"])
        .drop(columns="_n")
        .reset_index(drop=True)
    )
