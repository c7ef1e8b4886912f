"""Traffic simulator: replay held-out rows against the serving API, with optional drift.

The transforms are pure functions on DataFrames (``holdout``, ``shift_scale`` for numbers,
``shift_categories`` for a category's mix, ``rebalance`` for classes, ``noisy_targets`` for
label noise); ``replay`` is the HTTP loop. It reads nothing itself: the caller gives it the
version's task and typed schema (``version_of`` reads them from ``GET /model``). It sends
``POST /predict`` with ``{"instances": [...]}`` (categories as text, missing cells as ``null``)
at a chosen rate and, for a chosen fraction of rows, the true label (a class, or a
regression's number) to ``POST /feedback`` after a delay, as a user confirming or correcting a
prediction would.
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
from mlplatform_common.schema import (
    CATEGORY,
    CLASSIFICATION,
    NUMBER,
    REGRESSION,
    category_value,
    infer_task,
    is_category,
)

logger = logging.getLogger("mlplatform.reporter")

# The retrainer's defaults (TrainConfig): the same stratified test split, so the rows replayed
# by default are rows the first model never trained on.
HOLDOUT_SIZE = 0.2
FEEDBACK_RETRIES = 5
"""Times a label answered 409 with ``Retry-After`` (not logged yet) is sent again."""
HOLDOUT_SEED = 42


# -- pure transforms ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Version:
    """What the simulator needs of the served version: its task, typed schema and target."""

    task: str
    schema: list[dict[str, Any]]
    target: str | None = None
    dataset: str | None = None
    """The name of the data set it was trained on (``data/<name>.csv`` when shipped)."""

    @property
    def features(self) -> list[str]:
        return [f["name"] for f in self.schema]


def version_of(card: dict[str, Any]) -> Version:
    """The version from its card (``GET /model``, a manifest); a card from before tasks is
    classification, and a spec without a type a number."""
    schema = [
        {**f, "dtype": f.get("dtype") or NUMBER}
        for f in card.get("feature_schema") or []
        if isinstance(f, dict) and "name" in f
    ]
    task = REGRESSION if card.get("task") == REGRESSION else CLASSIFICATION
    training = card.get("training_data")
    dataset = training.get("dataset") if isinstance(training, dict) else None
    return Version(task=task, schema=schema, target=card.get("target"), dataset=dataset)


def frame_version(frame: pd.DataFrame, target: str | None, task: str | None = None) -> Version:
    """A version read from a CSV alone (no API to ask): numbers and text columns, the task
    inferred from the target as training infers it."""
    schema = [
        {
            "name": c,
            "dtype": NUMBER if pd.api.types.is_numeric_dtype(frame[c]) else CATEGORY,
            "nullable": bool(frame[c].isna().any()),
        }
        for c in frame.columns
        if c != target
    ]
    if task is None:
        task = infer_task(frame[target])[0] if target is not None else CLASSIFICATION
    return Version(task=task, schema=schema, target=target)


def holdout(
    frame: pd.DataFrame,
    target: str,
    size: float = HOLDOUT_SIZE,
    seed: int = HOLDOUT_SEED,
    task: str = CLASSIFICATION,
) -> pd.DataFrame:
    """The held-out part of a training CSV (the retrainer's test split): stratified by class
    for classification, random for regression."""
    strata = frame[target] if task == CLASSIFICATION else None
    _, test = train_test_split(frame, test_size=size, stratify=strata, random_state=seed)
    return test


def records(frame: pd.DataFrame, schema: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as the API's JSON takes them: a number as a float, a category as its text (as the
    schema spells it: ``3``, not ``3.0``), a missing cell as ``None`` (``null``)."""
    columns: dict[str, list[Any]] = {}
    for spec in schema:
        col = frame[spec["name"]]
        missing = col.isna().to_numpy()
        values: list[Any]
        if is_category(spec):
            values = [category_value(to_builtin(v)) for v in col]
        else:
            values = [float(v) for v in pd.to_numeric(col, errors="coerce")]
        columns[spec["name"]] = [None if m else v for v, m in zip(values, missing, strict=True)]
    names = list(columns)
    return [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]


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
    text = [f for f in features if not pd.api.types.is_numeric_dtype(frame[f])]
    if text:
        raise ValueError(f"cannot shift or scale categories {text}: drift their mix instead")
    base = frame if stats is None else stats
    mean = base[features].mean()
    std = base[features].std(ddof=0).replace(0.0, 1.0)
    out = frame.copy()
    out[features] = mean + (frame[features] - mean) * scale + shift * std
    return out


def shift_categories(
    frame: pd.DataFrame, feature: str, toward: str, strength: float, seed: int = 0
) -> pd.DataFrame:
    """Category drift: each present value of ``feature`` becomes ``toward`` with probability
    ``strength``, so its share rises from ``p`` to ``p + (1 - p) * strength``; missing cells
    stay missing (their rate is another drift). ``toward`` may be a value the version never
    saw (served as unknown).

    Args:
        frame: rows to transform (other columns are returned unchanged).
        feature: the category column.
        toward: the value the mix moves toward.
        strength: 0 (no change) to 1 (every present value becomes ``toward``).
        seed: random seed.
    """
    if feature not in frame.columns:
        raise ValueError(f"cannot drift unknown feature {feature!r}")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"category drift strength must be within 0 and 1, got {strength}")
    rng = np.random.default_rng(seed)
    out = frame.copy()
    col = out[feature].astype(object)
    flip = col.notna().to_numpy() & (rng.random(len(out)) < strength)
    col[flip] = toward
    out[feature] = col
    return out


