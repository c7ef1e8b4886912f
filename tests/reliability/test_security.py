"""Security: admin tokens, secrets that never leave the process, known vulnerabilities.

The chart's part (non-root, read-only root filesystem, dropped capabilities, NetworkPolicies,
minimal RBAC, checkov) is tested in ``tests/chart``; RELIABILITY.md lists those tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlplatform_common import keys
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import S3Store, Store
from tests.conftest import REPO, S3Server, ServingProcess, publish_trained
from tests.reliability.conftest import HERE, Figures, output_so_far

SIGNING_KEY = "sk-RELIABILITY-signing-7d2f0c61e4"
ADMIN_TOKEN = "at-RELIABILITY-admin-93b1e4a7c2"
WRITER_TOKEN = "wt-RELIABILITY-writer-5c0e8b21f4"
WRITER = {"Authorization": f"Bearer {WRITER_TOKEN}"}
S3_ACCESS = "AKRELIABILITY5A8E21"
S3_SECRET = "s3-RELIABILITY-secret-0b9f3d7e"
SECRETS = {
    "signing key": SIGNING_KEY,
    "admin token": ADMIN_TOKEN,
    "writer token": WRITER_TOKEN,
    "S3 secret key": S3_SECRET,
}


def secret_env(server: S3Server, bucket: str, **extra: str) -> dict[str, str]:
    return {
        "MLPLATFORM_STORE_URL": f"s3://{bucket}",
        "MLPLATFORM_S3_ENDPOINT": server.endpoint,
        "MLPLATFORM_S3_ACCESS_KEY": S3_ACCESS,
        "MLPLATFORM_S3_SECRET_KEY": S3_SECRET,
        "MLPLATFORM_SIGNING_KEY": SIGNING_KEY,
        "MLPLATFORM_ADMIN_TOKEN": ADMIN_TOKEN,
        "MLPLATFORM_WRITER_TOKEN": WRITER_TOKEN,
        "MLPLATFORM_LOG_FLUSH_SECONDS": "0.5",
        "MLPLATFORM_RETRAIN_EVERY": "0",
        "MLPLATFORM_LOG_LEVEL": "DEBUG",
        **extra,
    }


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    """A SeaweedFS of this module's own, whose one identity has the secret keys above."""
    server = S3Server(S3_ACCESS, S3_SECRET).start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def secret_store(s3_server: S3Server, trained: Any, shipped_dataset: Any) -> S3Store:
    from mlplatform_retrainer.job import upload_dataset

    store = S3Store(f"sec-{os.getpid()}", s3_server.endpoint, S3_ACCESS, S3_SECRET)
    store.ensure()
    upload_dataset(store, shipped_dataset)
    registry = ModelRegistry(store, SIGNING_KEY.encode())
    publish_trained(registry, trained, shipped_dataset)  # v1 in production
    publish_trained(registry, trained, shipped_dataset, promote=False)  # v2, not served
    return store


@pytest.fixture(scope="module")
def secured(s3_server: S3Server, secret_store: S3Store) -> Iterator[ServingProcess]:
    proc = ServingProcess(secret_env(s3_server, secret_store.bucket)).start()
    yield proc
    proc.stop()


# -- admin endpoints ------------------------------------------------------------------------

WRONG_AUTH = [
    None,
    "",
    "Bearer",
    "Bearer wrong",
    f"Bearer {ADMIN_TOKEN[:-1]}",
    f"Bearer {ADMIN_TOKEN}x",
    f"Bearer {ADMIN_TOKEN.upper()}",
    f"Bearer  {ADMIN_TOKEN}",
    f"Basic {ADMIN_TOKEN}",
    f"Token {ADMIN_TOKEN}",
    ADMIN_TOKEN,
]


@pytest.mark.parametrize("path", ["/admin/reload", "/admin/retrain"])
def test_admin_endpoints_refuse_missing_and_wrong_tokens(
    secured: ServingProcess, path: str
) -> None:
    with httpx.Client(base_url=secured.url, timeout=30) as c:
        for auth in WRONG_AUTH:
            headers = {} if auth is None else {"Authorization": auth}
            r = c.post(path, json={"version": "v2"}, headers=headers)
            assert r.status_code == 401, (auth, r.text)
            assert r.json()["type"] == "Unauthorized" and set(r.json()) == {"error", "type"}
            assert ADMIN_TOKEN not in r.text
        # The token anywhere but the Authorization header does not count.
        for headers, params in (
            ({"X-Admin-Token": ADMIN_TOKEN}, {}),
            ({}, {"token": ADMIN_TOKEN}),
            ({"Cookie": f"token={ADMIN_TOKEN}"}, {}),
        ):
            r = c.post(path, json={"version": "v2"}, headers=headers, params=params)
            assert r.status_code == 401, r.text
        # Nothing was reloaded by any of them; the right token works (the test can tell).
        assert c.get("/health").json()["model_version"] == "v1"
        if path == "/admin/reload":
            ok = c.post(
                path, json={"version": "v2"}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            )
            assert ok.status_code == 200 and c.get("/health").json()["model_version"] == "v2"
            back = c.post(
                path, json={"version": "v1"}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            )
            assert back.status_code == 200


