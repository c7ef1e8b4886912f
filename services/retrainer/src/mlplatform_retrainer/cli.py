"""``mlplatform`` (and ``python -m mlplatform_retrainer``): the platform's one command line.

A thin layer: every command hands its options to a function of ``job``, ``retrain`` or
``register`` and prints what it did. Each takes ``--name`` (default ``MLPLATFORM_MODEL_NAME``,
else ``mlplatform``): the named model it works on. A failed request is one line on stderr,
never a traceback, and the exit code of ``errors.exit_code``: 2 when a retry cannot change it
(bad input or settings, as click's usage errors), 1 when one may (the store did not answer).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from pydantic import ValidationError

from mlplatform_common import actions, keys
from mlplatform_common.errors import (
    ConfigurationError,
    InvalidInput,
    MLPlatformError,
    exit_code,
)
from mlplatform_common.lock import LockHeld, StoreLock
from mlplatform_common.log import configure_logging
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.schema import TASKS
from mlplatform_common.settings import setting_error
from mlplatform_common.storage import open_store
from mlplatform_retrainer.settings import RetrainerSettings, get_settings

if TYPE_CHECKING:  # the command line imports training only for the commands that train
    from mlplatform_retrainer.job import Published

logger = logging.getLogger("mlplatform.retrainer")

DEFAULT_DATA = Path("data/breast_cancer.csv")
NAME_HELP = "the named model (default: MLPLATFORM_MODEL_NAME, else 'mlplatform')"


def _settings(name: str | None) -> RetrainerSettings:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    if name is not None:
        settings = settings.model_copy(update={"model_name": keys.check_model_name(name)})
    return settings


def _refusals(command: Callable[..., None]) -> Callable[..., None]:
    """A failed request (bad settings, bad input, a store that says no or does not answer) as
    one line and the exit code of ``errors.exit_code``: a Job fails at once on 2, retries on 1."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except MLPlatformError as exc:
            logger.error("%s: %s", exc.type, exc.message)
            sys.exit(exit_code(exc))
        except ValueError as exc:  # a model name (keys.check_model_name), the settings
            text = setting_error(exc) if isinstance(exc, ValidationError) else str(exc)
            logger.error("InvalidInput: %s", text)
            sys.exit(exit_code(InvalidInput(text)))

    return run


def name_option(command: Callable[..., None]) -> Callable[..., None]:
    return click.option("--name", metavar="NAME", help=NAME_HELP)(command)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli() -> None:
    """mlplatform: train, register, promote and roll back named models (MLPLATFORM_* settings:
    the store, the signing key, ...)."""


@cli.command()
@name_option
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=DEFAULT_DATA,
    show_default=True,
    help="training CSV",
)
@click.option("--dataset", help="train on this data set of the model's store instead of --data")
@click.option(
    "--data-url",
    help="download a CSV or Parquet file over HTTP(S) (at most MLPLATFORM_DATASET_MAX_MB), "
    "keep it as a data set and train on it instead of --data",
)
@click.option("--dataset-name", help="with --data-url: the data set's name (default: the file's)")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="with --data-url: seconds without a byte",
)
@click.option("--target", help="target column (default: from <csv>.meta.json, else 'target')")
@click.option(
    "--task",
    type=click.Choice(TASKS),
    help="default: MLPLATFORM_TASK, else <csv>.meta.json, else read from the target (text or "
    "at most 20 distinct whole numbers: classification; other numbers: regression)",
)
@click.option("--no-promote", is_flag=True, help="publish without moving the production alias")
@click.option("--if-missing", is_flag=True, help="do nothing if a model is already in production")
@_refusals
def train(
    name: str | None,
    data: Path,
    dataset: str | None,
    data_url: str | None,
    dataset_name: str | None,
    timeout: float,
    target: str | None,
    task: str | None,
    no_promote: bool,
    if_missing: bool,
) -> None:
    """Train a model from a CSV, a data set in the store or a URL, and publish it (promoted
    unless --no-promote)."""
    from mlplatform_retrainer.job import train_from_file, train_from_url

    settings = _settings(name)
    if if_missing:
        registry = ModelRegistry(open_store(settings, ensure=True), settings.require_signing_key())
        alias = registry.production()
        if alias:
            click.echo(f"model {alias['version']} is already in production at {registry.store.url}")
            return
    if task:
        settings = settings.model_copy(update={"task": task})
    if dataset and (data_url or target or data != DEFAULT_DATA):
        raise InvalidInput("--dataset: a stored data set has its target; omit --data/--target")
    if data_url and data != DEFAULT_DATA:
        raise InvalidInput("--data-url: give either --data or --data-url")
    if dataset:
        click.echo(_trained_on(settings, dataset, promote=not no_promote))
        return

    def trained() -> Published:
        if data_url:
            return train_from_url(
                settings, data_url, target, dataset_name, timeout=timeout, promote=not no_promote
            )
        return train_from_file(settings, data, target, promote=not no_promote)

    click.echo(_trained(settings, not no_promote, trained))


