"""`upload_dataset_file` and `train_from_store` on a real SeaweedFS store: the plain functions a
CLI calls (`mlplatform data upload`, `mlplatform train --dataset`)."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlplatform_common import datasets, keys
from mlplatform_common.errors import Conflict, DatasetError, PayloadTooLarge
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import open_store
from mlplatform_retrainer.job import train_from_store, upload_dataset_file
from mlplatform_retrainer.settings import RetrainerSettings
from tests.conftest import REPO, SIGNING_KEY, S3Server, run_cli, serving_env
from tests.services.retrainer.conftest import log_messages


def _settings(s3_server: S3Server, **kw: object) -> RetrainerSettings:
    common = s3_server.settings(f"b-{uuid.uuid4().hex[:12]}", model_name="fraud")
    return RetrainerSettings(
        **common.model_dump(exclude={"signing_key"}),
        signing_key=SIGNING_KEY.decode(),
        n_components=3,
        **kw,
    )


def test_a_file_uploaded_then_trained_from_the_store(s3_server: S3Server) -> None:
    settings = _settings(s3_server)
    summary = upload_dataset_file(settings, REPO / "data" / "diabetes.csv", "diab")
    assert summary["task"] == "regression" and summary["rows"] == 442  # target from .meta.json
    store = open_store(settings)  # the model's part of the store
    assert store.exists(keys.dataset("diab", "meta.json"))
    assert [d["name"] for d in datasets.listing(store)] == ["diab"]
    with pytest.raises(Conflict, match="'diab' already exists"):
        upload_dataset_file(settings, REPO / "data" / "diabetes.csv", "diab")

    published = train_from_store(settings, "diab")
    manifest = ModelRegistry(store, SIGNING_KEY).manifest(published.version)
    assert manifest["training_data"]["dataset"] == "diab"
    assert manifest["task"] == "regression" and published.promoted


def test_a_bad_file_is_refused_before_anything_is_stored(
    s3_server: S3Server, tmp_path: Path
) -> None:
    settings = _settings(s3_server, dataset_max_mb=0.01)
    with pytest.raises(PayloadTooLarge, match=r"limit of 0.01 MB \(MLPLATFORM_DATASET_MAX_MB\)"):
        upload_dataset_file(settings, REPO / "data" / "diabetes.csv", "diab")
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n1,2\n")
    with pytest.raises(DatasetError, match="target column 'target' not found"):
        upload_dataset_file(settings, bad, "bad")
    assert open_store(settings, ensure=True).list_keys(keys.DATASETS) == []


def test_mlplatform_data_upload_then_train_on_it_and_a_bad_file_is_one_line(
    s3_server: S3Server, tmp_path: Path
) -> None:
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    s3_server.store(bucket)
    env = serving_env(s3_server, bucket, MLPLATFORM_N_COMPONENTS="3")
    penguins = REPO / "data" / "penguins.csv"
    done = run_cli(
        "mlplatform_retrainer",
        ["data", "upload", str(penguins), "--name", "birds", "--dataset-name", "pg"],
        env,
    )
    assert done.returncode == 0, done.stderr
    assert "stored data set 'pg'" in done.stdout and "target 'species'" in done.stdout
    done = run_cli("mlplatform_retrainer", ["train", "--name", "birds", "--dataset", "pg"], env)
    assert done.returncode == 0, done.stderr
    birds = open_store(s3_server.settings(bucket, model_name="birds"))
    manifest = ModelRegistry(birds, SIGNING_KEY).manifest("v1")
    assert manifest["training_data"]["dataset"] == "pg"

    bad = tmp_path / "bad.csv"
    bad.write_text("a,a,target\n1,2,0\n")
    done = run_cli("mlplatform_retrainer", ["data", "upload", str(bad), "--name", "birds"], env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "'a'" in errors[0], done.stderr  # after the stages it passed
    assert [d["name"] for d in datasets.listing(birds)] == ["pg"]  # nothing else stored


def _big_csv(path: Path, rows: int) -> Path:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(rows, 11)), columns=[f"f{i}" for i in range(11)])
    frame["y"] = frame.sum(axis=1) + rng.normal(size=rows)
    frame.to_csv(path, index=False)
    return path


def test_data_upload_shows_its_stages_on_stderr_and_keeps_stdout(
    s3_server: S3Server, tmp_path: Path
) -> None:
    """A multi-MB file through a pipe (not a terminal): a bounded number of reading lines,
    then what validation found and how long the store took; stdout as before."""
    rows = 60_000
    path = _big_csv(tmp_path / "big.csv", rows)
    size = path.stat().st_size
    assert size > 8 * 2**20  # several read chunks
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    s3_server.store(bucket)
    env = serving_env(s3_server, bucket)
    args = ["data", "upload", str(path), "--name", "big", "--target", "y"]
    done = run_cli("mlplatform_retrainer", args, env)
    assert done.returncode == 0, done.stderr

    assert done.stdout == (
        f"uploading {path} ({size / 2**20:.1f} MB) ...\n"
        f"stored data set 'big': {rows} rows, 11 features, target 'y' (regression); "
        "train on it with: mlplatform train --dataset big\n"
    )
    mb = re.escape(f"{size / 2**20:.1f} MB")
    expected = [
        "reading big.csv: 25% of " + mb,
        "reading big.csv: 50% of " + mb,
        "reading big.csv: 75% of " + mb,
        rf"read big.csv \({mb}\) in \d+\.\d s",
        r"validating big.csv against its header \(target 'y'\) \.\.\.",
        r"validated: 60,000 rows x 12 columns, task regression \(.+\)",
        rf"storing datasets/big \({mb}\) \.\.\.",
        r"stored in \d+\.\d s",
    ]
    messages = log_messages(done.stderr)
    assert len(messages) == len(expected), done.stderr  # a few lines, not one per chunk
    for message, pattern in zip(messages, expected, strict=True):
        assert re.fullmatch(pattern, message), (message, pattern)
    assert "\r" not in done.stderr and "━" not in done.stderr  # no bar drawn into a pipe
    # What is stored is the file, byte for byte.
    stored = open_store(s3_server.settings(bucket, model_name="big"))
    assert stored.get(keys.dataset("big")) == path.read_bytes()


def test_in_a_terminal_data_upload_draws_a_byte_bar_on_stderr_only(
    s3_server: S3Server, tmp_path: Path
) -> None:
    """stderr on a terminal (stdout a pipe, as in `mlplatform data upload ... > out`): the bar
    is drawn there and cleared, instead of the log's 25% lines; stdout is the same."""
    path = _big_csv(tmp_path / "tty.csv", 30_000)
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    s3_server.store(bucket)
    env = {**os.environ, **serving_env(s3_server, bucket)}
    primary, secondary = pty.openpty()
    args = ["data", "upload", str(path), "--name", "tty", "--target", "y"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlplatform_retrainer", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=secondary,
        text=True,
    )
    os.close(secondary)
    terminal = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        terminal += chunk
    os.close(primary)
    stdout = proc.stdout.read() if proc.stdout else ""
    shown = terminal.decode(errors="replace")
    assert proc.wait(timeout=120) == 0, shown
    assert "\x1b[" in shown and "reading" in shown and "━" in shown  # the bar, drawn
    assert "reading tty.csv: 25%" not in shown and re.search(r"read tty.csv \(", shown)
    assert "validated: 30,000 rows x 12 columns" in shown and "stored in" in shown
    assert "reading" not in stdout and stdout.startswith(f"uploading {path} (")
    assert stdout.splitlines()[1].startswith("stored data set 'tty': 30000 rows")
