"""Build the four service images with a real Docker engine and run them (``make test-images``).

Run from the repository root: ``uv run --frozen python -m tests.images.run_image_tests``.
Not collected by ``pytest`` (the normal suite needs no Docker). On Debian as root it:

1. installs ``docker.io``, ``debootstrap`` and ``chromium`` with apt-get if they are missing;
2. starts ``dockerd`` if no engine answers, and stops that one again (by its PID) at the end;
3. makes a local base image standing in for ``python:3.11-slim`` (debootstrap of bookworm with
   Python 3.11, venv and pip; plus this machine's CA bundle and pip index settings, so a build
   reaches PyPI the way this machine does) and keeps it for the next run;
4. builds ``mlplatform-<service>:<appVersion>`` from the repository's ``Dockerfile`` with
   ``--build-arg SERVICE=<service> --build-arg BASE_IMAGE=<local base>``, and
   ``mlplatform-serving-sklearn:<appVersion>`` (``SERVING_EXTRAS=sklearn``); checks that only the
   latter has scikit-learn;
5. against a real S3 server (SeaweedFS, ``weed`` from PyPI) on the host's loopback: runs the retrainer's bootstrap ``train``, then
   serving (``/ready``, ``/predict`` by ONNX Runtime, ``/feedback``, Docker's HEALTHCHECK, the
   prediction log with its embedding), the web app (Streamlit
   health, and in headless Chromium the page names the serving URL and the model version), the
   reporter (``run``: a ``reports/<id>/summary.json``) and the retrainer (``run --force``: a new
   model version), each as its own container on the host network;
6. prints each image's size and fails if serving is over 400 MB.

Every container gets a unique name and is removed at the end, pass or fail.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import CHROMIUM, CHROMIUM_ARGS

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("serving", "webapp", "reporter", "retrainer")
# The reporter (Evidently) takes longest to build: it starts first.
BUILD_ORDER = ("reporter", "serving-sklearn", "serving", "webapp", "retrainer")
CHART = REPO / "charts" / "mlplatform" / "Chart.yaml"
DEFAULT_APP_VERSION = "0.1.0"
# Bump the tag when the recipe below changes: an image with this tag is reused as it is.
ROOTFS_IMAGE = "mlplatform-test-rootfs:bookworm-r2"
BASE_IMAGE = "mlplatform-test-base:bookworm-py311"
BASE_PACKAGES = "python3,python3-venv,python3-pip,python-is-python3,ca-certificates"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
SERVING_MAX_MB = 400.0
BENCH = REPO / "bench" / "BENCHMARKS.md"
BENCH_HEADING = "## Service images"
STARTED = time.monotonic()
# Set when this run had to build the local base: then the run started from a cold cache.
BASE_BUILT = False


class Failure(Exception):
    """A check failed; the message says which and why."""


def log(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:7.1f}s] {message}", flush=True)


def run(
    args: Sequence[str], *, check: bool = True, capture: bool = False, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """Run a command; with ``capture`` its output is returned, else it streams to ours."""
    result = subprocess.run(
        list(args),
        check=False,
        text=True,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if capture else None,
        **kw,
    )
    if check and result.returncode != 0:
        output = f":\n{result.stdout}" if capture else ""
        raise Failure(f"`{' '.join(args)}` exited {result.returncode}{output}")
    return result


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def app_version() -> str:
    """The chart's appVersion, which tags the images; 0.1.0 until the chart exists."""
    if CHART.is_file():
        match = re.search(r"^appVersion:\s*[\"']?([^\"'\s#]+)", CHART.read_text(), re.M)
        if match:
            return match.group(1)
    return DEFAULT_APP_VERSION


# --- host set-up: packages and the Docker engine -------------------------------------------


def ensure_packages(packages: list[str]) -> None:
    """Install missing Debian packages (root on Debian only; anywhere else, say what is missing)."""
    missing = [p for p in packages if run(["dpkg", "-s", p], check=False, capture=True).returncode]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Failure(f"missing Debian packages {missing}: install them, or run as root on Debian")
    log(f"installing Debian packages: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], env=env, capture=True)
    run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        env=env,
        capture=True,
    )


def docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    return run(["docker", "info"], check=False, capture=True).returncode == 0


@contextlib.contextmanager
def docker_engine(workdir: Path) -> Iterator[None]:
    """Use the running engine, or start ``dockerd`` and stop exactly that process afterwards."""
    if docker_answers():
        log("using the Docker engine that is already running")
        yield
        return
    if not shutil.which("dockerd"):
        raise Failure("no Docker engine answers and dockerd is not installed")
    logfile = (workdir / "dockerd.log").open("w")
    proc = subprocess.Popen(["dockerd"], stdout=logfile, stderr=subprocess.STDOUT)
    log(f"started dockerd (pid {proc.pid}, log {logfile.name})")
    try:
        deadline = time.monotonic() + 60
        while not docker_answers():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise Failure(f"dockerd did not come up; see {logfile.name}")
            time.sleep(0.5)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        logfile.close()
        log(f"stopped dockerd (pid {proc.pid})")


def image_exists(tag: str) -> bool:
    return run(["docker", "image", "inspect", tag], check=False, capture=True).returncode == 0


def image_label(tag: str, label: str) -> str:
    fmt = '{{ index .Config.Labels "%s" }}' % label  # noqa: UP031 - Go template braces
    return run(["docker", "image", "inspect", "-f", fmt, tag], capture=True).stdout.strip()


def image_size(tag: str) -> int:
    return int(run(["docker", "image", "inspect", "-f", "{{.Size}}", tag], capture=True).stdout)


