"""Named models: each name has its own versions, alias, log, reports and runs in one store; the
default name is the store's root, so a store from before names is that model, unmoved."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mlplatform_common import datalog, keys
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.settings import CommonSettings
from mlplatform_common.storage import (
    LocalStore,
    ScopedStore,
    Store,
    for_model,
    model_names,
    open_store,
    root_of,
)
from tests.conftest import SIGNING_KEY, S3Server


def _publish(store: Store, payload: bytes) -> ModelRegistry:
    registry = ModelRegistry(store, SIGNING_KEY)
    version = registry.publish({"model.joblib": payload}, {"features": ["x"]})
    registry.promote(version)
    return registry


def test_two_named_models_in_one_store_keep_their_own_versions_alias_log_and_runs(
    store: Store,
) -> None:
    fraud, churn = for_model(store, "fraud"), for_model(store, "churn-eu")
    _publish(fraud, b"fraud-1")
    _publish(fraud, b"fraud-2")
    churn_registry = _publish(churn, b"churn-1")
    datalog.write_feedback(fraud, {"feedback_id": "f1", "target": "1"}, ts=86_400.0)
    fraud.put_json(keys.retrain_run("20260101T000000000000"), {"outcome": "kept"})

    # each name numbers its own versions and has its own production alias
    assert ModelRegistry(fraud, SIGNING_KEY).versions() == ["v1", "v2"]
    assert churn_registry.versions() == ["v1"]
    assert ModelRegistry(fraud, SIGNING_KEY).production_version() == "v2"
    assert churn_registry.production_version() == "v1"
    assert churn_registry.read_file("v1", "model.joblib") == b"churn-1"
    # and its own rows and runs: nothing of fraud's is visible through churn
    assert datalog.feedback_keys(churn) == []
    assert len(datalog.feedback_keys(fraud)) == 1
    assert churn.list_keys(keys.RETRAIN_RUNS) == []
    assert fraud.list_keys(keys.RETRAIN_RUNS) == [keys.retrain_run("20260101T000000000000")]
    # the store itself holds them under each name's root
    assert store.exists("named/fraud/" + keys.PRODUCTION_ALIAS)
    assert store.exists("named/churn-eu/models/v1/model.joblib")
    assert not store.exists(keys.PRODUCTION_ALIAS)
    assert model_names(store) == ["churn-eu", "fraud"]


def test_a_store_from_before_names_is_the_default_model_unmoved(tmp_path) -> None:  # type: ignore[no-untyped-def]
    old = LocalStore(tmp_path / "store")
    old.ensure()
    _publish(old, b"old-1")  # written at the root, as every store was before names

    settings = CommonSettings(store_url=f"file://{tmp_path / 'store'}")
    assert settings.model_name == keys.DEFAULT_MODEL == "mlplatform"
    default = open_store(settings)
    assert not isinstance(default, ScopedStore)  # the root itself: nothing moved or copied
    assert ModelRegistry(default, SIGNING_KEY).production_version() == "v1"
    assert model_names(default) == ["mlplatform"]

    # a second name beside it starts empty and leaves the old model as it was
    other = open_store(settings.model_copy(update={"model_name": "penguins"}))
    assert ModelRegistry(other, SIGNING_KEY).versions() == []
    _publish(other, b"penguins-1")
    assert ModelRegistry(default, SIGNING_KEY).versions() == ["v1"]
    assert model_names(other) == ["mlplatform", "penguins"]
    assert root_of(other).url == default.url


def test_a_named_model_lists_from_a_key_on_and_never_sees_a_neighbour_with_a_longer_name(
    s3_server: S3Server,
) -> None:
    root = s3_server.store()
    short, longer = for_model(root, "a"), for_model(root, "a-b")
    for s, names in ((short, ["1", "2", "3"]), (longer, ["9"])):
        for n in names:
            s.put(f"production/predictions/dt=2026-01-01/{n}.parquet", b"x")
    day = "production/predictions/dt=2026-01-01/"
    assert short.list_keys(day) == [f"{day}1.parquet", f"{day}2.parquet", f"{day}3.parquet"]
    assert short.list_keys(day, start_after=f"{day}1.parquet") == [
        f"{day}2.parquet",
        f"{day}3.parquet",
    ]
    short.delete(f"{day}2.parquet")
    assert longer.list_keys("") == [f"{day}9.parquet"]
    assert for_model(short, "a-b").list_keys("") == longer.list_keys("")  # a model's part of a part


@pytest.mark.parametrize("name", ["Fraud", "-x", "x-", "a/b", "", "a_b", "x" * 41])
def test_a_bad_model_name_is_refused_naming_what_a_name_looks_like(name: str) -> None:
    with pytest.raises(ValidationError, match="lowercase letters, digits and '-'"):
        CommonSettings(model_name=name)
    with pytest.raises(ValueError, match="model name"):
        keys.model_root(name)
