"""Serving names the model it serves (MLPLATFORM_MODEL_NAME) and lists the store's others."""

from __future__ import annotations

from fastapi.testclient import TestClient

from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import Store, for_model
from mlplatform_serving.app import create_app
from tests.conftest import SIGNING_KEY, publish_trained
from tests.services.serving.conftest import serving_settings


def test_every_model_route_names_the_served_model_and_lists_the_store_s_names(
    local_store: Store, trained, shipped_dataset
) -> None:
    fraud = for_model(local_store, "fraud")
    publish_trained(ModelRegistry(fraud, SIGNING_KEY), trained, shipped_dataset)
    publish_trained(
        ModelRegistry(for_model(local_store, "churn-eu"), SIGNING_KEY), trained, shipped_dataset
    )
    with TestClient(create_app(serving_settings(model_name="fraud"), fraud)) as c:
        assert c.get("/ready").json()["model_name"] == "fraud"
        assert c.get("/model").json()["name"] == "fraud"
        assert c.get("/models").json()["name"] == "fraud"
        assert c.get("/v2/models/fraud").json()["name"] == "fraud"
        assert c.get("/v2/models/mlplatform").status_code == 404
        assert c.get("/models/names").json() == {"serving": "fraud", "names": ["churn-eu", "fraud"]}
        doc = c.get("/openapi.json").json()
        (param,) = doc["paths"]["/v2/models/{name}/infer"]["post"]["parameters"]
        assert param["example"] == "fraud"
        assert "/models/names" in doc["paths"]


def test_a_store_from_before_names_is_the_default_name(
    model_store: Store, trained, shipped_dataset
) -> None:
    # model_store: v1 published at the store's root, as every store was before names
    publish_trained(
        ModelRegistry(for_model(model_store, "fraud"), SIGNING_KEY), trained, shipped_dataset
    )
    with TestClient(create_app(serving_settings(), model_store)) as c:
        assert c.get("/ready").json()["model_name"] == "mlplatform"
        assert c.get("/model").json()["version"] == "v1"
        assert c.get("/models/names").json() == {
            "serving": "mlplatform",
            "names": ["mlplatform", "fraud"],
        }