# --- the local base image -------------------------------------------------------------------


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (one-line or deb822 sources)."""
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for line in text.splitlines():
            line = line.strip()
            one_line = re.match(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+bookworm\s", line)
            if one_line and "security" not in one_line.group(1):
                return one_line.group(1)
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if (
                uris
                and suites
                and "bookworm" in suites.group(1).split()
                and "security" not in uris.group(1)
            ):
                return uris.group(1)
    return DEFAULT_MIRROR


def pip_settings() -> tuple[str, dict[str, str]]:
    """This machine's pip config (as ``pip.conf``) and index variables that a build can use.

    Local paths (``file://`` indexes, find-links folders) are dropped: they are not in the
    image. The CA bundle is always the one copied into the base.
    """
    lines = ["[global]", f"cert = {CA_BUNDLE}"]
    # The machine's own pip (the project venv has none).
    pip = shutil.which("pip3") or shutil.which("pip")
    listed = run([pip, "config", "list"], check=False, capture=True).stdout if pip else ""
    for entry in listed.splitlines():
        match = re.match(r"^[\w:.-]*?\.?([\w-]+)='(.*)'$", entry.strip())
        if not match:
            continue
        key, value = match.groups()
        if key in ("index-url", "extra-index-url", "trusted-host"):
            kept = [v for v in value.split() if key == "trusted-host" or v.startswith("http")]
            if kept:
                lines.append(f"{key} = {' '.join(kept)}")
    env = {
        name: value
        for name in ("PIP_INDEX_URL", "UV_INDEX_URL", "UV_DEFAULT_INDEX")
        if (value := os.environ.get(name, "")).startswith("http")
    }
    return "\n".join(dict.fromkeys(lines)) + "\n", env


def ensure_rootfs(workdir: Path) -> None:
    if image_exists(ROOTFS_IMAGE):
        log(f"reusing {ROOTFS_IMAGE}")
        return
    ensure_packages(["debootstrap"])
    mirror = debian_mirror()
    rootfs = workdir / "rootfs"
    log(f"debootstrap bookworm from {mirror} (a few minutes)")
    run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={BASE_PACKAGES}",
            "bookworm",
            str(rootfs),
            mirror,
        ],
        capture=True,
    )
    # What Debian's -slim images leave out too (python:3.11-slim is built on bookworm-slim).
    junk_dirs = (
        "var/cache/apt/archives",
        "var/lib/apt/lists",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
        "usr/share/groff",
        "usr/share/lintian",
    )
    for junk in junk_dirs:
        for child in (rootfs / junk).glob("*"):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            elif child.name != "lock":
                child.unlink()
    log(f"docker import -> {ROOTFS_IMAGE}")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    run(["docker", "import", "-", ROOTFS_IMAGE], stdin=tar.stdout, capture=True)
    if tar.wait() != 0:
        raise Failure("tar of the debootstrap root failed")
    shutil.rmtree(rootfs)


def ensure_base(workdir: Path) -> str:
    """The local stand-in for python:3.11-slim; rebuilt only when its inputs change."""
    pip_conf, index_env = pip_settings()
    context = workdir / "base"
    context.mkdir()
    shutil.copy(CA_BUNDLE, context / "ca-certificates.crt")
    (context / "pip.conf").write_text(pip_conf)
    env_lines = "".join(f'ENV {k}="{v}"\n' for k, v in sorted(index_env.items()))
    dockerfile = f"""FROM {ROOTFS_IMAGE}
COPY ca-certificates.crt {CA_BUNDLE}
COPY pip.conf /etc/pip.conf
ENV LANG=C.UTF-8 \\
    SSL_CERT_FILE={CA_BUNDLE} \\
    REQUESTS_CA_BUNDLE={CA_BUNDLE} \\
    PIP_DISABLE_PIP_VERSION_CHECK=1
{env_lines}RUN python --version && python3 -m venv --help >/dev/null && python3 -m pip --version
"""
    (context / "Dockerfile").write_text(dockerfile)
    digest = hashlib.sha256()
    for name in ("Dockerfile", "pip.conf", "ca-certificates.crt"):
        digest.update((context / name).read_bytes())
    inputs = digest.hexdigest()[:16]
    if image_exists(BASE_IMAGE) and image_label(BASE_IMAGE, "mlplatform.inputs") == inputs:
        log(f"reusing {BASE_IMAGE}")
        return BASE_IMAGE
    global BASE_BUILT
    BASE_BUILT = True
    ensure_rootfs(workdir)
    log(f"building {BASE_IMAGE}")
    run(
        ["docker", "build", "--label", f"mlplatform.inputs={inputs}", "-t", BASE_IMAGE, "."],
        cwd=context,
        capture=True,
    )
    version = run(["docker", "run", "--rm", BASE_IMAGE, "python", "--version"], capture=True)
    if not version.stdout.startswith("Python 3.11"):
        raise Failure(f"the base image runs {version.stdout.strip()}, not Python 3.11")
    return BASE_IMAGE


# --- building the service images ------------------------------------------------------------


# Built too, with SERVICE=serving: the serving image with the scikit-learn fallback.
VARIANTS = {"serving-sklearn": ("serving", ["--build-arg", "SERVING_EXTRAS=sklearn"])}


BUILD_LABEL = "mlplatform.test-build=1"


def prune_replaced_builds() -> None:
    """Delete the images of earlier runs whose tags this run's builds took over (dangling
    now): each run would otherwise leave ~4 GB behind, until the disk is full."""
    result = run(
        ["docker", "image", "prune", "--force", "--filter", f"label={BUILD_LABEL}"],
        capture=True,
        check=False,
    )
    reclaimed = result.stdout.strip().splitlines()[-1:] or ["nothing reclaimed"]
    log(f"pruned replaced builds: {reclaimed[0]}")


def build_one(base: str, name: str, tag: str) -> float:
    service, extra = VARIANTS.get(name, (name, []))
    started = time.monotonic()
    log(f"building {tag}")
    result = run(
        [
            "docker",
            "build",
            # Host network: a build reaches PyPI exactly as this machine does.
            "--network",
            "host",
            "--build-arg",
            f"BASE_IMAGE={base}",
            # Marks what this harness built, so the previous builds it replaced can be pruned.
            "--label",
            BUILD_LABEL,
            "--build-arg",
            f"SERVICE={service}",
            *extra,
            "-t",
            tag,
            ".",
        ],
        cwd=REPO,
        capture=True,
        check=False,
    )
    if result.returncode != 0:
        raise Failure(f"docker build of {tag} failed:\n{result.stdout[-6000:]}")
    seconds = time.monotonic() - started
    log(f"built {tag} in {seconds:.0f}s")
    return seconds


def build_images(
    base: str, version: str, services: Sequence[str], jobs: int
) -> tuple[dict[str, str], dict[str, float]]:
    """Build the images, ``jobs`` at a time (downloads overlap with installs), longest first."""
    from concurrent.futures import ThreadPoolExecutor

    services = [*services, *(v for v, (of, _) in VARIANTS.items() if of in services)]
    longest_first = sorted(services, key=lambda n: BUILD_ORDER.index(n))
    tags = {name: f"mlplatform-{name}:{version}" for name in longest_first}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {name: pool.submit(build_one, base, name, tags[name]) for name in longest_first}
        seconds = {name: future.result() for name, future in futures.items()}
    return {name: tags[name] for name in services}, seconds


def check_variants(tags: dict[str, str]) -> None:
    """The default serving image has no scikit-learn; the variant has it, and serving sees it.
    Both have uvloop, the event loop `make bench` measured (uvicorn takes it when installed)."""
    probe = (
        "import importlib.util; from mlplatform_serving.runtime import has_sklearn; "
        "print(has_sklearn(), importlib.util.find_spec('uvloop') is not None)"
    )
    for name, expected in (("serving", "False True"), ("serving-sklearn", "True True")):
        if name not in tags:
            continue
        got = run(
            ["docker", "run", "--rm", "--entrypoint", "python", tags[name], "-c", probe],
            capture=True,
        ).stdout.strip()
        if got != expected:
            raise Failure(f"{tags[name]}: (scikit-learn, uvloop) is {got}, expected {expected}")
        log(f"{tags[name]}: scikit-learn, uvloop installed: {got}")


# --- running them ---------------------------------------------------------------------------


class Containers:
    """Containers started by this run: unique names, all removed at the end."""

    def __init__(self) -> None:
        self.prefix = f"mlplatform-imgtest-{uuid.uuid4().hex[:8]}"
        self.names: list[str] = []

    def _args(self, name: str, env: dict[str, str], extra: Sequence[str]) -> list[str]:
        full = f"{self.prefix}-{name}"
        self.names.append(full)
        args = ["--name", full, "--network", "host", *extra]
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        return args

    def job(
        self, name: str, image: str, env: dict[str, str], command: Sequence[str]
    ) -> subprocess.CompletedProcess[str]:
        """Run a one-shot container to the end (kept until cleanup, so its logs can be read)."""
        args = self._args(name, env, [])
        return run(["docker", "run", *args, image, *command], capture=True, check=False)

    def start(self, name: str, image: str, env: dict[str, str], extra: Sequence[str] = ()) -> str:
        args = self._args(name, env, extra)
        run(["docker", "run", "-d", *args, image], capture=True)
        return args[1]

    @staticmethod
    def logs(name: str) -> str:
        return run(["docker", "logs", "--tail", "60", name], check=False, capture=True).stdout

    def remove_all(self) -> None:
        for name in self.names:
            run(["docker", "rm", "-f", "-v", name], check=False, capture=True)
        if self.names:
            log(f"removed {len(self.names)} containers")


def wait_http(url: str, container: str, timeout: float, expect: int = 200) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        state = run(
            ["docker", "inspect", "-f", "{{.State.Status}}", container], capture=True
        ).stdout.strip()
        if state != "running":
            raise Failure(f"{container} is {state}:\n{Containers.logs(container)}")
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == expect:
                return response
            last = f"HTTP {response.status_code}: {response.text[:300]}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.5)
    raise Failure(
        f"{url} not {expect} after {timeout:.0f}s ({last}):\n{Containers.logs(container)}"
    )


def wait_healthy(container: str, timeout: float) -> None:
    """Docker's own HEALTHCHECK (the image's command) reports healthy."""
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = run(
            ["docker", "inspect", "-f", "{{.State.Health.Status}}", container], capture=True
        ).stdout.strip()
        if status == "healthy":
            return
        time.sleep(1)
    raise Failure(f"{container}: HEALTHCHECK status {status!r} after {timeout:.0f}s")


def expect_job(result: subprocess.CompletedProcess[str], what: str) -> str:
    if result.returncode != 0:
        raise Failure(f"{what} exited {result.returncode}:\n{result.stdout[-4000:]}")
    log(f"{what}: ok; last line: {result.stdout.strip().splitlines()[-1][:200]}")
    return result.stdout


def dataset_rows(n: int) -> tuple[list[dict[str, float]], list[int]]:
    with (REPO / "data" / "breast_cancer.csv").open() as f:
        rows = list(csv.DictReader(f))[:n]
    targets = [int(float(r.pop("target"))) for r in rows]
    return [{k: float(v) for k, v in r.items()} for r in rows], targets


def check_page(url: str, api_url: str) -> None:
    """The page, rendered by Chromium, names the serving URL and the model it serves."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url)
            expect(page.get_by_text(f"Serving API: {api_url}")).to_be_visible(timeout=60_000)
            expect(
                page.get_by_text(re.compile(r"Model v1 \(classification\) · 30 features"))
            ).to_be_visible(timeout=60_000)
            shot = Path(tempfile.gettempdir()) / "mlplatform-webapp-image.png"
            page.screenshot(path=str(shot), full_page=True)
            log(f"web app page names {api_url} and model v1 (screenshot {shot})")
        finally:
            browser.close()