def test_feedback_refuses_missing_and_wrong_writer_tokens_and_stores_nothing(
    secured: ServingProcess, secret_store: S3Store, rows: list[dict[str, float]]
) -> None:
    before = secret_store.list_keys("production/feedback/")
    wrong = [a.replace(ADMIN_TOKEN, WRITER_TOKEN) if a else a for a in WRONG_AUTH]
    with httpx.Client(base_url=secured.url, timeout=30) as c:
        for auth in wrong:
            headers = {} if auth is None else {"Authorization": auth}
            r = c.post("/feedback", json={"features": rows[0], "target": 1}, headers=headers)
            assert r.status_code == 401, (auth, r.text)
            assert r.json()["type"] == "Unauthorized" and set(r.json()) == {"error", "type"}
            assert r.headers["www-authenticate"].startswith("Bearer ")
            assert WRITER_TOKEN not in r.text
        for headers, params in (
            ({"X-Writer-Token": WRITER_TOKEN}, {}),
            ({}, {"token": WRITER_TOKEN}),
            ({"Cookie": f"token={WRITER_TOKEN}"}, {}),
        ):
            body = {"features": rows[0], "target": 1}
            r = c.post("/feedback", json=body, headers=headers, params=params)
            assert r.status_code == 401, r.text
        # the writer token opens no admin endpoint
        for path in (
            "/admin/reload",
            "/admin/retrain",
            "/admin/promote",
            "/admin/rollback",
            "/admin/unpin",
            "/admin/train",
            "/admin/datasets",
            "/admin/models",
        ):
            assert c.post(path, headers=WRITER).status_code == 401
    assert secret_store.list_keys("production/feedback/") == before


def test_the_token_is_compared_in_constant_time(
    local_store: Store,
    trained: Any,
    shipped_dataset: Any,
    monkeypatch: pytest.MonkeyPatch,
    rows: list[dict[str, float]],
) -> None:
    import hmac

    from fastapi.testclient import TestClient

    from mlplatform_serving import deps
    from mlplatform_serving.app import create_app
    from mlplatform_serving.settings import ServingSettings

    publish_trained(ModelRegistry(local_store, SIGNING_KEY.encode()), trained, shipped_dataset)
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(deps.hmac, "compare_digest", spy)
    settings = ServingSettings(
        signing_key=SIGNING_KEY, admin_token=ADMIN_TOKEN, writer_token=WRITER_TOKEN
    )
    with TestClient(create_app(settings, local_store)) as c:
        wrong = c.post("/admin/reload", headers={"Authorization": "Bearer nope"})
        right = c.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert (wrong.status_code, right.status_code) == (401, 200)
        pid = c.post("/predict", json={"features": rows[0]}).json()["predictions"][0]
        body = {"prediction_id": pid["prediction_id"], "target": 0}
        wrong = c.post("/feedback", json=body, headers={"Authorization": "Bearer nib"})
        right = c.post("/feedback", json=body, headers=WRITER)
        assert (wrong.status_code, right.status_code) == (401, 201)

    def raw(x: Any) -> bytes:
        return x.encode() if isinstance(x, str) else bytes(x)

    # (The registry's checksum comparisons go through the same function; they are not ours.)
    given = [(raw(a), raw(b)) for a, b in calls]
    assert (b"nope", ADMIN_TOKEN.encode()) in given
    assert (ADMIN_TOKEN.encode(), ADMIN_TOKEN.encode()) in given
    # a writer endpoint compares the given token with every key it accepts, matched or not
    assert (b"nib", WRITER_TOKEN.encode()) in given and (b"nib", ADMIN_TOKEN.encode()) in given
    assert (WRITER_TOKEN.encode(), WRITER_TOKEN.encode()) in given
    assert (WRITER_TOKEN.encode(), ADMIN_TOKEN.encode()) in given


# -- secrets never leave the process ---------------------------------------------------------


def _every_get(doc: dict[str, Any]) -> list[str]:
    paths = []
    for path, ops in doc["paths"].items():
        if "get" in ops:
            paths.append(path.replace("{name}", "mlplatform").replace("{report_id}", "nope"))
    return paths


