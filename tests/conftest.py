"""Fixtures shared by every test: free ports, a real S3 server, stores and settings."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from moto.server import ThreadedMotoServer

from mlplatform_common.registry import ModelRegistry
from mlplatform_common.settings import CommonSettings
from mlplatform_common.storage import LocalStore, S3Store, Store

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data" / "breast_cancer.csv"
SIGNING_KEY = b"test-signing-key"
S3_KEYS = {"access_key": "testing", "secret_key": "testing"}
# Debian's Chromium, headless; without the background-networking flags it keeps trying hosts
# this machine cannot reach.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class S3Server:
    """moto's S3 server on a free loopback port (a real HTTP S3 endpoint)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    def start(self) -> S3Server:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def store(self, bucket: str | None = None, **kw: object) -> S3Store:
        store = S3Store(bucket or f"b-{uuid.uuid4().hex[:12]}", self.endpoint, **S3_KEYS, **kw)  # type: ignore[arg-type]
        store.ensure()
        return store

    def settings(self, bucket: str, **kw: object) -> CommonSettings:
        return CommonSettings(
            store_url=f"s3://{bucket}",
            s3_endpoint=self.endpoint,
            s3_access_key=S3_KEYS["access_key"],  # type: ignore[arg-type]
            s3_secret_key=S3_KEYS["secret_key"],  # type: ignore[arg-type]
            **kw,  # type: ignore[arg-type]
        )


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # moto and any boto-based client must never look for real credentials.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """The same contract, once per backend."""
    if request.param == "local":
        local = LocalStore(tmp_path / "store")
        local.ensure()
        return local
    server: S3Server = request.getfixturevalue("s3_server")
    return server.store()


@pytest.fixture
def local_store(tmp_path: Path) -> Store:
    s = LocalStore(tmp_path / "store")
    s.ensure()
    return s


@pytest.fixture
def registry(store: Store) -> ModelRegistry:
    return ModelRegistry(store, SIGNING_KEY)


@pytest.fixture(scope="session")
def shipped_dataset():  # type: ignore[no-untyped-def]
    from mlplatform_common.schema import load_dataset

    return load_dataset(DATA)


@pytest.fixture(scope="session")
def trained(shipped_dataset):  # type: ignore[no-untyped-def]
    """One model trained on the shipped data, reused by every test that needs a model."""
    from mlplatform_retrainer.train import TrainConfig, train

    return train(shipped_dataset.X, shipped_dataset.y, TrainConfig())


def publish_trained(registry: ModelRegistry, trained, dataset, promote: bool = True) -> str:  # type: ignore[no-untyped-def]
    from mlplatform_retrainer.job import publish
    from mlplatform_retrainer.train import TrainConfig

    version = publish(registry, trained, dataset, TrainConfig())
    if promote:
        registry.promote(version)
    return version


class ServingProcess:
    """A real ``python -m mlplatform_serving`` (uvicorn) on a free port."""

    def __init__(
        self, env: dict[str, str], port: int | None = None, python_code: str | None = None
    ) -> None:
        """``python_code``: run this with ``python -c`` instead of ``-m mlplatform_serving``."""
        import os

        self.python_code = python_code

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "MLPLATFORM_PORT": str(self.port),
            "MLPLATFORM_HOST": "127.0.0.1",
            **env,
        }
        self.proc: Any = None

    def start(self, wait_ready: bool = True, timeout: float = 60) -> ServingProcess:
        import subprocess
        import sys
        import tempfile
        import time

        import httpx

        # A file, not a pipe: a pipe nobody reads fills up and blocks the server's logging.
        self.output = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                *(["-c", self.python_code] if self.python_code else ["-m", "mlplatform_serving"]),
            ],
            cwd=REPO,
            env=self.env,
            stdout=self.output,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + timeout
        path = "/ready" if wait_ready else "/health"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serving exited early:\n{self.stop()}")
            try:
                if httpx.get(self.url + path, timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"serving not up on {self.url}:\n{self.stop()}")

    def stop(self) -> str:
        """Stop with SIGTERM (graceful shutdown flushes the log); return its output."""
        import subprocess

        if self.proc is None:
            return ""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.output.seek(0)
        out: str = self.output.read()
        self.output.close()
        self.proc = None
        return out
