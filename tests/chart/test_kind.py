"""The kind recipe: the cluster config the ingress needs, and a script shellcheck accepts."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.chart.conftest import CHART
from tests.conftest import REPO

KIND_CONFIG = REPO / "k8s" / "kind-config.yaml"
KIND_UP = REPO / "scripts" / "kind-up.sh"


def test_kind_config_maps_80_and_443_to_localhost_on_the_ingress_node() -> None:
    config = yaml.safe_load(KIND_CONFIG.read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    (node,) = config["nodes"]
    assert node["labels"] == {"ingress-ready": "true"}
    ports = {
        (m["containerPort"], m["hostPort"], m["listenAddress"]) for m in node["extraPortMappings"]
    }
    assert ports == {(80, 80, "127.0.0.1"), (443, 443, "127.0.0.1")}


def test_kind_up_pins_a_maintained_controller_and_matches_the_chart() -> None:
    script = KIND_UP.read_text()
    assert 'TRAEFIK_CHART_VERSION="${TRAEFIK_CHART_VERSION:-37.3.0}"' in script
    assert "ingress-nginx" not in script
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["ingress"]["className"] == "traefik"
    assert f"TRAEFIK_NAMESPACE={values['networkPolicy']['ingressControllerNamespace']}" in script
    for image in ("serving", "webapp", "reporter", "retrainer"):
        assert f"mlplatform-{image}" in script
    assert "kind load docker-image" in script


def test_kind_up_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is missing: install the Debian package shellcheck (make test-deps)")
    out = subprocess.run(
        [shellcheck, "--severity=style", str(KIND_UP)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