def exercise(tags: dict[str, str], containers: Containers) -> None:
    from mlplatform_common import datalog, keys
    from mlplatform_common.registry import ModelRegistry
    from tests.conftest import S3_KEYS, S3Server

    signing_key = secrets.token_hex(16)
    admin_token = secrets.token_hex(8)
    writer_token = secrets.token_hex(8)
    s3 = S3Server().start()
    try:
        store = s3.store("mlplatform")
        registry = ModelRegistry(store, signing_key.encode())
        env = {
            "MLPLATFORM_STORE_URL": "s3://mlplatform",
            "MLPLATFORM_S3_ENDPOINT": s3.endpoint,
            "MLPLATFORM_S3_ACCESS_KEY": S3_KEYS["access_key"],
            "MLPLATFORM_S3_SECRET_KEY": S3_KEYS["secret_key"],
            "MLPLATFORM_SIGNING_KEY": signing_key,
        }
        log(f"S3 server (SeaweedFS) on {s3.endpoint}")

        # The bootstrap Job's command, twice: the second run must leave v1 alone.
        bootstrap = ["train", "--if-missing", "--data", "/app/data/breast_cancer.csv"]
        expect_job(containers.job("bootstrap", tags["retrainer"], env, bootstrap), "bootstrap")
        alias = registry.production()
        if not alias or alias["version"] != "v1":
            raise Failure(f"after the bootstrap train, production is {alias}, not v1")
        again = expect_job(
            containers.job("bootstrap-again", tags["retrainer"], env, bootstrap), "bootstrap again"
        )
        if "already in production" not in again or registry.versions() != ["v1"]:
            raise Failure(f"a second bootstrap changed the registry: {registry.versions()}")

        port = free_port()
        serving = containers.start(
            "serving",
            tags["serving"],
            {
                **env,
                "MLPLATFORM_PORT": str(port),
                "MLPLATFORM_ADMIN_TOKEN": admin_token,
                "MLPLATFORM_WRITER_TOKEN": writer_token,
                "MLPLATFORM_RETRAIN_EVERY": "0",
                "MLPLATFORM_LOG_FLUSH_SECONDS": "0.5",
            },
            ["--health-interval", "2s", "--health-start-period", "5s"],
        )
        api = f"http://127.0.0.1:{port}"
        wait_http(f"{api}/ready", serving, timeout=120)
        features, targets = dataset_rows(40)
        one = httpx.post(f"{api}/predict", json={"features": features[0]}, timeout=30)
        if one.status_code != 200:
            raise Failure(f"/predict answered {one.status_code}: {one.text[:500]}")
        answer = json.dumps(one.json())
        if "v1" not in answer or "prediction_id" not in answer:
            raise Failure(f"/predict answer lacks the model version or an id: {answer[:500]}")
        if one.json().get("engine") != "onnxruntime":
            raise Failure(f"serving image did not answer with ONNX Runtime: {answer[:500]}")
        batch = httpx.post(f"{api}/predict", json={"instances": features}, timeout=30)
        batch.raise_for_status()
        predictions = batch.json()["predictions"]
        for prediction, target in zip(predictions[:20], targets, strict=False):
            fb = httpx.post(
                f"{api}/feedback",
                json={"prediction_id": prediction["prediction_id"], "target": target},
                headers={"Authorization": f"Bearer {writer_token}"},
                timeout=30,
            )
            if fb.status_code != 201:
                raise Failure(f"/feedback answered {fb.status_code}: {fb.text[:500]}")
        log(f"serving image: /ready, /predict (1 + {len(predictions)} rows), 20 x /feedback ok")
        wait_healthy(serving, timeout=60)
        log("serving image: Docker HEALTHCHECK healthy")

        webapp_port = free_port()
        webapp = containers.start(
            "webapp",
            tags["webapp"],
            {
                "MLPLATFORM_API_URL": api,
                "MLPLATFORM_WEBAPP_PORT": str(webapp_port),
                "MLPLATFORM_WRITER_TOKEN": writer_token,
            },
            ["--health-interval", "2s", "--health-start-period", "5s"],
        )
        health = wait_http(f"http://127.0.0.1:{webapp_port}/_stcore/health", webapp, timeout=120)
        if health.text.strip() != "ok":
            raise Failure(f"Streamlit health said {health.text!r}")
        check_page(f"http://127.0.0.1:{webapp_port}/", api)
        wait_healthy(webapp, timeout=60)
        log("web app image: /_stcore/health ok, Docker HEALTHCHECK healthy")

        # The prediction log is flushed every 0.5 s; wait until it is in the store.
        deadline = time.monotonic() + 30
        while not store.list_keys("production/predictions/"):
            if time.monotonic() > deadline:
                raise Failure("serving wrote no prediction log to the store")
            time.sleep(0.5)
        # ...with the embedding, which the image computes without scikit-learn.
        logged = datalog.read_predictions(store)
        if len(logged) < 41 or logged["PCA_1"].isna().any():
            raise Failure(f"the prediction log lacks rows or their embedding:\n{logged.head()}")
        log(f"serving image: {len(logged)} prediction log rows in the store, with the embedding")

        expect_job(
            containers.job(
                "reporter", tags["reporter"], {**env, "MLPLATFORM_PUSHGATEWAY_URL": ""}, ["run"]
            ),
            "reporter run",
        )
        summaries = [k for k in store.list_keys("reports/") if k.endswith("/summary.json")]
        if len(summaries) != 1:
            raise Failure(f"expected one report summary in the store, found {summaries}")
        summary = store.get_json(summaries[0])
        if summary.get("model_version") != "v1":
            raise Failure(f"report summary names model {summary.get('model_version')!r}")
        log(f"reporter image: {summaries[0]} for model v1")

        expect_job(
            containers.job(
                "retrainer",
                tags["retrainer"],
                {**env, "MLPLATFORM_ROLLOUT": "none"},
                ["run", "--force"],
            ),
            "retrainer run --force",
        )
        versions = registry.versions()
        if versions != ["v1", "v2"]:
            raise Failure(f"after a forced retrain the registry holds {versions}, not v1 and v2")
        manifest = registry.manifest("v2")
        if manifest.get("parent") != "v1" or (registry.production() or {}).get("version") != "v2":
            raise Failure(f"v2 is not a promoted child of v1: {manifest.get('parent')}")
        if not store.exists(keys.WATERMARK):
            raise Failure("the retrainer left no watermark")
        log("retrainer image: v2 published (parent v1) and promoted")
    finally:
        s3.close()


