"""checkov's Kubernetes policies on the rendered manifests of every variant: nothing fails.

checkov lives in a venv of its own (its pins clash with the workspace's), created here when
missing: ``python3 -m venv .tools/checkov && .tools/checkov/bin/pip install checkov==<pin>``.
Checks that do not fit a resource are skipped on the resource, with the reason, by a
``checkov.io/skipN`` annotation in the chart; the ones below do not fit the chart as a whole.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.chart.conftest import VARIANTS, clean, rendered_variant
from tests.conftest import REPO

CHECKOV_VERSION = "3.3.30"
VENV = REPO / ".tools" / "checkov"
CHECKOV = VENV / "bin" / "checkov"

SKIPS = {
    # kind loads locally built images; `Always` would make the kubelet pull a tag that exists
    # in no registry. Tags are pinned (never latest), which is what this check is after.
    "CKV_K8S_15": "imagePullPolicy IfNotPresent is required by kind-loaded images",
    # our images are built and loaded locally, so there is no registry digest to pin; the
    # third-party images are pinned to release tags (test_images_are_pinned...)
    "CKV_K8S_43": "locally built images have no registry digest; tags are pinned",
    # Helm installs into the release namespace (`helm install -n`); the manifests name none
    "CKV_K8S_21": "the namespace is the Helm release's, not hard-coded",
    # pydantic-settings reads MLPLATFORM_* from the environment; the values come from
    # secretKeyRef (never inline), which test_secrets_are_generated... asserts
    "CKV_K8S_35": "the services read settings from env vars, filled from Secrets by reference",
}


def ensure_checkov() -> Path:
    """The pinned checkov, installed into its own venv if it is not there (never skipped)."""
    if not CHECKOV.is_file():
        python = shutil.which("python3") or "python3"
        subprocess.run([python, "-m", "venv", str(VENV)], check=True, timeout=300)
        subprocess.run(
            [str(VENV / "bin" / "pip"), "install", "-q", f"checkov=={CHECKOV_VERSION}"],
            check=True,
            timeout=1800,
        )
    assert CHECKOV.is_file(), f"{CHECKOV} missing after installing checkov"
    return CHECKOV


def test_checkov_passes_on_every_variant(tmp_path: Path) -> None:
    checkov = ensure_checkov()
    for variant in VARIANTS:
        objs = [clean(o) for o in rendered_variant(variant)]
        (tmp_path / f"{variant}.yaml").write_text(yaml.safe_dump_all(objs))
    out = subprocess.run(
        [
            str(checkov),
            "--directory",
            str(tmp_path),
            "--framework",
            "kubernetes",
            "--skip-download",
            "--compact",
            "--output",
            "json",
            "--skip-check",
            ",".join(SKIPS),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.stdout.strip(), out.stderr
    reports = json.loads(out.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [
        f"{f['check_id']} {f['check_name']}: {f['resource']} ({Path(f['file_path']).name})"
        for r in reports
        for f in r["results"]["failed_checks"]
    ]
    assert failed == [], "\n".join(failed)
    passed = sum(r["summary"]["passed"] for r in reports)
    skipped = [s["check_id"] for r in reports for s in r["results"].get("skipped_checks", [])]
    assert passed > 500, passed  # the scan really ran over every variant
    # the in-chart skips are the ones this file knows about, each with its reason in the chart
    assert set(skipped) == {"CKV_K8S_8", "CKV_K8S_9", "CKV_K8S_38"}, set(skipped)
    assert out.returncode == 0, out.stderr
