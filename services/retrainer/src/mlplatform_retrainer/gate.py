"""The quality gate: pure functions, no store, no network.

Both models are scored on the same holdout: the fixed test split of the reference data plus
the newest labelled rows. The candidate must not be worse by more than the tolerance on the
whole holdout *and* on its reference part alone. The second check matters when labels are
corrupted: the newest slice is then corrupted too and drags both scores down alike, while the
reference part still shows what the bad labels did to the candidate.

Scores are compared in the metric's direction (``quality.better``): higher is better for
scores (F1, R²), with an absolute tolerance; lower for errors (RMSE, MAE), with a relative one
(the error is in the target's units).

Tolerating a small loss at each step would let a line of versions slide down step by step, so
on the reference part the candidate must also come within the tolerance of the best score any
version of its line had there (``reference_best``, from the manifests' gates).

A registered model (``mlplatform register``) was fitted by its user on every reference row, the
test split too, so scoring it there measures its memory. Its line is gated on rows neither
model was fitted on (``HOLDOUT_LABELLED``): the holdout is the newest labelled rows alone, and
on the reference test split the candidate is compared with a clone of the same model fitted
on the reference rows outside that split (``BASELINE_REFIT``), which corrupted labels still
show against.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from mlplatform_common.quality import HIGHER_IS_BETTER, better

HOLDOUT_ALL = "reference test split and newest labelled rows"
HOLDOUT_LABELLED = "newest labelled rows"
"""A registered line's holdout: the rows no version of it was fitted on."""
BASELINE_PRODUCTION = "production"
BASELINE_REFIT = "a refit on the reference rows outside the test split"
"""A registered line's reference-part baseline (production has seen those rows)."""
MIN_LABELLED_HOLDOUT = 20
"""Fewer newest labelled rows than this cannot judge a registered line's refit: one row would
move its score by 5 % or more."""


@dataclass(frozen=True)
class GateResult:
    """Both models' scores on the same holdout and the decision."""

    promote: bool
    metric: str
    candidate: float
    current: float
    reference_candidate: float
    reference_current: float
    tolerance: float
    holdout_rows: int
    reference_best: float | None = None
    holdout: str = HOLDOUT_ALL
    """Which rows the holdout is (``HOLDOUT_ALL`` or a registered line's ``HOLDOUT_LABELLED``)."""
    reference_baseline: str = BASELINE_PRODUCTION
    """What the candidate is compared with on the reference part."""

    @property
    def direction(self) -> str:
        return "higher is better" if HIGHER_IS_BETTER[self.metric] else "lower is better"

    @property
    def reason(self) -> str:
        verb = "promoted" if self.promote else "rejected"
        best = (
            f", best of its line {self.reference_best:.4f}"
            if self.reference_best is not None
            and not better(self.metric, self.reference_current, self.reference_best)
            else ""
        )
        tolerance = (
            f"tolerance {self.tolerance}"
            if HIGHER_IS_BETTER[self.metric]
            else f"tolerance {self.tolerance:.0%} relative"
        )
        # A registered line's gate says which rows and which baseline it used.
        which = f" ({self.holdout})" if self.holdout != HOLDOUT_ALL else ""
        baseline = (
            f" (against {self.reference_baseline})"
            if self.reference_baseline != BASELINE_PRODUCTION
            else ""
        )
        return (
            f"{verb}: candidate {self.metric}={self.candidate:.4f} vs production "
            f"{self.current:.4f} on {self.holdout_rows} holdout rows{which}, "
            f"{self.reference_candidate:.4f} vs {self.reference_current:.4f}{best} on its "
            f"reference part{baseline} ({self.metric}: {self.direction}; {tolerance})"
        )


def decide(
    candidate: dict[str, dict[str, float]],
    current: dict[str, dict[str, float]],
    metric: str,
    tolerance: float,
    holdout_rows: int,
    reference_best: float | None = None,
    holdout: str = HOLDOUT_ALL,
    reference_baseline: str = BASELINE_PRODUCTION,
) -> GateResult:
    """Promote unless the candidate is worse than production by more than ``tolerance`` on
    the ``holdout`` or on its ``reference`` part (scores keyed by part, then metric), or worse
    than ``reference_best`` (the line's best on the reference part) by more than that; worse
    in the metric's direction (``quality.better``)."""
    ok = all(
        better(metric, candidate[part][metric], current[part][metric], tolerance)
        for part in ("holdout", "reference")
    )
    if reference_best is not None:
        ok = ok and better(metric, candidate["reference"][metric], reference_best, tolerance)
    return GateResult(
        promote=ok,
        metric=metric,
        candidate=candidate["holdout"][metric],
        current=current["holdout"][metric],
        reference_candidate=candidate["reference"][metric],
        reference_current=current["reference"][metric],
        tolerance=tolerance,
        holdout_rows=holdout_rows,
        reference_best=reference_best,
        holdout=holdout,
        reference_baseline=reference_baseline,
    )


def recent_split(
    X: pd.DataFrame, y: pd.Series, ts: pd.Series, share: float
) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame, pd.Series]:
    """Split labelled rows by time: the newest ``share`` is held out, the rest trains."""
    order = ts.sort_values(kind="stable").index
    n_holdout = round(len(order) * share)
    old, new = order[: len(order) - n_holdout], order[len(order) - n_holdout :]
    return X.loc[old], y.loc[old], X.loc[new], y.loc[new]