# What each image's configuration says, set by its final stage of the one Dockerfile (which
# SERVICE selects): entrypoint, command, exposed ports, health check, title label.
EXPECTED_CONFIG: dict[str, dict[str, Any]] = {
    "serving": {
        "Entrypoint": None,
        "Cmd": ["python", "-m", "mlplatform_serving"],
        "ExposedPorts": ["8080/tcp"],
        "Health": "CMD",
    },
    "webapp": {
        "Entrypoint": None,
        "Cmd": ["python", "-m", "mlplatform_webapp"],
        "ExposedPorts": ["8501/tcp"],
        "Health": "CMD",
    },
    "reporter": {
        "Entrypoint": ["python", "-m", "mlplatform_reporter"],
        "Cmd": ["run"],
        "ExposedPorts": [],
        "Health": "NONE",
    },
    "retrainer": {
        "Entrypoint": ["python", "-m", "mlplatform_retrainer"],
        "Cmd": ["run"],
        "ExposedPorts": [],
        "Health": "NONE",
    },
}


def check_config(tags: dict[str, str]) -> None:
    """Each image is its own service's: user 10001, its entrypoint, ports, health check, label."""
    for name, tag in tags.items():
        service = VARIANTS.get(name, (name, []))[0]
        config = json.loads(
            run(["docker", "image", "inspect", "-f", "{{json .Config}}", tag], capture=True).stdout
        )
        got = {
            "User": config.get("User"),
            "Entrypoint": config.get("Entrypoint"),
            "Cmd": config.get("Cmd"),
            "ExposedPorts": sorted(config.get("ExposedPorts") or {}),
            "Health": ((config.get("Healthcheck") or {}).get("Test") or [None])[0],
            "Title": (config.get("Labels") or {}).get("org.opencontainers.image.title"),
        }
        expected = {**EXPECTED_CONFIG[service], "User": "10001", "Title": f"mlplatform-{service}"}
        if got != expected:
            raise Failure(f"{tag}: configuration {got}, expected {expected}")
    log(f"image configurations as expected: {', '.join(tags.values())}")


