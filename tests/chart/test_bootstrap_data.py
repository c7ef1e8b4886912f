"""The bootstrap Job's data from values: a data set of the store (ci/bootstrap-dataset-values)
or an HTTP(S) URL (ci/bootstrap-url-values), else the file baked into the image; each becomes
the retrainer CLI's arguments, and values that cannot work are refused at render time."""

from __future__ import annotations

import pytest

from tests.chart.conftest import containers, find, pod_spec, render, rendered_variant


def _args(objs: list[dict[str, object]]) -> list[str]:
    (job,) = [j for j in find(objs, "Job") if "bootstrap" in j["metadata"]["name"]]  # type: ignore[index, operator]
    (c,) = containers(pod_spec(job))  # type: ignore[arg-type]
    head = ["python", "-m", "mlplatform_retrainer", "train", "--if-missing"]
    assert c["command"][:5] == head and "args" not in c
    return list(c["command"][5:])


def test_the_default_trains_on_the_file_in_the_image() -> None:
    assert _args(rendered_variant("defaults")) == ["--data", "/app/data/breast_cancer.csv"]


def test_a_dataset_of_the_store() -> None:
    assert _args(rendered_variant("bootstrap-dataset")) == ["--dataset", "churn-2024"]


def test_a_url_with_its_target_and_timeout() -> None:
    assert _args(rendered_variant("bootstrap-url")) == [
        "--data-url", "https://data.example.com/ml/penguins.csv",
        "--target", "species",
        "--timeout", "120",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("bootstrap", "says"),
    [
        ({"dataset": "a", "dataUrl": "https://x.example/a.csv"}, "not both"),
        ({"dataUrl": "ftp://x.example/a.csv"}, "dataUrl"),
        ({"dataset": "Bad Name"}, "dataset"),
        ({"dataUrl": "https://x.example/a.csv", "downloadTimeoutSeconds": 0}, "downloadTimeout"),
    ],
)
def test_values_that_cannot_work_are_refused(bootstrap: dict[str, object], says: str) -> None:
    with pytest.raises(Exception, match=says):
        render({"bootstrap": bootstrap})