def _trained_on(settings: RetrainerSettings, dataset: str, promote: bool = True) -> str:
    """``train --dataset NAME`` and the action ``train:NAME`` (POST /admin/train)."""
    from mlplatform_retrainer.job import train_from_store

    return _trained(settings, promote, lambda: train_from_store(settings, dataset, promote=promote))


def _trained(settings: RetrainerSettings, promote: bool, train: Callable[[], Published]) -> str:
    """Train, publish and roll out under the retrain lock when it promotes: the alias is read,
    then overwritten (``ModelRegistry.promote``), so a retrain or a move at the same time would
    lose one of the two promotions from the alias and its history, or roll out the other's
    version. A lock held is refused at once (one line, exit 1), as a retrain or a move is; a
    version published without promotion needs no lock (its number is claimed atomically)."""
    if not promote:
        return _published(settings, train())
    lock = StoreLock(
        open_store(settings, ensure=True), keys.RETRAIN_LOCK, settings.lock_ttl_seconds
    )
    try:
        lock.acquire()
    except LockHeld as exc:
        raise LockHeld(
            f"{settings.model_name}: not trained, a retrain or a move of production is running "
            f"({exc.message}); train again once it ends, or with --no-promote"
        ) from None
    try:
        return _published(settings, train())
    finally:
        lock.release()


def _published(settings: RetrainerSettings, published: Published) -> str:
    """What a trained version became; a promoted one is rolled out to a local serving."""
    from mlplatform_retrainer.job import describe
    from mlplatform_retrainer.rollout import rollout_local

    store = open_store(settings)
    lines = [describe(published, store.url)]
    if published.promoted and settings.resolved_rollout() == "local":
        # Like a retrain, tell a local serving (make dev) to load it. Best effort: none may
        # be running yet (make dev trains v1 before it starts the services).
        version = published.version
        signature = ModelRegistry(store, settings.require_signing_key()).signature(version)
        try:
            rollout_local(settings, version, signature)
            lines.append(f"serving at {settings.serving_url} now serves {version}")
        except MLPlatformError as exc:
            lines.append(
                f"serving not told ({exc.message[:160]}); it loads {version} when it starts"
            )
    return "\n".join(lines)


@cli.command()
@name_option
@click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(path_type=Path),
    help="the fitted model: .skops (loaded safely) or .joblib/.pkl (a pickle: runs its code)",
)
@click.option(
    "--data",
    required=True,
    type=click.Path(path_type=Path),
    help="reference data the model predicts: .csv or .parquet, features and the target",
)
@click.option("--target", required=True, help="the target column of --data")
@click.option("--task", type=click.Choice(TASKS), help="default: the model's (a classifier or not)")
@click.option(
    "--promote", is_flag=True, help="put the new version in production (default: a candidate)"
)
@click.option(
    "--trust",
    multiple=True,
    metavar="TYPE",
    help="a type a .skops file may hold beyond scikit-learn's, e.g. xgboost.sklearn.XGBClassifier "
    "(repeatable); loading it runs its code",
)
@click.option(
    "--timeout",
    type=float,
    default=120.0,
    show_default=True,
    help="seconds the separate process may take to load the model and predict the reference rows",
)
@_refusals
def register(
    name: str | None,
    model_path: Path,
    data: Path,
    target: str,
    task: str | None,
    promote: bool,
    trust: tuple[str, ...],
    timeout: float,
) -> None:
    """Register a model trained elsewhere: check it on its reference data, convert it to ONNX
    where it can, sign it and publish it as a new version."""
    from mlplatform_retrainer import register as registration

    # The user's own classes import from where the command runs, in this process as in the
    # separate one that loads the file first (`python -m` puts the folder on the path).
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    settings = _settings(name)
    done = registration.register(
        settings,
        model_path,
        data,
        target,
        task=task,
        promote=promote,
        trust=trust,
        timeout=timeout,
    )
    click.echo(registration.describe(done, open_store(settings).url))
    if done.alias is not None:
        click.echo(f"rollout: {done.alias['rollout']}")