def report_sizes(tags: dict[str, str]) -> dict[str, int]:
    """Print each image's size (uncompressed, as ``docker images`` shows it) as a table."""
    sizes = {name: image_size(tag) for name, tag in tags.items()}
    print("\n| image | size (MB) |\n|---|---:|")
    for name, tag in tags.items():
        print(f"| `{tag}` | {sizes[name] / 1e6:.0f} |")
    print(flush=True)
    return sizes


def machine() -> str:
    import platform

    meminfo = Path("/proc/meminfo").read_text()
    mem = int(re.search(r"^MemTotal:\s+(\d+)", meminfo, re.M).group(1))  # type: ignore[union-attr]
    release = Path("/etc/os-release")
    found = re.search(r'PRETTY_NAME="([^"]+)"', release.read_text()) if release.is_file() else None
    osname = found.group(1) if found else "unknown OS"
    engine = run(
        ["docker", "version", "-f", "{{.Server.Version}}"], check=False, capture=True
    ).stdout.strip()
    return (
        f"{os.cpu_count()} cores (nproc), {mem / 1024**2:.0f} GiB memory, {osname}, "
        f"kernel {platform.release()}, Docker Engine {engine}"
    )


def write_bench(
    tags: dict[str, str],
    sizes: dict[str, int],
    build_seconds: dict[str, float],
    base: str,
    serving_max_mb: float,
) -> None:
    """Replace (or append) the image section of bench/BENCHMARKS.md; the rest is kept."""
    from datetime import UTC, datetime

    lines = [
        BENCH_HEADING,
        "",
        f"Produced by `make test-images` (`python -m tests.images.run_image_tests --write-bench`) "
        f"on {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}, this run "
        f"{time.monotonic() - STARTED:.0f} s in all, "
        + ("from a cold cache (base image built)." if BASE_BUILT else "with a warm cache."),
        f"Machine: {machine()}.",
        f"Base: `{base}` ({image_size(base) / 1e6:.0f} MB), the local stand-in for "
        "`python:3.11-slim` (debootstrap of bookworm, Debian's Python 3.11, -slim's excludes).",
        "Sizes are uncompressed, as `docker images` shows them (MB = 10^6 bytes); build times are",
        "this run's (two builds at a time; a layer cache, if any, was used).",
        "",
        "| image | size (MB) | build (s) |",
        "|---|---:|---:|",
    ]
    for name, tag in tags.items():
        lines.append(f"| `{tag}` | {sizes[name] / 1e6:.0f} | {build_seconds[name]:.0f} |")
    serving_mb = sizes.get("serving", 0) / 1e6
    verdict = "met" if serving_mb <= serving_max_mb else f"**not met** ({serving_mb:.0f} MB)"
    lines += ["", f"Budget: serving at most {serving_max_mb:.0f} MB: {verdict}."]
    if "serving" in tags:
        # What the serving venv is made of (MB on disk), largest first.
        du = run(
            [
                "docker",
                "run",
                "--rm",
                "--entrypoint",
                "sh",
                tags["serving"],
                "-c",
                "cd /app/.venv/lib/python3*/site-packages && du -sm * | sort -rn | head -8",
            ],
            capture=True,
        ).stdout.split()
        parts = ", ".join(f"{name} {mb}" for mb, name in zip(du[::2], du[1::2], strict=False))
        lines.append(f"Largest packages in the serving image (MB): {parts}.")
    lines.append("")
    section = "\n".join(lines)
    text = BENCH.read_text() if BENCH.is_file() else "# Benchmarks\n"
    start = text.find(BENCH_HEADING + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        following = text.find("\n## ", start + len(BENCH_HEADING))
        text = text[:start] + section + (text[following + 1 :] if following >= 0 else "")
    BENCH.write_text(text)
    log(f"wrote the '{BENCH_HEADING}' section of {BENCH.relative_to(REPO)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--build-only", action="store_true", help="build the images and print their sizes"
    )
    parser.add_argument("--services", nargs="+", choices=SERVICES, default=list(SERVICES))
    parser.add_argument("--jobs", type=int, default=2, help="images built at the same time")
    parser.add_argument(
        "--write-bench",
        action="store_true",
        help=f"replace the '{BENCH_HEADING}' section of bench/BENCHMARKS.md with this run",
    )
    parser.add_argument(
        "--serving-max-mb",
        type=float,
        default=SERVING_MAX_MB,
        help="fail if the serving image is larger (MB of 10^6 bytes, uncompressed)",
    )
    args = parser.parse_args(argv)
    if not args.build_only and sorted(args.services) != sorted(SERVICES):
        parser.error("running the images needs all four; use --build-only for a subset")
    os.chdir(REPO)
    version = app_version()
    log(f"images tagged {version} (appVersion of {CHART.relative_to(REPO)}, else the default)")
    packages = []
    if not docker_answers() and not shutil.which("dockerd"):
        packages.append("docker.io")
    if not args.build_only:
        packages.append("chromium")
    containers = Containers()
    try:
        ensure_packages(packages)
        with (
            tempfile.TemporaryDirectory(prefix="mlplatform-images-") as tmp,
            docker_engine(Path(tmp)),
        ):
            base = ensure_base(Path(tmp))
            tags, build_seconds = build_images(base, version, args.services, args.jobs)
            prune_replaced_builds()
            sizes = report_sizes(tags)
            check_config(tags)
            check_variants(tags)
            try:
                if not args.build_only:
                    exercise(tags, containers)
            finally:
                containers.remove_all()
            if args.write_bench:
                write_bench(tags, sizes, build_seconds, base, args.serving_max_mb)
        serving = sizes.get("serving", 0) / 1e6
        if serving > args.serving_max_mb:
            raise Failure(f"serving image is {serving:.0f} MB, over {args.serving_max_mb:.0f} MB")
    except Failure as exc:
        log(f"FAILED: {exc}")
        print("images: 0 passed, 1 failed", flush=True)
        return 1
    log(f"all image checks passed in {time.monotonic() - STARTED:.0f}s")
    print("images: 1 passed, 0 failed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