def test_secrets_are_never_logged_or_returned(
    s3_server: S3Server,
    secured: ServingProcess,
    secret_store: S3Store,
    rows: list[dict[str, float]],
    figures: Figures,
) -> None:
    bodies: dict[str, str] = {}
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=secured.url, timeout=60) as c:
        doc = c.get("/openapi.json").json()
        for path in [*_every_get(doc), "/openapi.json", "/docs", "/redoc", "/nothing"]:
            bodies[f"GET {path}"] = c.get(path).text
        pid = c.post("/predict", json={"features": rows[0]}).json()["predictions"][0]
        bodies["POST /feedback"] = c.post(
            "/feedback", headers=WRITER, json={"prediction_id": pid["prediction_id"], "target": 0}
        ).text
        requests: dict[str, dict[str, Any]] = {
            "bad input": {"json": {"features": {"x": 1}}},
            "bad csv": {"content": b"a,b\n", "headers": {"content-type": "text/csv"}},
            "wrong token": {"headers": {"Authorization": "Bearer wrong"}},
        }
        for name, kw in requests.items():
            path = "/admin/reload" if name == "wrong token" else "/predict"
            bodies[name] = c.post(path, **kw).text
        bodies["reload missing version"] = c.post(
            "/admin/reload", json={"version": "v99"}, headers=auth
        ).text
        # A version signed with another key: the refusal must not show either key.
        manifest = secret_store.get_json(keys.model_file("v2", "manifest.json"))
        manifest["metrics"] = {"forged": True}
        secret_store.put_json(keys.model_file("v2", "manifest.json"), manifest)
        tampered = c.post("/admin/reload", json={"version": "v2"}, headers=auth)
        assert tampered.status_code == 503 and "invalid signature" in tampered.text
        bodies["reload tampered"] = tampered.text
        bodies["retrain without launcher"] = c.post("/admin/retrain", headers=auth).text

    # A retrainer run that rolls out to this server with the token, and one that fails.
    retrainer_env = {
        **os.environ,
        **secret_env(s3_server, secret_store.bucket),
        "MLPLATFORM_ROLLOUT": "local",
        "MLPLATFORM_SERVING_URL": secured.url,
    }
    # One after the other: at the same time, one would correctly exit "lock held".
    outputs = {
        name: subprocess.run(
            [sys.executable, "-m", "mlplatform_retrainer", "run", "--force"],
            cwd=REPO,
            env={**retrainer_env, **extra},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=300,
            check=False,
        ).stdout
        for name, extra in {
            "retrainer run": {},
            "retrainer run, serving unreachable": {"MLPLATFORM_SERVING_URL": "http://127.0.0.1:9"},
        }.items()
    }
    assert "retrain promoted" in outputs["retrainer run"] or "rejected" in outputs["retrainer run"]
    outputs["serving (DEBUG log)"] = output_so_far(secured)
    assert "serving model v3" in outputs["serving (DEBUG log)"]  # the rollout reached it

    leaks = [
        f"{what} in {where}"
        for where, text in {**bodies, **outputs}.items()
        for what, secret in SECRETS.items()
        if secret in text
    ]
    assert leaks == []
    figures.record(
        "secrets_hunt",
        responses_searched=len(bodies),
        process_logs_searched=len(outputs),
        secrets_searched=len(SECRETS),
        leaks=0,
    )


def test_settings_never_show_secrets_in_their_repr() -> None:
    from mlplatform_reporter.settings import ReporterSettings
    from mlplatform_retrainer.settings import RetrainerSettings
    from mlplatform_serving.settings import ServingSettings
    from mlplatform_webapp.settings import WebappSettings

    for cls in (ServingSettings, RetrainerSettings, WebappSettings, ReporterSettings):
        settings = cls(
            signing_key=SIGNING_KEY,
            admin_token=ADMIN_TOKEN,
            writer_token=WRITER_TOKEN,
            s3_secret_key=S3_SECRET,
        )
        for text in (repr(settings), str(settings), str(settings.model_dump())):
            assert all(secret not in text for secret in SECRETS.values()), text


# -- known vulnerabilities (pip-audit, from PyPI, in its own venv) ---------------------------

PIP_AUDIT = REPO / ".tools" / "pip-audit"
IGNORE_FILE = HERE / "pip-audit-ignore.txt"


def _pip_audit() -> Path:
    """pip-audit in ``.tools/pip-audit`` (installed from PyPI if missing)."""
    exe = PIP_AUDIT / "bin" / "pip-audit"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PIP_AUDIT)], check=True)
        subprocess.run(
            [str(PIP_AUDIT / "bin" / "pip"), "install", "-q", "pip-audit"], check=True, timeout=600
        )
    return exe


def _uv() -> str:
    uv = shutil.which("uv") or str(REPO / ".tools" / "bin" / "uv")
    assert Path(uv).exists(), "uv not found (make sync installs it)"
    return uv


def ignored_vulnerabilities() -> dict[str, str]:
    """``ID  # reason`` lines of the ignore file; a line without a reason is an error."""
    ignored = {}
    for line in IGNORE_FILE.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        vuln, _, reason = line.partition("#")
        assert reason.strip(), f"{IGNORE_FILE.name}: {line!r} needs a reason after '#'"
        ignored[vuln.strip()] = reason.strip()
    return ignored