def _name_and_version(args: tuple[str, ...], name: str | None) -> tuple[str | None, str]:
    if len(args) == 2:
        if name is not None and name != args[0]:
            raise click.UsageError(f"two names given: {args[0]!r} and --name {name!r}")
        return args[0], args[1]
    if len(args) == 1:
        return name, args[0]
    raise click.UsageError(
        "give the version (promote v3), or the name and version (promote fraud v3)"
    )


def _promoted(settings: RetrainerSettings, version: str, pin: bool) -> str:
    from mlplatform_retrainer.retrain import promote

    alias = promote(settings, version, pin=pin)
    held = " and held (retrains keep their candidates until `unpin`)" if pin else ""
    now, rollout = alias["version"], alias["rollout"]
    return f"{settings.model_name}: production is {now}{held}; rollout: {rollout}"


def _rolled_back(settings: RetrainerSettings) -> str:
    from mlplatform_retrainer.retrain import rollback

    alias = rollback(settings)
    was, rollout, now = alias["rolled_back_from"], alias["rollout"], alias["version"]
    return (
        f"{settings.model_name}: production is {now} again (was {was}); rollout: {rollout}\n"
        "it holds: retrains keep their candidates for review until `unpin`"
    )


def _act(settings: RetrainerSettings, action: actions.Action) -> str:
    """What a run started with MLPLATFORM_ACTION does instead of a retrain."""
    if action.verb in ("promote", "pin"):
        return _promoted(settings, str(action.argument), action.verb == "pin")
    if action.verb == "rollback":
        return _rolled_back(settings)
    if action.verb == "register":  # an upload of POST /admin/models
        from mlplatform_retrainer import register as registration

        done = registration.register_upload(settings, str(action.argument))
        return registration.describe(done, open_store(settings).url) + (
            f"\nrollout: {done.alias['rollout']}" if done.alias is not None else ""
        )
    if action.verb == "train":  # a data set of POST /admin/train, as train --dataset
        return _trained_on(settings, str(action.argument))
    raise ConfigurationError(f"{actions.ENV}={action}: this retrainer cannot do {action.verb!r}")


def _promote_command(pin: bool, text: str) -> None:
    @name_option
    @click.argument("args", nargs=-1, metavar="[NAME] VERSION")
    @_refusals
    def command(name: str | None, args: tuple[str, ...]) -> None:
        name, version = _name_and_version(args, name)
        click.echo(_promoted(_settings(name), version, pin))

    command.__doc__ = text
    cli.command("pin" if pin else "promote")(command)


_promote_command(False, "Put a version in production by hand (lifts a hold).")
_promote_command(True, "Put a version in production and hold it there until unpin.")


@cli.command()
@name_option
@_refusals
def rollback(name: str | None) -> None:
    """Move production back to the previous version (it holds until unpin)."""
    click.echo(_rolled_back(_settings(name)))


@cli.command()
@name_option
@_refusals
def unpin(name: str | None) -> None:
    """Lift a rollback's or a pin's hold: retrains may promote again."""
    from mlplatform_retrainer.retrain import unpin as lift

    settings = _settings(name)
    alias = lift(settings)
    now = alias["version"]
    click.echo(f"{settings.model_name}: production {now} is no longer held: retrains may promote")


@cli.command()
@name_option
@_refusals
def status(name: str | None) -> None:
    """The named model's production version, its hold, and every version with its origin and
    metrics."""
    settings = _settings(name)
    registry = ModelRegistry(open_store(settings), settings.require_signing_key())
    alias = registry.production()
    click.echo(f"model {settings.model_name} at {registry.store.url}")
    if alias is None:
        click.echo("production: none yet")
    else:
        hold = alias.get("hold")
        held = f" (held: {hold['reason']})" if isinstance(hold, dict) else ""
        click.echo(f"production: {alias['version']}{held}")
    for manifest in registry.list_versions():
        version = manifest["version"]
        if "error" in manifest:
            click.echo(f"  {version}  unverifiable: {manifest['error']}")
            continue
        origin = manifest.get("origin", "trained")
        metrics = manifest.get("metrics") or {}
        part = metrics.get("test") or metrics.get("reference") or {}
        scores = ", ".join(f"{k}={v:.3f}" for k, v in part.items() if isinstance(v, float))
        where = "test" if "test" in metrics else "reference"
        mark = "*" if alias and alias["version"] == version else " "
        click.echo(
            f"{mark} {version}  {origin:<10} {manifest.get('task', 'classification'):<14} "
            f"{manifest.get('created_at', '')}  {where}: {scores}"
        )


