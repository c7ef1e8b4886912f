"""Two releases sharing one external store, each with its own named model (config.modelName):
rendered by the real helm (ci/two-releases-values.yaml), strictly valid, and nothing shared but
the store: no resource name, no model name, no Pushgateway group in common."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import yaml

from mlplatform_common.settings import CommonSettings
from tests.chart.conftest import CHART, NAMESPACE, OUR_IMAGES, env_value, pod_spec, render, validate
from tests.chart.test_helm_cli import GITOPS, run, tool

TWO = CHART / "ci" / "two-releases-values.yaml"
RELEASES = {"fraud": "fraud", "churn-eu": "churn"}  # release -> its model name


def helm_template(release: str, model: str) -> list[dict[str, Any]]:
    out = run(
        tool("helm"),
        "template",
        release,
        CHART,
        "--namespace",
        NAMESPACE,
        "-f",
        TWO,
        "-f",
        GITOPS,
        "--set",
        f"config.modelName={model}",
        "--set",
        f"ingress.host={release}.ml.example.com",
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def ours(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every container of the platform's own images (the services, the jobs, helm test)."""
    found = []
    for doc in docs:
        spec = pod_spec(doc)
        for c in (spec or {}).get("containers", []) + (spec or {}).get("initContainers", []):
            if any(
                f"/{image}:" in c["image"] or c["image"].startswith(f"{image}:")
                for image in OUR_IMAGES
            ):
                found.append(c)
    return found


def test_two_releases_share_one_store_with_their_own_model_names() -> None:
    rendered = {release: helm_template(release, model) for release, model in RELEASES.items()}
    names = {}
    groups = {}
    for release, docs in rendered.items():
        model = RELEASES[release]
        version = kubernetes_validate.utils.latest_version()
        for doc in docs:
            validate(doc, version)
        names[release] = {(d["kind"], d["metadata"]["name"]) for d in docs}
        containers = [c for c in ours(docs) if c["name"] != "test"]  # helm test: MODEL_NAME
        assert len(containers) >= 5  # serving, webapp, reporter, retrainer, bootstrap
        assert {env_value(c, "MLPLATFORM_MODEL_NAME") for c in containers} == {model}
        # the one store both share: the same bucket and endpoint, the same Secret
        stores = {
            (env_value(c, "MLPLATFORM_STORE_URL"), env_value(c, "MLPLATFORM_S3_ENDPOINT"))
            for c in containers
            if any(e["name"] == "MLPLATFORM_STORE_URL" for e in c.get("env", []))
        }
        assert stores == {("s3://ml-shared", "minio.storage.svc.cluster.local:9000")}
        assert not [d for d in docs if d["kind"] == "StatefulSet"]  # no bundled SeaweedFS
        (bootstrap,) = [d for d in docs if d["kind"] == "Job"]
        (train,) = pod_spec(bootstrap)["containers"]  # type: ignore[index]
        assert env_value(train, "MLPLATFORM_MODEL_NAME") == model
        assert "train" in train["command"] + train.get("args", [])
        # the jobs' Pushgateway group, as their settings compute it from the chart's env
        (retrainer,) = [
            d for d in docs if d["kind"] == "CronJob" and "retrainer" in d["metadata"]["name"]
        ]
        (c,) = pod_spec(retrainer)["containers"]  # type: ignore[index]
        groups[release] = CommonSettings(
            release=env_value(c, "MLPLATFORM_RELEASE"),
            namespace=env_value(c, "MLPLATFORM_NAMESPACE"),
            model_name=env_value(c, "MLPLATFORM_MODEL_NAME"),
        ).push_grouping_key()
    assert names["fraud"].isdisjoint(names["churn-eu"])
    assert groups["fraud"] != groups["churn-eu"]
    assert {g["model"] for g in groups.values()} == {"fraud", "churn"}


def test_notes_name_the_model_and_where_it_lives() -> None:
    values = yaml.safe_load(TWO.read_text())
    notes = render(values)["mlplatform/templates/NOTES.txt"]
    assert 'the named model "fraud"' in notes and "named/fraud/" in notes
    notes = render({})["mlplatform/templates/NOTES.txt"]
    assert 'the named model "mlplatform"' in notes and "at the root of bucket" in notes
