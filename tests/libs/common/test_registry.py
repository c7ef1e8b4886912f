"""The signed registry: publish, verify, load, alias, concurrent publishers."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from mlplatform_common import keys
from mlplatform_common.errors import Conflict, IntegrityError, ModelNotFound
from mlplatform_common.registry import MANIFEST, MODEL, ModelRegistry, sign_manifest
from mlplatform_common.storage import LocalStore, S3Store, Store
from tests.conftest import S3_KEYS, SIGNING_KEY, S3Server, publish_trained


def test_published_model_loads_and_predicts_as_before_saving(
    registry: ModelRegistry, trained, shipped_dataset
) -> None:
    version = publish_trained(registry, trained, shipped_dataset)
    assert version == "v1"
    loaded = registry.load("v1")
    X = shipped_dataset.X
    np.testing.assert_array_equal(loaded.pipeline.predict(X), trained.pipeline.predict(X))
    np.testing.assert_allclose(loaded.pipeline.predict_proba(X), trained.pipeline.predict_proba(X))
    np.testing.assert_array_equal(loaded.backup.predict(X), trained.backup.predict(X))
    assert loaded.features == list(X.columns)
    assert loaded.classes == [0, 1]
    assert loaded.manifest["class_names"] == ["malignant", "benign"]
    assert list(loaded.ref_data.columns) == [f"PCA_{i}" for i in range(1, 11)] + ["target"]


def test_manifest_records_checksums_metrics_and_lineage(
    registry: ModelRegistry, trained, shipped_dataset
) -> None:
    publish_trained(registry, trained, shipped_dataset)
    v2 = publish_trained(registry, trained, shipped_dataset)
    manifest = registry.manifest(v2)
    assert set(manifest["files"]) == {
        "model.joblib",
        "backup.joblib",
        "ref_data.csv",
        "model.onnx",
        "embedding.onnx",
    }
    assert all(len(h) == 64 for h in manifest["files"].values())
    assert manifest["signature"]["algorithm"] == "HMAC-SHA256"
    assert manifest["training_data"]["sha256"] == shipped_dataset.sha256
    assert 0.9 < manifest["metrics"]["test"]["f1"] <= 1.0
    assert [m["version"] for m in registry.list_versions()] == ["v1", "v2"]


def _flip_one_byte(store: Store, key: str, at: int = 100) -> None:
    data = bytearray(store.get(key))
    data[at] ^= 0x01
    store.put(key, bytes(data))


def test_a_model_file_changed_by_one_byte_is_refused(
    registry: ModelRegistry, trained, shipped_dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish_trained(registry, trained, shipped_dataset)
    _flip_one_byte(registry.store, keys.model_file("v1", MODEL))
    unpickled: list[object] = []
    monkeypatch.setattr("mlplatform_common.registry.joblib.load", unpickled.append)
    with pytest.raises(IntegrityError, match=r"models/v1/model\.joblib does not match"):
        registry.load("v1")
    assert unpickled == []  # refused before anything was unpickled


def test_a_manifest_changed_by_one_byte_is_refused(
    registry: ModelRegistry, trained, shipped_dataset
) -> None:
    publish_trained(registry, trained, shipped_dataset)
    key = keys.model_file("v1", MANIFEST)
    manifest = registry.store.get_json(key)
    manifest["metrics"]["test"]["f1"] = 1.0
    registry.store.put_json(key, manifest)
    with pytest.raises(IntegrityError, match=r"models/v1/manifest\.json has an invalid signature"):
        registry.load("v1")
    _flip_one_byte(registry.store, key, at=10)
    with pytest.raises(IntegrityError, match=r"models/v1/manifest\.json"):
        registry.load("v1")


def test_forged_and_unsigned_manifests_are_refused(
    registry: ModelRegistry, trained, shipped_dataset
) -> None:
    publish_trained(registry, trained, shipped_dataset)
    key = keys.model_file("v1", MANIFEST)
    manifest = registry.store.get_json(key)
    # Forged: a consistent manifest signed with somebody else's key.
    registry.store.put_json(key, sign_manifest(manifest, b"attacker-key"))
    with pytest.raises(IntegrityError, match="invalid signature"):
        registry.load("v1")
    registry.store.put_json(key, {k: v for k, v in manifest.items() if k != "signature"})
    with pytest.raises(IntegrityError, match="unsigned"):
        registry.load("v1")
    assert registry.list_versions()[0]["error"].endswith("refusing to load v1")


def test_a_replaced_pickle_with_its_checksum_updated_is_still_refused(
    registry: ModelRegistry, trained, shipped_dataset
) -> None:
    """Editing the checksum in the manifest breaks the HMAC, so a swapped pickle cannot run."""
    import hashlib

    publish_trained(registry, trained, shipped_dataset)
    evil = b"not the model"
    registry.store.put(keys.model_file("v1", MODEL), evil)
    key = keys.model_file("v1", MANIFEST)
    manifest = registry.store.get_json(key)
    manifest["files"][MODEL] = hashlib.sha256(evil).hexdigest()
    registry.store.put_json(key, manifest)
    with pytest.raises(IntegrityError, match="invalid signature"):
        registry.load("v1")


def test_unknown_versions(registry: ModelRegistry) -> None:
    with pytest.raises(ModelNotFound, match="v3 does not exist"):
        registry.load("v3")
    with pytest.raises(ModelNotFound, match="not a model version"):
        registry.load("../etc")
    with pytest.raises(ModelNotFound, match="no model is in production"):
        registry.production_version()


def test_a_version_without_manifest_does_not_exist(
    registry: ModelRegistry, trained, shipped_dataset
) -> None:
    # A publisher that died after its files but before the manifest.
    registry.store.put(keys.model_file("v1", MODEL), b"partial")
    assert registry.versions() == []
    # and its number is not reused.
    assert publish_trained(registry, trained, shipped_dataset) == "v2"


def test_promote_and_rollback_move_the_alias_forward_and_back(
    registry: ModelRegistry, trained, shipped_dataset
) -> None:
    for _ in range(3):
        publish_trained(registry, trained, shipped_dataset)
    alias = registry.production()
    assert alias is not None
    assert (alias["version"], alias["previous"]) == ("v3", "v2")
    alias = registry.rollback()
    assert (alias["version"], alias["previous"], alias["rolled_back_from"]) == ("v2", "v1", "v3")
    registry.rollback()
    assert registry.production_version() == "v1"
    with pytest.raises(Conflict, match="no previous production version"):
        registry.rollback()
    registry.promote("v3")
    assert registry.production() == {**registry.production(), "version": "v3", "previous": "v1"}  # type: ignore[dict-item]


def test_promoting_a_missing_version_is_refused(registry: ModelRegistry) -> None:
    with pytest.raises(ModelNotFound):
        registry.promote("v5")
    assert registry.production() is None


def _publish_in_process(args: tuple[str, str | None, int]) -> str:
    """Runs in a separate process: publish one version into a shared store."""
    from mlplatform_common.schema import load_dataset
    from mlplatform_retrainer.job import publish
    from mlplatform_retrainer.train import TrainConfig, train

    where, endpoint, seed = args
    store: Store = LocalStore(where) if endpoint is None else S3Store(where, endpoint, **S3_KEYS)
    data = load_dataset(Path(__file__).resolve().parents[3] / "data" / "breast_cancer.csv")
    config = TrainConfig(seed=seed)
    return publish(ModelRegistry(store, SIGNING_KEY), train(data.X, data.y, config), data, config)


def test_concurrent_publishers_get_distinct_complete_versions(
    store: Store, request: pytest.FixtureRequest
) -> None:
    if isinstance(store, LocalStore):
        args = [(str(store.root), None, seed) for seed in range(4)]
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        args = [(store.bucket, server.endpoint, seed) for seed in range(4)]  # type: ignore[attr-defined]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        versions = pool.map(_publish_in_process, args)
    assert sorted(versions) == ["v1", "v2", "v3", "v4"]
    registry = ModelRegistry(store, SIGNING_KEY)
    for v in versions:
        assert registry.load(v).version == v
    assert json.loads(store.get(keys.model_file("v4", MANIFEST)))["version"] == "v4"
