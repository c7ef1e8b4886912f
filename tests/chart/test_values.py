"""values.yaml and values.schema.json: documented keys, and a schema that refuses mistakes."""

from __future__ import annotations

import json
import re
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.chart.conftest import CHART, VARIANTS, render, variant_values

VALUES_TEXT = (CHART / "values.yaml").read_text()
SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    """The node with its local ``$ref`` (``#/definitions/<name>``) merged in."""
    if "$ref" not in node:
        return node
    target = SCHEMA["definitions"][node["$ref"].removeprefix("#/definitions/")]
    return {**_resolve(target), **{k: v for k, v in node.items() if k != "$ref"}}


def _walk_schema(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    node = _resolve(node)
    out = [(path, node)]
    for key, child in node.get("properties", {}).items():
        out += _walk_schema(child, f"{path}.{key}" if path else key)
    if isinstance(node.get("items"), dict):
        out += _walk_schema(node["items"], f"{path}[]")
    return out


# Maps of names to strings (labels, annotations, node selectors), and the parts of a pod spec
# the chart passes through for Kubernetes to validate (affinity terms, a valueFrom, a
# labelSelector); `global` is shared with a parent chart.
STRING_MAPS = ("ingress.annotations", "store.serviceAccountAnnotations")
STRING_MAP_KEYS = ("podLabels", "podAnnotations", "nodeSelector", "annotations", "Monitor.labels")
STRING_MAP_KEYS = (*STRING_MAP_KEYS, "prometheusRule.labels")
PASSED_THROUGH = ("nodeAffinity", "podAffinity", "podAntiAffinity", "valueFrom", "labelSelector")
# an Alertmanager entry of prometheus.yml: promtool checks it (test_monitoring.py)
PASSED_THROUGH = (*PASSED_THROUGH, "alertmanagers[]")


def test_values_file_starts_with_the_schema_modeline() -> None:
    assert VALUES_TEXT.splitlines()[0] == "# yaml-language-server: $schema=values.schema.json"


def test_every_key_has_a_doc_comment_and_is_camel_case() -> None:
    lines = VALUES_TEXT.splitlines()
    keys = 0
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z0-9_]+):", line)
        if not m:
            continue
        keys += 1
        assert re.fullmatch(r"[a-z][a-zA-Z0-9]*", m.group(2)), f"not camelCase: {line}"
        j = i - 1
        while j >= 0 and re.match(r"^\s*# (?!--)", lines[j]):
            j -= 1  # a "# --" comment may continue over several lines
        assert re.match(r"^\s*# -- ", lines[j]), f"line {i + 1} has no '# --' comment: {line}"
    assert keys > 100


def test_every_object_in_the_schema_refuses_unknown_keys() -> None:
    objects = [(p, n) for p, n in _walk_schema(SCHEMA) if n.get("type") == "object"]
    assert len(objects) > 30
    for path, node in objects:
        if path in STRING_MAPS or path.endswith(STRING_MAP_KEYS):
            assert node["additionalProperties"] == {"type": "string"}, path
        elif path == "global":
            assert node["additionalProperties"] is True
        elif path.endswith(PASSED_THROUGH):
            assert "properties" not in node, path
        else:
            assert node.get("additionalProperties") is False, path


def test_schema_covers_every_default_value() -> None:
    defaults = yaml.safe_load(VALUES_TEXT)

    def walk(values: dict[str, Any], schema: dict[str, Any], path: str) -> None:
        if path.endswith((".affinity", ".resources")):  # Kubernetes' optional fields
            assert set(values) <= set(schema["properties"]), path
        else:
            assert set(values) == set(schema["properties"]), path
        for key, value in values.items():
            sub = schema["properties"][key]
            assert "description" in sub, f"{path}.{key}"
            sub = _resolve(sub)
            if isinstance(value, dict) and "properties" in sub:
                walk(value, sub, f"{path}.{key}")

    walk(defaults, SCHEMA, "")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_passes_the_schema(variant: str) -> None:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(variant_values(variant))


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"replicaCount": 3}, "replicaCount"),  # a top-level typo
        ({"serving": {"replicas": 3}}, "replicas"),  # a nested unknown key
        ({"serving": {"resources": {"requests": {"cpu": "1", "memory": "1Gi", "gpu": 1}}}}, "gpu"),
        ({"serving": {"replicaCount": "two"}}, "replicaCount"),  # wrong type
        ({"serving": {"replicaCount": 0}}, "replicaCount"),  # below the minimum
        ({"image": {"tag": "latest"}}, "tag"),  # never latest
        ({"grafana": {"image": {"tag": "latest"}}}, "tag"),
        ({"config": {"logFormat": "xml"}}, "logFormat"),  # not in the enum
        ({"ingress": {"enabled": "yes"}}, "enabled"),
        ({"reporter": {"schedule": "hourly"}}, "schedule"),
        ({"retrainer": {"driftThreshold": 2}}, "driftThreshold"),
        ({"seaweedfs": {"persistence": {"size": "ten gigs"}}}, "size"),
    ],
)
def test_the_schema_refuses_bad_values(values: dict[str, Any], fragment: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=fragment):
        render(values)


def test_a_good_override_renders() -> None:
    out = render({"serving": {"replicaCount": 4}, "reporter": {"windowHours": 0.5}})
    deployment = yaml.safe_load(out["mlplatform/templates/serving/deployment.yaml"])
    assert deployment["spec"]["replicas"] == 4
