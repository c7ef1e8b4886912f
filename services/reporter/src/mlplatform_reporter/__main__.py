"""``python -m mlplatform_reporter run|schedule|simulate``.

- ``run``: one report (the CronJob's command); on failure one line and the exit code of
  ``errors.exit_code``: 2 when a retry cannot change it (a bad setting), 1 when one may.
- ``schedule``: a report now and then every ``MLPLATFORM_SCHEDULE_MINUTES`` (``make dev``).
- ``simulate``: replay held-out rows against the serving API, with optional drift and feedback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pandas as pd
from pydantic import ValidationError

from mlplatform_common.errors import MLPlatformError, exit_code
from mlplatform_common.log import configure_logging, set_model_version
from mlplatform_common.settings import setting_error
from mlplatform_reporter import job
from mlplatform_reporter.settings import ReporterSettings, get_settings
from mlplatform_reporter.simulate import (
    Version,
    frame_version,
    holdout,
    parse_category_drift,
    parse_shares,
    rebalance,
    replay,
    shift_categories,
    shift_scale,
    version_of,
)

logger = logging.getLogger("mlplatform.reporter")

DEFAULT_DATA = Path("data/breast_cancer.csv")


def run_once(settings: ReporterSettings) -> int:
    """One report; on failure log it and return ``errors.exit_code``'s code, so a Kubernetes
    Job fails (at once on 2; a retry may succeed on 1)."""
    try:
        outcome = job.run(settings)
    except MLPlatformError as exc:
        logger.error("report failed: %s: %s", exc.type, exc.message)
        return exit_code(exc)
    except Exception as exc:
        logger.exception("report failed")
        return exit_code(exc)
    set_model_version(outcome.result.model_version)
    print(job.describe(outcome))
    return 0


def schedule(settings: ReporterSettings) -> int:
    """Run a report now and then on an interval until interrupted."""
    from apscheduler.schedulers.blocking import BlockingScheduler

    scheduler = BlockingScheduler(timezone="UTC")
    scheduler.add_job(
        run_once,
        "interval",
        args=[settings],
        minutes=settings.schedule_minutes,
        next_run_time=datetime.now(UTC),
        max_instances=1,
        coalesce=True,
        id="report",
    )
    logger.info("reporting every %g minutes (Ctrl-C stops)", settings.schedule_minutes)
    # Kubernetes and process managers stop with SIGTERM: leave as cleanly as on Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        scheduler.start()
    if scheduler.running:
        scheduler.shutdown(wait=False)
    logger.info("scheduler stopped")
    return 0


def served_version(url: str, timeout: float) -> Version | None:
    """The served version's task and typed schema (``GET /model``); None when the API has no
    model to describe yet (the rows' own types are used then)."""
    try:
        response = httpx.get(url.rstrip("/") + "/model", timeout=timeout)
    except httpx.HTTPError as exc:
        logger.warning("cannot read the served version (%s): using the CSV's types", exc)
        return None
    if response.status_code != 200:
        logger.warning("GET /model answered %d: using the CSV's types", response.status_code)
        return None
    return version_of(response.json())


def simulate(args: argparse.Namespace, settings: ReporterSettings) -> int:
    """Replay rows of a CSV against the serving API (labels with the writer token)."""
    served = served_version(args.url, args.timeout)
    if args.data is None:
        # the shipped CSV of the version's data set (make train DATASET=...), else breast cancer
        shipped = DEFAULT_DATA.parent / f"{served.dataset if served else ''}.csv"
        args.data = shipped if served and served.dataset and shipped.is_file() else DEFAULT_DATA
    frame = pd.read_csv(args.data)
    # the target: as asked, else the version's, else the shipped data set's name
    wanted = args.target or (served.target if served else None) or "target"
    target = wanted if wanted in frame.columns else None
    if args.target and target is None:
        logger.error("target column %r is not in %s", args.target, args.data)
        return 2
    version = served or frame_version(frame, target)
    features = [c for c in frame.columns if c != target]
    if served is not None:
        absent = [f for f in served.features if f not in frame.columns]
        if absent:
            logger.error("%s lacks the served version's features %s", args.data, absent)
            return 2
        features = served.features
    logger.info("the served version is a %s model of %d features", version.task, len(features))
    if not args.all_rows and target is not None:
        frame = holdout(frame, target, task=version.task)
    stats = frame
    if args.class_balance:
        if target is None:
            logger.error("--class-balance needs the target column")
            return 2
        frame = rebalance(
            frame, target, parse_shares(args.class_balance), args.rows or len(frame), args.seed
        )
    elif args.rows:
        frame = frame.sample(args.rows, replace=args.rows > len(frame), random_state=args.seed)
    else:
        frame = frame.sample(frac=1.0, random_state=args.seed)
    if args.shift or args.scale != 1.0:
        numbers = [f["name"] for f in version.schema if f.get("dtype") != "category"]
        drifted = args.drift_features.split(",") if args.drift_features else numbers
        frame = shift_scale(frame, drifted, args.shift, args.scale, stats=stats)
    for spec in args.category_drift:
        feature, value = parse_category_drift(spec)
        frame = shift_categories(frame, feature, value, args.category_strength, args.seed)
    logger.info("replaying %d rows from %s to %s", len(frame), args.data, args.url)
    token = settings.writer()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=args.url, timeout=args.timeout, headers=headers) as client:
        summary = replay(
            client,
            frame,
            features,
            target,
            rate=args.rate,
            batch_size=args.batch_size,
            feedback_fraction=args.feedback_fraction if target else 0.0,
            feedback_delay=args.feedback_delay,
            seed=args.seed,
            progress=sys.stderr.isatty(),
            version=version,
            label_noise=args.label_noise,
        )
    print(summary.render())
    return 0 if summary.predicted else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlplatform_reporter")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="build one report, archive it and push its metrics")
    sub.add_parser("schedule", help="report now, then every MLPLATFORM_SCHEDULE_MINUTES")
    p = sub.add_parser("simulate", help="replay held-out rows against the serving API")
    p.add_argument("--url", default="http://localhost:8080", help="serving API base URL")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="CSV of rows to replay (default: data/<the served version's data set>.csv)",
    )
    p.add_argument(
        "--target", default="", help="label column (default: the served version's, or target)"
    )
    p.add_argument("--all-rows", action="store_true", help="replay every row, not the holdout")
    p.add_argument("--rows", type=int, default=0, help="rows to send (default: all chosen)")
    p.add_argument("--rate", type=float, default=10.0, help="rows per second (0: no limit)")
    p.add_argument("--batch-size", type=int, default=1, help="rows per /predict request")
    p.add_argument("--shift", type=float, default=0.0, help="move features by N std devs")
    p.add_argument("--scale", type=float, default=1.0, help="multiply features' spread")
    p.add_argument("--drift-features", default="", help="comma-separated (default: all)")
    p.add_argument("--class-balance", default="", help="label shares, e.g. 1=0.9,0=0.1")
    p.add_argument(
        "--category-drift",
        action="append",
        default=[],
        metavar="FEATURE=VALUE",
        help="move a category's mix toward a value, e.g. island=Dream (repeatable)",
    )
    p.add_argument(
        "--category-strength",
        type=float,
        default=0.5,
        help="share of a drifted category's values that become the value (0-1)",
    )
    p.add_argument(
        "--label-noise",
        type=float,
        default=0.0,
        help="feedback noise: std devs of a regression target, or share of wrong classes",
    )
    p.add_argument("--feedback-fraction", type=float, default=0.0, help="share of rows labelled")
    p.add_argument("--feedback-delay", type=float, default=0.0, help="seconds before feedback")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--timeout", type=float, default=10.0, help="HTTP timeout in seconds")
    args = parser.parse_args(argv)

    try:
        settings = get_settings()
    except ValidationError as exc:  # before logging is configured: the line goes to stderr
        logger.error("InvalidInput: %s", setting_error(exc))
        return exit_code(exc)
    configure_logging(settings.log_level, settings.log_format)
    if args.command == "run":
        return run_once(settings)
    if args.command == "schedule":
        return schedule(settings)
    try:
        return simulate(args, settings)
    except (ValueError, OSError, httpx.HTTPError) as exc:
        logger.error("simulation failed: %s", exc)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