def parse_category_drift(text: str) -> tuple[str, str]:
    """``"island=Dream"`` -> ``("island", "Dream")``."""
    feature, sep, value = text.partition("=")
    if not sep or not feature.strip() or not value.strip():
        raise ValueError(f"category drift {text!r}: expected feature=value")
    return feature.strip(), value.strip()


def noisy_targets(
    y: pd.Series, task: str, noise: float, seed: int = 0, classes: list[Any] | None = None
) -> list[Any]:
    """True labels as feedback sends them, with label noise: regression adds normal noise of
    ``noise`` standard deviations of ``y`` to each number; classification gives a share
    ``noise`` of rows another class, picked at random. ``noise=0`` returns ``y`` as it is
    (numbers as floats for regression)."""
    if noise < 0:
        raise ValueError(f"label noise must be non-negative, got {noise}")
    rng = np.random.default_rng(seed)
    if task == REGRESSION:
        values = pd.to_numeric(y, errors="raise").to_numpy(dtype=float)
        if noise > 0:
            values = values + rng.normal(0.0, noise * float(np.std(values)), len(values))
        return [float(v) for v in values]
    truths = [to_builtin(v) for v in y]
    pool = list(classes) if classes is not None else sorted(set(truths), key=str)
    flips = rng.random(len(truths)) < min(noise, 1.0)
    out = []
    for truth, flip in zip(truths, flips, strict=True):
        others = [c for c in pool if str(c) != str(truth)]
        out.append(others[rng.integers(len(others))] if flip and others else truth)
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

    task: str = CLASSIFICATION
    rows: int = 0
    predicted: int = 0
    errors: int = 0
    feedback_sent: int = 0
    feedback_errors: int = 0
    correct: int = 0
    scored: int = 0
    """Regression answers whose true value is known (``abs_error`` sums over them)."""
    abs_error: float = 0.0
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
        if self.task == REGRESSION:
            return None
        return self.correct / self.predicted if self.predicted else None

    @property
    def mae(self) -> float | None:
        """A regression's mean absolute error against the true values (not the noisy ones)."""
        return self.abs_error / self.scored if self.scored else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "rows": self.rows,
            "predicted": self.predicted,
            "errors": self.errors,
            "feedback_sent": self.feedback_sent,
            "feedback_errors": self.feedback_errors,
            "accuracy": self.accuracy,
            "mae": self.mae,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "rate_per_second": round(self.rate, 3),
            "labels": dict(self.labels),
            "model_versions": dict(self.model_versions),
            "backup": self.backup,
        }

    def render(self) -> str:
        lines = [
            f"sent {self.rows} rows in {self.elapsed_seconds:.1f}s ({self.rate:.1f}/s): "
            f"{self.predicted} predicted, {self.errors} failed",
            f"feedback: {self.feedback_sent} sent, {self.feedback_errors} failed",
        ]
        if self.task == REGRESSION:
            mae = f"{self.mae:.4g}" if self.mae is not None else "-"
            lines += [
                f"mean absolute error against the true values: {mae}",
                f"model versions: {dict(self.model_versions)}  backup answers: {self.backup}",
            ]
        else:
            acc = f"{self.accuracy:.3f}" if self.accuracy is not None else "-"
            lines += [
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
    version: Version | None = None,
    label_noise: float = 0.0,
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
        version: the served version's task and typed schema (default: read from ``rows``);
            rows are sent as its schema says (categories as text, missing cells as null).
        label_noise: feedback's noise (``noisy_targets``): a regression's true value moves
            by normal noise of this many standard deviations; a class is wrong this often.
    """
    if target is None and feedback_fraction > 0:
        raise ValueError("feedback needs the true labels: name the target column")
    if version is None:
        version = frame_version(rows[[*features, *([target] if target else [])]], target)
    by_name = {f["name"]: f for f in version.schema}
    schema = [by_name.get(f, {"name": f, "dtype": NUMBER}) for f in features]
    regression = version.task == REGRESSION
    summary = ReplaySummary(task=version.task)
    rng = np.random.default_rng(seed)
    with_feedback = rng.random(len(rows)) < feedback_fraction
    pending: list[tuple[float, int, str, Any]] = []  # (due, seq, prediction_id, target)
    sent = records(rows, schema)
    truths: list[Any] = [None] * len(rows)
    feedback_targets: list[Any] = [None] * len(rows)
    if target is not None:
        truths = noisy_targets(rows[target], version.task, 0.0)
        feedback_targets = noisy_targets(rows[target], version.task, label_noise, seed + 1)
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
        task = bar.add_task("rows", total=len(sent), status="")
        for first in range(0, len(sent), batch_size):
            if rate > 0:
                due = start + first / rate
                while time.monotonic() < due:
                    send_feedback(now_only=True)
                    sleep(min(0.05, max(0.0, due - time.monotonic())))
            batch = sent[first : first + batch_size]
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
                    summary.model_versions[str(answer.get("model_version"))] += 1
                    summary.backup += bool(answer.get("backup"))
                    truth = truths[i]
                    if regression:
                        value = answer.get("value")
                        if truth is not None and isinstance(value, int | float):
                            summary.scored += 1
                            summary.abs_error += abs(float(value) - float(truth))
                    else:
                        summary.labels[str(answer.get("label"))] += 1
                        if truth is not None and str(answer.get("label")) == str(truth):
                            summary.correct += 1
                    if with_feedback[i]:
                        heapq.heappush(
                            pending,
                            (
                                time.monotonic() + feedback_delay,
                                i,
                                answer["prediction_id"],
                                to_builtin(feedback_targets[i]),
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