@cli.command()
@name_option
@click.option("--force", is_flag=True, help="retrain even if no trigger fires")
@_refusals
def run(name: str | None, force: bool) -> None:
    """Retrain if a trigger fires (k labelled rows, drift, quality); with MLPLATFORM_ACTION set
    (serving's admin API), do that action instead."""
    from mlplatform_retrainer.retrain import run as run_once

    settings = _settings(name)
    if settings.action:  # started by serving's admin API for one action, not a retrain
        click.echo(_act(settings, actions.parse(settings.action)))
        return
    result = run_once(settings, force=force or settings.force)
    click.echo(result.describe())


@cli.command()
@name_option
@click.option(
    "--input", "input_key", required=True, help="key of a .csv or .parquet in the model's store"
)
@click.option(
    "--output", help="key to write (default: <input without extension>.predictions.<ext>)"
)
@click.option("--version", help="a published version, e.g. v3 (default: production)")
@click.option(
    "--chunk-rows",
    type=click.IntRange(min=1),
    default=None,
    help="rows scored per chunk (default: batch.DEFAULT_CHUNK_ROWS)",
)
@_refusals
def batch(
    name: str | None,
    input_key: str,
    output: str | None,
    version: str | None,
    chunk_rows: int | None,
) -> None:
    """Score a CSV or Parquet file in the store (batch transform), logged as batch."""
    from mlplatform_retrainer.batch import DEFAULT_CHUNK_ROWS, run_batch

    done = run_batch(
        _settings(name),
        input_key,
        output,
        version,
        chunk_rows or DEFAULT_CHUNK_ROWS,
        progress=lambda line: click.echo(line),  # a line as it happens, in a pod too
    )
    click.echo(
        f"scored {done['rows']} rows of {done['input']} with model {done['version']} "
        f"({done['engine']}): {done['output']}; {len(done['log_keys'])} prediction log batches"
    )


@cli.group()
def data() -> None:
    """Data sets in the named model's store (train --dataset NAME trains on one)."""


@data.command("upload")
@name_option
@click.argument("path", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--dataset-name", help="the data set's name (default: the file's)")
@click.option("--target", help="target column (default: from <file>.meta.json, else 'target')")
@_refusals
def data_upload(name: str | None, path: Path, dataset_name: str | None, target: str | None) -> None:
    """Check a CSV or Parquet file and store it as a data set (MLPLATFORM_DATASET_MAX_MB)."""
    from mlplatform_retrainer.job import upload_dataset_file

    settings = _settings(name)
    click.echo(f"uploading {path} ({path.stat().st_size / 2**20:.1f} MB) ...")
    stored = upload_dataset_file(settings, path, dataset_name, target)
    click.echo(
        f"stored data set {stored['name']!r}: {stored['rows']} rows, "
        f"{len(stored['columns']) - 1} features, target {stored['target']!r} ({stored['task']}); "
        f"train on it with: mlplatform train --dataset {stored['name']}"
    )


@cli.command()
@name_option
@_refusals
def schedule(name: str | None) -> None:
    """Run the trigger check every MLPLATFORM_SCHEDULE_SECONDS."""
    from apscheduler.schedulers.blocking import BlockingScheduler

    from mlplatform_retrainer.retrain import run as run_once

    settings = _settings(name)

    def check() -> None:
        try:
            logger.info(run_once(settings).describe())
        except MLPlatformError as exc:
            logger.error("retrain check failed: %s: %s", exc.type, exc.message)

    scheduler = BlockingScheduler()
    scheduler.add_job(
        check, "interval", seconds=settings.schedule_seconds, max_instances=1, coalesce=True
    )
    logger.info("checking the retrain triggers every %.0fs", settings.schedule_seconds)
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        scheduler.start()


def main(argv: list[str] | None = None, prog: str = "mlplatform") -> int:
    """Run the command line; the exit code."""
    try:
        cli.main(args=argv, prog_name=prog, standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return 1
    return 0


__all__ = ["cli", "main"]
