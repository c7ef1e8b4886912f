"""The batch scoring CronJob (ci/batch-values.yaml): suspended, its args from values, the
store's environment and nothing more (no Kubernetes token, no Role), admitted by the store's
NetworkPolicy; absent by default; refused without an input."""

from __future__ import annotations

import pytest

from mlplatform_retrainer.batch import DEFAULT_CHUNK_ROWS
from tests.chart.conftest import (
    containers,
    env_names,
    env_value,
    find,
    one,
    pod_labels,
    pod_spec,
    render,
    rendered_variant,
)
from tests.conftest import REPO


def test_the_batch_profile_renders_a_suspended_cronjob_of_the_cli() -> None:
    objs = rendered_variant("batch")
    cron = one(objs, "CronJob", "mlplatform-batch")
    assert cron["spec"]["suspend"] is True and cron["spec"]["concurrencyPolicy"] == "Forbid"
    spec = pod_spec(cron)
    assert spec is not None
    (c,) = containers(spec)
    assert c["image"].split("/")[-1].startswith("mlplatform-retrainer:")
    assert c["command"] == ["python", "-m", "mlplatform_retrainer", "batch"]
    assert c["args"] == [
        "--input", "batch/2026-12-06/transactions.csv",
        "--output", "batch/2026-12-06/scored.parquet",
        "--version", "v3",
        "--chunk-rows", "5000",
    ]  # fmt: skip
    # the store, the signing key (verified loads) and the named model; nothing to act on
    names = set(env_names(c))
    assert {"MLPLATFORM_STORE_URL", "MLPLATFORM_SIGNING_KEY", "MLPLATFORM_S3_ACCESS_KEY"} <= names
    assert env_value(c, "MLPLATFORM_MODEL_NAME") == "fraud"
    assert not names & {
        "MLPLATFORM_ADMIN_TOKEN",
        "MLPLATFORM_ROLLOUT",
        "MLPLATFORM_PUSHGATEWAY_URL",
    }
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == "mlplatform-batch"
    one(objs, "ServiceAccount", "mlplatform-batch")
    assert not [
        b for b in find(objs, "RoleBinding") if b["subjects"][0]["name"] == "mlplatform-batch"
    ]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    # the store admits its pods
    store = one(objs, "NetworkPolicy", "mlplatform-seaweedfs")
    admitted = [p["podSelector"]["matchLabels"] for p in store["spec"]["ingress"][0]["from"]]
    assert any(set(m.items()) <= set(pod_labels(cron).items()) for m in admitted)


def test_the_cronjob_takes_the_cli_defaults_and_is_absent_unless_enabled() -> None:
    assert not find(rendered_variant("defaults"), "CronJob", "mlplatform-batch")
    from tests.chart.conftest import objects

    objs = objects(render({"batch": {"enabled": True, "input": "batch/in.parquet"}}))
    (c,) = containers(pod_spec(one(objs, "CronJob", "mlplatform-batch")))  # type: ignore[arg-type]
    assert c["args"] == ["--input", "batch/in.parquet", "--chunk-rows", str(DEFAULT_CHUNK_ROWS)]


@pytest.mark.parametrize(
    ("batch", "says"),
    [
        ({"enabled": True}, "input"),
        ({"enabled": True, "input": "batch/in.txt"}, "input"),
        ({"enabled": True, "input": "a.csv", "version": "latest"}, "version"),
        ({"enabled": True, "input": "a.csv", "chunkRows": 0}, "chunkRows"),
    ],
)
def test_values_without_a_usable_input_are_refused(batch: dict[str, object], says: str) -> None:
    with pytest.raises(Exception, match=says):
        render({"batch": batch})


def test_the_readme_gives_both_commands() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Batch scoring\n", 1)[1].split("\n## ", 1)[0]
    assert "kubectl create job --from=cronjob/mlplatform-batch" in section
    assert "python -m mlplatform_retrainer batch --input" in section
