"""Reporter settings (env prefix ``MLPLATFORM_``)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr

from mlplatform_common.settings import DEV_WRITER_TOKEN, CommonSettings


class ReporterSettings(CommonSettings):
    """The scheduled Evidently report: window, drift test, where the numbers go."""

    pushgateway_url: str = "localhost:9091"
    """Prometheus Pushgateway (``host:port`` or URL) that receives the report's metrics;
    empty disables pushing."""

    writer_token: SecretStr | None = None
    """The serving API's writer token, which ``simulate`` sends with its labels
    (``/feedback``); in dev mode it falls back to the dev token."""

    push_timeout_seconds: float = 10.0
    """Timeout of the push to the Pushgateway."""

    window_hours: float = 24.0
    """The production window: rows logged in the last N hours. ``0`` means every row since the
    previous report (every row at all before the first report)."""

    feedback_lookback_hours: float = 168.0
    """How far back before the window start a labelled row's prediction is looked up, to recover
    the probabilities the model gave it (for ROC AUC)."""

    log_retention_days: float = 30.0
    """Days of the prediction log kept: each report then deletes the whole day partitions
    older than that (``0`` keeps every day). The labelled rows, which carry their features,
    and the reports are kept. Must cover the window and the feedback lookback (checked)."""

    log_compact: bool = True
    """Each report rewrites the prediction log's closed days (ended an hour ago or more) as
    ZSTD Parquet objects of at most ``log_compact_rows`` rows: the serving writes small,
    uncompressed ones to spare its core (bench/BENCHMARKS.md)."""

    log_compact_rows: int = Field(default=100_000, ge=1)
    """Rows per compacted object at most (one serving batch, if larger)."""

    drift_method: str = "ks"
    """Evidently stat test for every numerical column, fixed so scores mean the same thing from
    run to run (``ks``: two-sample Kolmogorov-Smirnov; the score is its p-value). Category
    columns always get chi-square at p < 0.05 (``report.DriftConfig`` says why)."""

    drift_threshold: float = 0.05
    """Per-column threshold of the stat test (for ``ks``: a column drifts when p < threshold)."""

    drift_share_threshold: float = 0.5
    """The data set drifts when at least this share of its columns drift (per space)."""

    min_drift_rows: int = 5
    """Below this many production rows in the window, drift is not computed (too few to test)."""

    min_labelled_rows: int = Field(default=30, ge=1)
    """Quality is reported only from this many labelled rows of the production version in the
    window (usable ones, for regression); below it the report gives the count and no numbers
    (one row predicted right would read as F1 = 1.000)."""

    schedule_minutes: float = 60.0
    """Interval of ``python -m mlplatform_reporter schedule`` (the CronJob has its own schedule)."""

    evidently_ui_url: str | None = None
    """Optional Evidently UI (``evidently ui``) URL; when set, each snapshot is added there."""

    evidently_project: str = "mlplatform"
    """Evidently UI project that receives the snapshots."""

    def retention_floor_days(self) -> float:
        """The shortest log retention that keeps every row a report reads: the window and the
        feedback lookback before it, plus the day partition a window starts in."""
        return (self.window_hours + self.feedback_lookback_hours) / 24 + 1

    def writer(self) -> str | None:
        """The configured writer token (the dev token in dev mode), or None."""
        return self.secret_or_dev(self.writer_token, DEV_WRITER_TOKEN)


@lru_cache
def get_settings() -> ReporterSettings:
    """Cached settings; tests call ``get_settings.cache_clear()`` after changing the env."""
    return ReporterSettings()
