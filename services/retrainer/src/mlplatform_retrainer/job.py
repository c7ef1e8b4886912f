"""The retrainer's I/O: read data, train with progress, publish a version, move the alias."""

from __future__ import annotations

import io
import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import httpx
import joblib
import pandas as pd
import sklearn
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from mlplatform_common import datasets, keys
from mlplatform_common.errors import DatasetError, InvalidInput, MLPlatformError
from mlplatform_common.registry import BACKUP, MODEL, REF_DATA, ModelRegistry
from mlplatform_common.schema import Dataset, encoded_frame, load_dataset
from mlplatform_common.storage import Store, open_store
from mlplatform_retrainer import onnx_export
from mlplatform_retrainer.settings import RetrainerSettings
from mlplatform_retrainer.train import BACKUP_ESTIMATOR, STEPS, TrainConfig, TrainingResult, train

logger = logging.getLogger("mlplatform.retrainer")


@dataclass
class Published:
    version: str
    result: TrainingResult
    promoted: bool


def _dump(obj: Any) -> bytes:
    buf = io.BytesIO()
    joblib.dump(obj, buf)
    return buf.getvalue()


def train_with_progress(
    dataset: Dataset,
    config: TrainConfig,
    test: tuple[pd.DataFrame, pd.Series] | None = None,
) -> TrainingResult:
    """Train, showing a progress bar in a terminal and logging each step (for pods)."""
    with Progress(
        TextColumn("[bold]training[/bold] {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        transient=True,
    ) as progress:
        task = progress.add_task(dataset.name, total=len(STEPS))

        def step(name: str) -> None:
            progress.update(task, advance=1, description=f"{dataset.name}: {name}")
            logger.info("training %s: %s done", dataset.name, name)

        return train(dataset.X, dataset.y, config, on_step=step, test=test, task=dataset.task)


READ_CHUNK = 1 << 20
"""Bytes per read of a local file: a progress step, small enough to move for a large file."""


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def read_with_progress(path: Path) -> bytes:
    """A local file's bytes, read with a byte bar on stderr in a terminal. Elsewhere (a pod, a
    pipe) the log gets at most four lines whatever the size: 25%, 50%, 75% and the end."""
    total = path.stat().st_size
    chunks: list[bytes] = []
    done, logged = 0, 0
    start = time.perf_counter()
    # rich, as the training bar: click.progressbar would print only its label off a terminal,
    # and a bar redrawn into a pod's log would be one line per redraw.
    tty = sys.stderr.isatty()
    with (
        Progress(
            TextColumn("[bold]reading[/bold] {task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=Console(stderr=True),
            transient=True,
            disable=not tty,
        ) as bar,
        path.open("rb") as f,
    ):
        task = bar.add_task(path.name, total=total)
        while chunk := f.read(READ_CHUNK):
            chunks.append(chunk)
            done += len(chunk)
            bar.update(task, completed=done)
            quarter = min(done * 4 // max(total, 1), 4)
            if not tty and logged < quarter < 4:
                logged = quarter
                logger.info("reading %s: %d%% of %s", path.name, quarter * 25, _mb(total))
    raw = b"".join(chunks)
    logger.info("read %s (%s) in %.1f s", path.name, _mb(done), time.perf_counter() - start)
    return raw


def validated(dataset: Dataset) -> str:
    """What a validated data set holds, for the stage line after validation."""
    return (
        f"validated: {len(dataset.X):,} rows x {len(dataset.features) + 1} columns, "
        f"task {dataset.task} ({dataset.task_reason})"
    )


@contextmanager
def stage(doing: str, done: str) -> Iterator[None]:
    """A long step as two log lines: ``doing ...`` before, ``done in N s`` after (not after
    a failure: its one error line says what happened)."""
    logger.info("%s ...", doing)
    start = time.perf_counter()
    yield
    logger.info("%s in %.1f s", done, time.perf_counter() - start)


def upload_dataset(store: Store, dataset: Dataset) -> None:
    """Keep the training data in the store, so retraining in a cluster can read it (``make
    train`` replaces the file's data set of the same name, as it always has)."""
    datasets.write(store, dataset, replace=True)


def upload_dataset_file(
    settings: RetrainerSettings,
    path: Path,
    name: str | None = None,
    target: str | None = None,
) -> dict[str, Any]:
    """Store a local CSV or Parquet file as a named data set of the model (what ``POST
    /admin/datasets`` does with a body): bounded by MLPLATFORM_DATASET_MAX_MB, validated,
    refused if the name exists. ``name`` defaults to the file's stem, ``target`` to its
    ``.meta.json``'s, else ``target``. Returns the stored data set's summary."""
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    if path.stat().st_size > datasets.max_bytes(settings.dataset_max_mb):
        raise datasets.too_large(settings.dataset_max_mb)
    meta_path = path.with_suffix(".meta.json")
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    raw = read_with_progress(path)
    if len(raw) > datasets.max_bytes(settings.dataset_max_mb):  # grew since the check above
        raise datasets.too_large(settings.dataset_max_mb)
    name, target = name or path.stem, target or meta.get("target") or "target"
    logger.info("validating %s against its header (target %r) ...", path.name, target)
    dataset = datasets.prepare(raw, name, target, task=settings.task)
    logger.info("%s", validated(dataset))
    store = open_store(settings, ensure=True)
    where = keys.dataset(name).rsplit("/", 1)[0]
    with stage(f"storing {where} ({_mb(len(dataset.raw))})", "stored"):
        return datasets.write(store, dataset)


def publish(
    registry: ModelRegistry,
    result: TrainingResult,
    dataset: Dataset,
    config: TrainConfig,
    *,
    parent: str | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Publish a training result as the next version (files first, signed manifest last)."""
    files = {
        MODEL: _dump(result.pipeline),
        BACKUP: _dump(result.backup),
        REF_DATA: result.ref_data.to_csv(index=False).encode(),
    }
    # Checked against scikit-learn on every row of the data set before it is published.
    onnx_files, onnx_info = onnx_export.convert(
        result.pipeline, encoded_frame(dataset.X, result.schema), result.task
    )
    files.update(onnx_files)
    class_names = [dataset.class_names.get(str(c), str(c)) for c in result.classes]
    manifest = {
        "parent": parent,
        "task": result.task,
        "target": dataset.target,
        "feature_schema": result.schema,
        "classes": result.classes,
        "class_names": class_names,
        "n_components": result.n_components,
        "estimator": result.estimator,
        "backup_estimator": BACKUP_ESTIMATOR[result.task],
        "metrics": result.metrics,
        "split": {**result.split_sizes, "seed": config.seed},
        "training_data": {
            "dataset": dataset.name,
            "sha256": dataset.sha256,
            "rows": len(dataset.X),
        },
        "sklearn_version": sklearn.__version__,
        "onnx": onnx_info,
        **(extra or {}),
    }
    return registry.publish(files, manifest)


def train_from_file(
    settings: RetrainerSettings,
    data: Path,
    target: str | None = None,
    *,
    promote: bool = True,
) -> Published:
    """``make train``: validate a CSV, upload it, train, publish and (by default) promote."""
    try:
        dataset = load_dataset(data, target, settings.task)
    except DatasetError as exc:
        if settings.task is None:
            raise
        # The task was chosen, not read from the target: say so, it is the likely cause.
        raise DatasetError(
            f"{data} as a {settings.task} task (--task or MLPLATFORM_TASK): {exc.message}"
        ) from None
    store = open_store(settings, ensure=True)
    logger.info(
        "training on %s: %d rows, %d features, target %r, %s",
        data,
        len(dataset.X),
        len(dataset.features),
        dataset.target,
        dataset.task_reason,
    )
    return _train_and_publish(settings, store, dataset, promote=promote, upload=True)


def train_from_store(
    settings: RetrainerSettings, dataset_name: str, *, promote: bool = True
) -> Published:
    """``train --dataset NAME``: train on a data set already in the model's store (uploaded
    with ``POST /admin/datasets`` or ``upload_dataset_file``), publish, (by default) promote."""
    store = open_store(settings, ensure=True)
    dataset = datasets.load(store, dataset_name)
    logger.info(
        "training on stored dataset %s: %d rows, %d features, target %r, %s",
        dataset_name,
        len(dataset.X),
        len(dataset.features),
        dataset.target,
        dataset.task,
    )
    return _train_and_publish(settings, store, dataset, promote=promote, upload=False)


def _train_and_publish(
    settings: RetrainerSettings, store: Store, dataset: Dataset, *, promote: bool, upload: bool
) -> Published:
    registry = ModelRegistry(store, settings.require_signing_key())
    config = TrainConfig(
        n_components=settings.n_components, estimator=settings.estimator, seed=settings.seed
    )
    result = train_with_progress(dataset, config)
    if upload:  # a file's data set, once it trained
        upload_dataset(store, dataset)
    current = registry.production()
    version = publish(
        registry, result, dataset, config, parent=current["version"] if current else None
    )
    if promote:
        registry.promote(version)
    return Published(version, result, promote)


class DownloadFailed(MLPlatformError):
    """The server of a --data-url did not answer, timed out or said "not now" (5xx, 408, 429):
    retryable, unlike a bad URL or a 404 (``InvalidInput``), so a retried Job may get it."""

    status_code = 502


def download(url: str, max_mb: float, timeout: float) -> bytes:
    """An HTTP(S) URL's body, read in chunks and refused past ``max_mb`` (before it is all
    read) or ``timeout`` seconds between bytes; errors name the URL and the problem."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise InvalidInput(f"--data-url: {url!r:.100} is not an http:// or https:// URL")
    limit = datasets.max_bytes(max_mb)
    body = bytearray()
    try:
        with httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as response:
            status = response.status_code
            if status != 200:
                failed = DownloadFailed if status >= 500 or status in (408, 429) else InvalidInput
                raise failed(f"--data-url: {url} answered HTTP {status}")
            for chunk in response.iter_bytes():
                body.extend(chunk)
                if len(body) > limit:
                    raise datasets.too_large(max_mb)
    except httpx.TransportError as exc:  # no answer, a timeout, a cut connection
        raise DownloadFailed(f"--data-url: {url} could not be read: {exc!r:.200}") from None
    except httpx.HTTPError as exc:  # a bad URL, too many redirects
        raise InvalidInput(f"--data-url: {url} could not be read: {exc!r:.200}") from None
    return bytes(body)


def train_from_url(
    settings: RetrainerSettings,
    url: str,
    target: str | None = None,
    name: str | None = None,
    *,
    timeout: float = 60.0,
    promote: bool = True,
) -> Published:
    """``train --data-url URL`` (the chart's ``bootstrap.dataUrl``): download a CSV or Parquet
    file (bounded by MLPLATFORM_DATASET_MAX_MB and ``timeout``), validate it as a data set
    named ``name`` (default: the URL's file name), train, store it with the version."""
    raw = download(url, settings.dataset_max_mb, timeout)
    stem = PurePosixPath(urlsplit(url).path).stem.lower().replace(".", "-")
    dataset = datasets.prepare(
        raw, name or stem or "downloaded", target or "target", task=settings.task
    )
    logger.info("training on %s: %d rows, target %r", url, len(dataset.X), dataset.target)
    store = open_store(settings, ensure=True)
    return _train_and_publish(settings, store, dataset, promote=promote, upload=True)


def describe(published: Published, store_url: str) -> str:
    """A short summary for the terminal."""
    test = published.result.metrics["test"]
    scores = ", ".join(f"{k}={v:.3f}" for k, v in test.items())
    where = "in production" if published.promoted else "published, not promoted"
    return f"model {published.version} {where} at {store_url}\n  test: {scores}"


__all__ = [
    "Published",
    "describe",
    "publish",
    "read_with_progress",
    "stage",
    "train_from_file",
    "train_from_store",
    "train_from_url",
    "upload_dataset",
    "upload_dataset_file",
    "validated",
]
