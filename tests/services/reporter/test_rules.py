"""The alert rules: valid for Prometheus, and each rule's behaviour pinned by promtool tests."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from mlplatform_common import metric_names
from tests.services.reporter.conftest import ALERTS, PROMTOOL, require_binary

RULE_TESTS = sorted((Path(__file__).parent / "rules").glob("*.yaml"))


def test_rules_pass_promtool_check() -> None:
    out = subprocess.run(
        [str(require_binary(PROMTOOL)), "check", "rules", str(ALERTS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 7 rules found" in out.stdout


def test_rules_pass_their_unit_tests() -> None:
    assert RULE_TESTS
    out = subprocess.run(
        [str(require_binary(PROMTOOL)), "test", "rules", *map(str, RULE_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_has_a_unit_test_and_uses_known_metrics() -> None:
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    names = {r["alert"] for r in rules}
    assert names == {
        "MLPlatformDataDrift",
        "MLPlatformModelF1Low",
        "MLPlatformModelR2Low",
        "MLPlatformReportStale",
        "MLPlatformServingErrors",
        "MLPlatformServingSlow",
        "MLPlatformRetrainFailing",
    }
    tested = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check["exp_alerts"]:
                    tested.add(check["alertname"])
    assert tested == names, f"alerts never seen firing in a test: {names - tested}"
    known = {v for k, v in vars(metric_names).items() if k.isupper() and isinstance(v, str)}
    for rule in rules:
        for metric in set(re.findall(r"mlplatform_[a-z0-9_]+", rule["expr"])):
            base = re.sub(r"(_total|_bucket)$", "", metric)
            assert base in known, f"{rule['alert']} uses {metric}, not in metric_names"
