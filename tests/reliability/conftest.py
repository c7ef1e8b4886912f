"""Reliability fixtures: the run profile (``make test`` or soak), figures, processes, memory.

``make test`` runs the quick profile; ``python -m tests.reliability.soak`` (``make soak``) sets
``MLPLATFORM_SOAK=1`` and the same tests run longer, with more generated inputs. Every test
that measures something records it with the ``figures`` fixture; the figures of a session are
merged into ``tests/reliability/results/<profile>.json`` (what RELIABILITY.md quotes).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from moto.server import ThreadedMotoServer

from tests.conftest import REPO, S3_KEYS, SIGNING_KEY, S3Server, free_port

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ADMIN_TOKEN = "reliability-admin-token-4f1c9e"


@dataclass(frozen=True)
class Profile:
    """How long and how hard each reliability test pushes."""

    name: str
    fuzz_examples: int
    """Hypothesis examples per API operation (schemathesis)."""
    load_seconds: float
    """Sustained mixed traffic against two serving processes."""
    load_concurrency: int
    outage_seconds: float
    """How long the S3 server stays down under traffic."""
    kills: int
    """Random SIGKILLs of a publisher process."""


QUICK = Profile(
    "quick", fuzz_examples=250, load_seconds=20, load_concurrency=16, outage_seconds=4, kills=8
)
SOAK = Profile(
    "soak", fuzz_examples=1000, load_seconds=600, load_concurrency=24, outage_seconds=30, kills=25
)


def _profile() -> Profile:
    if os.environ.get("MLPLATFORM_SOAK", "") in ("", "0"):
        return QUICK
    seconds = os.environ.get("MLPLATFORM_SOAK_SECONDS")
    if seconds:
        return Profile(**{**asdict(SOAK), "load_seconds": float(seconds)})
    return SOAK


PROFILE = _profile()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak: also part of the long soak run (make soak)")


# -- figures ------------------------------------------------------------------------------


class Figures:
    """Numbers the tests measured, written once at the end of the session."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def record(self, name: str, **values: Any) -> None:
        self.data.setdefault(name, {}).update(values)

    def write(self) -> Path | None:
        if not self.data:
            return None
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{PROFILE.name}.json"
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError):
            previous = {}
        now = datetime.now(UTC).isoformat(timespec="seconds")
        tests = previous.get("tests", {})
        for name, values in self.data.items():
            tests[name] = {**values, "measured_at": now}
        doc = {
            "profile": asdict(PROFILE),
            "command": " ".join(["pytest", *sys.argv[1:]]) if PROFILE is QUICK else "make soak",
            "updated_at": now,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "tests": dict(sorted(tests.items())),
        }
        path.write_text(json.dumps(doc, indent=2) + "\n")
        return path


@pytest.fixture(scope="session")
def figures() -> Iterator[Figures]:
    f = Figures()
    yield f
    path = f.write()
    if path:
        print(f"\nreliability figures written to {path.relative_to(REPO)}")


# -- processes ------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """Resident memory of a process in KiB (``VmRSS`` of ``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of a non-empty list."""
    import math

    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def start_together(procs: list[Any], wait_ready: bool = True) -> list[Any]:
    """Start several ``ServingProcess``es at once (each start is mostly waiting for imports)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(procs)) as pool:
        futures = [pool.submit(p.start, wait_ready) for p in procs]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        for p in procs:
            p.stop()
        raise RuntimeError(f"a serving process did not start: {errors}")
    return procs


def output_so_far(proc: Any) -> str:
    """What a running ``ServingProcess`` has logged: its output file opened anew, so the
    server's own file offset is left alone."""
    return Path(f"/proc/{proc.proc.pid}/fd/1").read_text(errors="replace")


class MotoProcess:
    """moto's S3 server as its own process: the load test's store is not slowed down by the
    GIL of the test process that generates the load."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> MotoProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://{self.endpoint}/moto-api/", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def store(self, bucket: str) -> Any:
        from mlplatform_common.storage import S3Store

        store = S3Store(bucket, self.endpoint, **S3_KEYS)  # type: ignore[arg-type]
        store.ensure()
        return store


def restart_on_same_port(server: S3Server) -> None:
    """Bring a stopped in-process moto server back on its port. moto keeps its buckets in
    module state of this process, so the store comes back with everything it held."""
    server._server = ThreadedMotoServer(ip_address="127.0.0.1", port=server.port, verbose=False)
    server._server.start()


def s3_env(endpoint: str, bucket: str, **extra: str) -> dict[str, str]:
    """Environment of a serving or retrainer process on an S3 store."""
    return {
        "MLPLATFORM_STORE_URL": f"s3://{bucket}",
        "MLPLATFORM_S3_ENDPOINT": endpoint,
        "MLPLATFORM_S3_ACCESS_KEY": S3_KEYS["access_key"],
        "MLPLATFORM_S3_SECRET_KEY": S3_KEYS["secret_key"],
        "MLPLATFORM_SIGNING_KEY": SIGNING_KEY.decode(),
        "MLPLATFORM_ADMIN_TOKEN": ADMIN_TOKEN,
        "MLPLATFORM_LOG_FLUSH_SECONDS": "0.5",
        "MLPLATFORM_RETRAIN_EVERY": "0",
        **extra,
    }


def local_env(root: Path, **extra: str) -> dict[str, str]:
    """Environment of a serving or retrainer process on a local store."""
    return {
        "MLPLATFORM_STORE_URL": f"file://{root}",
        "MLPLATFORM_SIGNING_KEY": SIGNING_KEY.decode(),
        "MLPLATFORM_ADMIN_TOKEN": ADMIN_TOKEN,
        "MLPLATFORM_LOG_FLUSH_SECONDS": "0.5",
        "MLPLATFORM_RETRAIN_EVERY": "0",
        **extra,
    }


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="session")
def rows() -> list[dict[str, float]]:
    import pandas as pd

    from tests.conftest import DATA

    frame = pd.read_csv(DATA).drop(columns="target")
    records: list[dict[str, float]] = frame.to_dict(orient="records")
    return records


@pytest.fixture(autouse=True, scope="session")
def _quiet_moto() -> None:
    # One INFO line per S3 request from the in-process moto server drowns a failure's report.
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
