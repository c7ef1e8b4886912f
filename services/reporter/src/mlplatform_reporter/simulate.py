"""Traffic simulator: replay held-out rows against the serving API, with optional drift.

The transforms are pure functions on DataFrames (``holdout``, ``shift_scale``,
``rebalance``); ``replay`` is the HTTP loop. It sends ``POST /predict`` with
``{"instances": [...]}`` at a chosen rate and, for a chosen fraction of rows, the true label to
``POST /feedback`` after a delay, as a user confirming or correcting a prediction would.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sklearn.model_selection import train_test_split

from mlplatform_common.quality import to_builtin

logger = logging.getLogger("mlplatform.reporter")

# The retrainer's defaults (TrainConfig): the same stratified test split, so the rows replayed
# by default are rows the first model never trained on.
HOLDOUT_SIZE = 0.2
FEEDBACK_RETRIES = 5
"""Times a label answered 409 with ``Retry-After`` (not logged yet) is sent again."""
HOLDOUT_SEED = 42


# -- pure transforms ---------------------------------------------------------------------------


def holdout(
    frame: pd.DataFrame, target: str, size: float = HOLDOUT_SIZE, seed: int = HOLDOUT_SEED
) -> pd.DataFrame:
    """The stratified held-out part of a training CSV (the retrainer's test split)."""
    _, test = train_test_split(frame, test_size=size, stratify=frame[target], random_state=seed)
    return test


def shift_scale(
    frame: pd.DataFrame,
    features: list[str],
    shift: float = 0.0,
    scale: float = 1.0,
    stats: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Covariate drift: ``x' = mean + (x - mean) * scale + shift * std`` on chosen features.

    Args:
        frame: rows to transform (other columns are returned unchanged).
        features: the columns to drift.
        shift: how far to move each feature's mean, in its standard deviations.
        scale: factor on each feature's spread around its mean.
        stats: rows whose mean and standard deviation define the units (default: ``frame``).
    """
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise ValueError(f"cannot drift unknown features {missing}")
    base = frame if stats is None else stats
    mean = base[features].mean()
    std = base[features].std(ddof=0).replace(0.0, 1.0)
    out = frame.copy()
    out[features] = mean + (frame[features] - mean) * scale + shift * std
    return out


def rebalance(
    frame: pd.DataFrame, target: str, shares: dict[str, float], n: int, seed: int = 0
) -> pd.DataFrame:
    """Label drift: resample ``n`` rows (with replacement) so classes have the given shares.

    Args:
        frame: rows to draw from.
        target: the label column.
        shares: label (as a string) -> share; classes left out share what remains equally.
        n: how many rows to return.
        seed: random seed.
    """
    labels = [str(v) for v in frame[target]]
    classes = sorted(set(labels))
    unknown = set(shares) - set(classes)
    if unknown:
        raise ValueError(f"class balance names unknown classes {sorted(unknown)}; have {classes}")
    given = sum(shares.values())
    if given > 1.0 + 1e-9 or any(s < 0 for s in shares.values()):
        raise ValueError(f"class shares must be non-negative and sum to at most 1: {shares}")
    rest = [c for c in classes if c not in shares]
    full = {**shares, **{c: (1.0 - given) / len(rest) for c in rest}} if rest else dict(shares)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, [full[c] / sum(full.values()) for c in classes])
    label_arr = np.asarray(labels)
    picks = [
        rng.choice(np.flatnonzero(label_arr == c), size=k, replace=True)
        for c, k in zip(classes, counts, strict=True)
        if k
    ]
    order = rng.permutation(np.concatenate(picks)) if picks else np.array([], dtype=int)
    return frame.iloc[order].reset_index(drop=True)


def parse_shares(text: str) -> dict[str, float]:
    """``"1=0.9,0=0.1"`` -> ``{"1": 0.9, "0": 0.1}``."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        label, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"class balance {part!r}: expected label=share")
        out[label.strip()] = float(value)
    return out


# -- the HTTP replay loop ----------------------------------------------------------------------


@dataclass
class ReplaySummary:
    """What a replay did."""

    rows: int = 0
    predicted: int = 0
    errors: int = 0
    feedback_sent: int = 0
    feedback_errors: int = 0
    correct: int = 0
    elapsed_seconds: float = 0.0
    labels: Counter[str] = field(default_factory=Counter)
    model_versions: Counter[str] = field(default_factory=Counter)
    backup: int = 0
    error_samples: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.predicted / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.predicted if self.predicted else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "predicted": self.predicted,
            "errors": self.errors,
            "feedback_sent": self.feedback_sent,
            "feedback_errors": self.feedback_errors,
            "accuracy": self.accuracy,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "rate_per_second": round(self.rate, 3),
            "labels": dict(self.labels),
            "model_versions": dict(self.model_versions),
            "backup": self.backup,
        }

    def render(self) -> str:
        acc = f"{self.accuracy:.3f}" if self.accuracy is not None else "-"
        lines = [
            f"sent {self.rows} rows in {self.elapsed_seconds:.1f}s ({self.rate:.1f}/s): "
            f"{self.predicted} predicted, {self.errors} failed",
            f"feedback: {self.feedback_sent} sent, {self.feedback_errors} failed",
            f"accuracy against the true labels: {acc}",
            f"labels: {dict(self.labels)}  model versions: {dict(self.model_versions)}"
            f"  backup answers: {self.backup}",
        ]
        lines += [f"error: {e}" for e in self.error_samples]
        return "\n".join(lines)


def _record_error(summary: ReplaySummary, what: str) -> None:
    if len(summary.error_samples) < 5:
        summary.error_samples.append(what)
    logger.warning("%s", what)


def replay(
    client: httpx.Client,
    rows: pd.DataFrame,
    features: list[str],
    target: str | None,
    *,
    rate: float = 10.0,
    batch_size: int = 1,
    feedback_fraction: float = 0.0,
    feedback_delay: float = 0.0,
    seed: int = 0,
    progress: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> ReplaySummary:
    """Send ``rows`` to ``POST /predict`` at ``rate`` rows per second; send feedback for a
    fraction of them ``feedback_delay`` seconds after their prediction.

    Args:
        client: an ``httpx.Client`` whose ``base_url`` is the serving API.
        rows: the rows to send, in order.
        features: the feature columns to send.
        target: the column with the true label (None: no feedback, no accuracy).
        rate: rows per second (0: as fast as the API answers).
        batch_size: rows per request.
        feedback_fraction: share of rows whose true label is sent.
        feedback_delay: seconds between a prediction and its feedback.
        seed: picks which rows get feedback.
        progress: show a progress bar (rich) in a terminal.
        sleep: the pause function (tests may speed it up).
    """
    if target is None and feedback_fraction > 0:
        raise ValueError("feedback needs the true labels: name the target column")
    summary = ReplaySummary()
    rng = np.random.default_rng(seed)
    with_feedback = rng.random(len(rows)) < feedback_fraction
    pending: list[tuple[float, int, str, Any]] = []  # (due, seq, prediction_id, target)
    records = rows[features].to_dict(orient="records")
    truths = list(rows[target]) if target is not None else [None] * len(rows)
    start = time.monotonic()

    def send_feedback(now_only: bool) -> None:
        while pending and (not now_only or pending[0][0] <= time.monotonic()):
            due, seq, prediction_id, truth = heapq.heappop(pending)
            wait = due - time.monotonic()
            if wait > 0:
                sleep(wait)
            try:
                r = client.post("/feedback", json={"prediction_id": prediction_id, "target": truth})
                retry_after = r.headers.get("retry-after", "")
                if r.status_code in (200, 201):
                    summary.feedback_sent += 1
                elif retry_after.isdigit() and seq < FEEDBACK_RETRIES * len(rows):
                    # Not logged by the replica that predicted it yet (409), or over the key's
                    # rate (429): nothing was stored.
                    again = (time.monotonic() + int(retry_after), seq + len(rows))
                    heapq.heappush(pending, (*again, prediction_id, truth))
                else:
                    summary.feedback_errors += 1
                    _record_error(summary, f"feedback {r.status_code}: {r.text[:200]}")
            except httpx.HTTPError as exc:
                summary.feedback_errors += 1
                _record_error(summary, f"feedback: {type(exc).__name__}: {exc}")

    columns = [
        TextColumn("[bold]simulating[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("rows", total=len(records), status="")
        for first in range(0, len(records), batch_size):
            if rate > 0:
                due = start + first / rate
                while time.monotonic() < due:
                    send_feedback(now_only=True)
                    sleep(min(0.05, max(0.0, due - time.monotonic())))
            batch = records[first : first + batch_size]
            summary.rows += len(batch)
            try:
                response = client.post("/predict", json={"instances": batch})
                ok = response.status_code == 200
                if not ok:
                    summary.errors += len(batch)
                    _record_error(summary, f"predict {response.status_code}: {response.text[:200]}")
            except httpx.HTTPError as exc:
                ok = False
                summary.errors += len(batch)
                _record_error(summary, f"predict: {type(exc).__name__}: {exc}")
            if ok:
                predictions = response.json()["predictions"]
                for offset, answer in enumerate(predictions):
                    i = first + offset
                    summary.predicted += 1
                    summary.labels[str(answer.get("label"))] += 1
                    summary.model_versions[str(answer.get("model_version"))] += 1
                    summary.backup += bool(answer.get("backup"))
                    truth = truths[i]
                    if truth is not None and str(answer.get("label")) == str(truth):
                        summary.correct += 1
                    if with_feedback[i]:
                        heapq.heappush(
                            pending,
                            (
                                time.monotonic() + feedback_delay,
                                i,
                                answer["prediction_id"],
                                to_builtin(truth),
                            ),
                        )
            send_feedback(now_only=True)
            bar.update(
                task,
                advance=len(batch),
                status=f"{summary.errors} errors, {summary.feedback_sent} feedback",
            )
        bar.update(task, status=f"waiting for {len(pending)} feedback")
        send_feedback(now_only=False)
    summary.elapsed_seconds = time.monotonic() - start
    logger.info("simulation done: %s", summary.as_dict())
    return summary
