"""``python -m mlplatform_retrainer``: train, run (retrain if triggered), rollback, promote,
pin, unpin, schedule, batch (score a file in the store)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

from mlplatform_common.errors import InvalidInput, MLPlatformError
from mlplatform_common.log import configure_logging
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import open_store
from mlplatform_retrainer.batch import DEFAULT_CHUNK_ROWS, run_batch
from mlplatform_retrainer.job import (
    describe,
    train_from_file,
    train_from_store,
    train_from_url,
)
from mlplatform_retrainer.retrain import promote, rollback, run, unpin
from mlplatform_retrainer.rollout import rollout_local
from mlplatform_retrainer.settings import RetrainerSettings, get_settings

logger = logging.getLogger("mlplatform.retrainer")

DEFAULT_DATA = Path("data/breast_cancer.csv")


def _train(settings: RetrainerSettings, args: argparse.Namespace) -> int:
    if args.if_missing:
        registry = ModelRegistry(open_store(settings, ensure=True), settings.require_signing_key())
        alias = registry.production()
        if alias:
            print(f"model {alias['version']} is already in production at {registry.store.url}")
            return 0
    if args.task:
        settings = settings.model_copy(update={"task": args.task})
    if args.dataset and (args.data_url or args.target or args.data != DEFAULT_DATA):
        raise InvalidInput("--dataset: a stored data set has its target; omit --data/--target")
    if args.data_url and args.data != DEFAULT_DATA:
        raise InvalidInput("--data-url: give either --data or --data-url")
    if args.dataset:
        published = train_from_store(settings, args.dataset, promote=not args.no_promote)
    elif args.data_url:
        published = train_from_url(
            settings,
            args.data_url,
            args.target,
            args.name,
            timeout=args.timeout,
            promote=not args.no_promote,
        )
    else:
        published = train_from_file(settings, args.data, args.target, promote=not args.no_promote)
    store = open_store(settings)
    print(describe(published, store.url))
    if published.promoted and settings.resolved_rollout() == "local":
        # Like a retrain, tell a local serving (make dev) to load it. Best effort: none may
        # be running yet (make dev trains v1 before it starts the services).
        version = published.version
        signature = ModelRegistry(store, settings.require_signing_key()).signature(version)
        try:
            rollout_local(settings, version, signature)
            print(f"serving at {settings.serving_url} now serves {version}")
        except MLPlatformError as exc:
            print(f"serving not told ({exc.message[:160]}); it loads {version} when it starts")
    return 0


def _run(settings: RetrainerSettings, args: argparse.Namespace) -> int:
    result = run(settings, force=args.force or settings.force)
    print(result.describe())
    return 0


def _rollback(settings: RetrainerSettings, args: argparse.Namespace) -> int:
    alias = rollback(settings)
    was, rollout = alias["rolled_back_from"], alias["rollout"]
    print(f"production is {alias['version']} again (was {was}); rollout: {rollout}")
    print("it holds: retrains keep their candidates for review until `unpin`")
    return 0


def _promote(settings: RetrainerSettings, args: argparse.Namespace) -> int:
    alias = promote(settings, args.version, pin=args.pin)
    held = " and held (retrains keep their candidates until `unpin`)" if args.pin else ""
    print(f"production is {alias['version']}{held}; rollout: {alias['rollout']}")
    return 0


def _unpin(settings: RetrainerSettings, args: argparse.Namespace) -> int:
    alias = unpin(settings)
    print(f"production {alias['version']} is no longer held: retrains may promote again")
    return 0


def _batch(settings: RetrainerSettings, args: argparse.Namespace) -> int:
    done = run_batch(
        settings,
        args.input,
        args.output,
        args.version,
        args.chunk_rows,
        progress=lambda line: print(line, flush=True),  # a line as it happens, in a pod too
    )
    print(
        f"scored {done['rows']} rows of {done['input']} with model {done['version']} "
        f"({done['engine']}): {done['output']}; {len(done['log_keys'])} prediction log batches"
    )
    return 0


def _schedule(settings: RetrainerSettings, args: argparse.Namespace) -> int:
    from apscheduler.schedulers.blocking import BlockingScheduler

    def check() -> None:
        try:
            logger.info(run(settings).describe())
        except MLPlatformError as exc:
            logger.error("retrain check failed: %s: %s", exc.type, exc.message)

    scheduler = BlockingScheduler()
    scheduler.add_job(
        check, "interval", seconds=settings.schedule_seconds, max_instances=1, coalesce=True
    )
    logger.info("checking the retrain triggers every %.0fs", settings.schedule_seconds)
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        scheduler.start()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlplatform_retrainer")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a model from a CSV and publish it")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="training CSV")
    p.add_argument(
        "--dataset", help="train on this data set of the model's store instead of --data"
    )
    p.add_argument(
        "--data-url",
        help="download a CSV or Parquet file over HTTP(S) (at most MLPLATFORM_DATASET_MAX_MB) "
        "and train on it instead of --data",
    )
    p.add_argument("--name", help="with --data-url: the data set's name (default: the file's)")
    p.add_argument(
        "--timeout", type=float, default=60.0, help="with --data-url: seconds without a byte"
    )
    p.add_argument("--target", help="target column (default: from <csv>.meta.json, else 'target')")
    p.add_argument(
        "--task",
        choices=["classification", "regression"],
        help="default: MLPLATFORM_TASK, else <csv>.meta.json, else read from the target "
        "(text or at most 20 distinct whole numbers: classification; other numbers: regression)",
    )
    p.add_argument(
        "--no-promote", action="store_true", help="publish without moving the production alias"
    )
    p.add_argument(
        "--if-missing", action="store_true", help="do nothing if a model is already in production"
    )
    p.set_defaults(handler=_train)
    p = sub.add_parser("run", help="retrain if a trigger fires (k labelled rows, drift, quality)")
    p.add_argument("--force", action="store_true", help="retrain even if no trigger fires")
    p.set_defaults(handler=_run)
    p = sub.add_parser(
        "rollback", help="move production back to the previous version (holds until unpin)"
    )
    p.set_defaults(handler=_rollback)
    for command, pin, text in (
        ("promote", False, "put a version in production by hand (lifts a hold)"),
        ("pin", True, "put a version in production and hold it there until unpin"),
    ):
        p = sub.add_parser(command, help=text)
        p.add_argument("version", help="a published version, e.g. v3")
        p.set_defaults(handler=_promote, pin=pin)
    p = sub.add_parser("unpin", help="lift a rollback's or a pin's hold: retrains may promote")
    p.set_defaults(handler=_unpin)
    p = sub.add_parser(
        "batch", help="score a CSV or Parquet file in the store (batch transform), logged as batch"
    )
    p.add_argument("--input", required=True, help="key of a .csv or .parquet in the model's store")
    p.add_argument(
        "--output", help="key to write (default: <input without extension>.predictions.<ext>)"
    )
    p.add_argument("--version", help="a published version, e.g. v3 (default: production)")
    p.add_argument(
        "--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS, help="rows scored per chunk"
    )
    p.set_defaults(handler=_batch)
    p = sub.add_parser("schedule", help="run the trigger check every MLPLATFORM_SCHEDULE_SECONDS")
    p.set_defaults(handler=_schedule)
    args = parser.parse_args(argv)

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        code: int = args.handler(settings, args)
        return code
    except MLPlatformError as exc:
        logger.error("%s: %s", exc.type, exc.message)
        return 1


if __name__ == "__main__":
    sys.exit(main())