def _export_requirements(tmp_path: Path) -> Path:
    """The locked runtime dependencies of every package, as a requirements file."""
    requirements = tmp_path / "requirements.txt"
    subprocess.run(
        [
            _uv(),
            "export",
            "--frozen",
            "--all-packages",
            "--no-dev",
            "--no-emit-workspace",
            "--no-hashes",
            "-o",
            str(requirements),
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return requirements


def test_the_locked_dependencies_have_no_known_vulnerability_without_a_note(
    tmp_path: Path, figures: Figures
) -> None:
    exe = _pip_audit()
    requirements = _export_requirements(tmp_path)
    ignored = ignored_vulnerabilities()
    report = tmp_path / "audit.json"
    cmd = [
        str(exe),
        "-r",
        str(requirements),
        "--no-deps",
        "--disable-pip",
        "--format",
        "json",
        "--progress-spinner",
        "off",
        "-o",
        str(report),
    ]
    for vuln in ignored:
        cmd += ["--ignore-vuln", vuln]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    audit = json.loads(report.read_text())
    deps = audit["dependencies"]
    found = [
        f"{d['name']} {d['version']}: {v['id']} (fixed in {', '.join(v['fix_versions']) or '-'})"
        for d in deps
        for v in d.get("vulns", [])
    ]
    unaudited = [d["name"] for d in deps if d.get("skip_reason")]
    figures.record(
        "pip_audit",
        packages=len(deps),
        audited=len(deps) - len(unaudited),
        unaudited=len(unaudited),
        vulnerabilities=found,
        ignored_with_a_note=sorted(ignored),
    )
    assert found == [], f"known vulnerabilities (fix, or note them in {IGNORE_FILE.name}): {found}"
    if unaudited:
        # pip-audit reports "No known vulnerabilities found" even when it could not look any
        # package up; that must never read as a pass. Say why, in the test report.
        version = subprocess.run(
            [str(exe), "--version"], capture_output=True, text=True, check=True
        ).stdout.split()[-1]
        probe = httpx.get(f"https://pypi.org/pypi/pip-audit/{version}/json", timeout=30)
        if probe.status_code != 200:
            pytest.xfail(
                f"pip-audit could not audit {len(unaudited)} of {len(deps)} packages: its "
                f"service, PyPI's per-version JSON API, answers {probe.status_code} from here "
                f"(https://pypi.org/pypi/<name>/<version>/json)"
            )
        pytest.fail(f"pip-audit could not audit: {unaudited}\n{done.stderr[-2000:]}")


def test_pypi_lists_no_vulnerability_for_the_locked_packages_at_their_latest_release(
    tmp_path: Path, figures: Figures
) -> None:
    """What can be audited from this machine while pip-audit's service cannot: PyPI's project
    JSON (``/pypi/<name>/json``, which answers here) lists the known vulnerabilities of the
    project's latest release. For every locked package at its latest release, that list is
    exactly the list for the locked version; packages behind their latest release are named in
    the figures, not audited."""
    from concurrent.futures import ThreadPoolExecutor

    from packaging.version import Version

    locked = [
        tuple(line.split(";")[0].strip().split("=="))
        for line in _export_requirements(tmp_path).read_text().splitlines()
        if "==" in line and not line.lstrip().startswith("#")
    ]
    assert len(locked) > 50, locked
    ignored = ignored_vulnerabilities()

    def project(name: str) -> dict[str, Any]:
        r = httpx.get(f"https://pypi.org/pypi/{name}/json", timeout=60)
        assert r.status_code == 200, f"PyPI answered {r.status_code} for {name}"
        data: dict[str, Any] = r.json()
        return data

    with ThreadPoolExecutor(max_workers=8) as pool:
        projects = list(pool.map(project, [name for name, _ in locked]))
    found, behind = [], []
    for (name, version), data in zip(locked, projects, strict=True):
        latest = data["info"]["version"]
        if Version(latest) != Version(version):
            behind.append(f"{name} {version} (latest {latest})")
            continue
        for vuln in data.get("vulnerabilities") or []:
            ids = {vuln["id"], *(vuln.get("aliases") or [])}
            if not vuln.get("withdrawn") and not ids & set(ignored):
                found.append(f"{name} {version}: {vuln['id']} (fixed in {vuln.get('fixed_in')})")
    figures.record(
        "pypi_project_vulnerabilities",
        packages=len(locked),
        audited_at_latest_release=len(locked) - len(behind),
        behind_latest_not_audited=behind,
        vulnerabilities=found,
    )
    assert found == [], f"known vulnerabilities (fix, or note them in {IGNORE_FILE.name}): {found}"
