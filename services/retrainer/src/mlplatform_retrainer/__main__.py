"""``python -m mlplatform_retrainer``: train the first model (``train``) and, later, retrain."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mlplatform_common.errors import MLPlatformError
from mlplatform_common.log import configure_logging
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import open_store

from mlplatform_retrainer.job import describe, train_from_file
from mlplatform_retrainer.settings import get_settings

logger = logging.getLogger("mlplatform.retrainer")

DEFAULT_DATA = Path("data/breast_cancer.csv")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlplatform_retrainer")
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train a model from a CSV and publish it")
    p_train.add_argument("--data", type=Path, default=DEFAULT_DATA, help="training CSV")
    p_train.add_argument(
        "--target", help="target column (default: from <csv>.meta.json, else 'target')"
    )
    p_train.add_argument(
        "--no-promote", action="store_true", help="publish without moving the production alias"
    )
    p_train.add_argument(
        "--if-missing", action="store_true", help="do nothing if a model is already in production"
    )
    args = parser.parse_args(argv)

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        if args.command == "train":
            if args.if_missing:
                registry = ModelRegistry(
                    open_store(settings, ensure=True), settings.require_signing_key()
                )
                alias = registry.production()
                if alias:
                    print(
                        f"model {alias['version']} is already in production at {registry.store.url}"
                    )
                    return 0
            published = train_from_file(
                settings, args.data, args.target, promote=not args.no_promote
            )
            print(describe(published, open_store(settings).url))
        return 0
    except MLPlatformError as exc:
        logger.error("%s: %s", exc.type, exc.message)
        return 1


if __name__ == "__main__":
    sys.exit(main())
