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
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, S3_KEYS, SIGNING_KEY, S3Server

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ADMIN_TOKEN = "reliability-admin-token-4f1c9e"
WRITER_TOKEN = "reliability-writer-token-8d2a61"
WRITER = {"Authorization": f"Bearer {WRITER_TOKEN}"}
# These tests load /feedback on purpose; the rate of one key is tested in tests/services.
NO_RATE = {"MLPLATFORM_WRITER_TOKEN": WRITER_TOKEN, "MLPLATFORM_FEEDBACK_RATE": "0"}


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


def restart_on_same_port(server: S3Server) -> None:
    """Start a stopped SeaweedFS again on its ports, with its data directory: the same store
    comes back with everything it had acknowledged."""
    server.start()


def s3_env(endpoint: str, bucket: str, **extra: str) -> dict[str, str]:
    """Environment of a serving or retrainer process on an S3 store."""
    return {
        "MLPLATFORM_STORE_URL": f"s3://{bucket}",
        "MLPLATFORM_S3_ENDPOINT": endpoint,
        "MLPLATFORM_S3_ACCESS_KEY": S3_KEYS["access_key"],
        "MLPLATFORM_S3_SECRET_KEY": S3_KEYS["secret_key"],
        "MLPLATFORM_SIGNING_KEY": SIGNING_KEY.decode(),
        "MLPLATFORM_ADMIN_TOKEN": ADMIN_TOKEN,
        **NO_RATE,
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
        **NO_RATE,
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
