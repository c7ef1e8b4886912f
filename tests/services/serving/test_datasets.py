"""POST /admin/datasets on a real serving process and a real SeaweedFS store: an upload is
validated and stored whole, a bad one gets a clear 4xx and stores nothing, and the retrainer
trains from the stored data set (`train --dataset NAME`)."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from mlplatform_common import keys
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import Store
from tests.conftest import REPO, SIGNING_KEY, S3Server, ServingProcess, run_cli, serving_env

ADMIN = {"Authorization": "Bearer proc-admin"}
PENGUINS = (REPO / "data" / "penguins.csv").read_bytes()


@pytest.fixture(scope="module")
def served(s3_server: S3Server) -> Iterator[tuple[ServingProcess, Store, dict[str, str]]]:
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    store = s3_server.store(bucket)
    # Other bodies are bound to 4 KB: an upload has its own, larger bound, also under the
    # ingress' prefix.
    env = serving_env(
        s3_server,
        bucket,
        MLPLATFORM_DATASET_MAX_MB="0.1",
        MLPLATFORM_MAX_BODY_BYTES="4096",
        MLPLATFORM_ROOT_PATH="/api",
    )
    proc = ServingProcess(env).start(wait_ready=False)  # no model yet: data comes first
    yield proc, store, env
    proc.stop()


def _upload(
    proc: ServingProcess, body: bytes, name: str, target: str = "species", **kw: object
) -> httpx.Response:
    headers = kw.pop("headers", ADMIN)
    return httpx.post(
        f"{proc.url}/admin/datasets",
        params={"name": name, "target": target, **kw},
        content=body,
        headers=headers,  # type: ignore[arg-type]
        timeout=30,
    )


def test_an_upload_is_stored_and_listed_and_trains_a_model(served) -> None:
    proc, store, env = served
    r = _upload(proc, PENGUINS, "penguins-up")
    assert r.status_code == 201, r.text
    summary = r.json()
    assert summary["rows"] == 344
    assert summary["task"] == "classification"
    assert summary["target"] == "species"
    assert summary["columns"][-1] == "species" and len(summary["columns"]) == 8
    kinds = {f["name"]: f["dtype"] for f in summary["schema"]}
    assert kinds["island"] == "category" and kinds["bill_length_mm"] == "float"
    assert store.get(keys.dataset("penguins-up")) == PENGUINS
    assert store.get_json(keys.dataset("penguins-up", "meta.json"))["target"] == "species"

    # the same name again is refused: a version's manifest names its data set
    again = _upload(proc, PENGUINS, "penguins-up")
    assert again.status_code == 409 and "penguins-up" in again.json()["error"]

    listed = httpx.get(f"{proc.url}/admin/datasets", headers=ADMIN).json()["datasets"]
    assert [(d["name"], d["rows"], d["task"]) for d in listed] == [
        ("penguins-up", 344, "classification")
    ]

    done = run_cli("mlplatform_retrainer", ["train", "--dataset", "penguins-up"], env)
    assert done.returncode == 0, done.stderr
    registry = ModelRegistry(store, SIGNING_KEY)
    manifest = registry.manifest(registry.production_version())
    assert manifest["training_data"]["dataset"] == "penguins-up"
    assert manifest["target"] == "species"

    # now that a model exists, match_model checks the columns against its features
    frame = pd.read_csv(io.BytesIO(PENGUINS)).drop(columns=["year"]).assign(colour="x")
    wrong = _upload(proc, frame.to_csv(index=False).encode(), "penguins-2", match_model="true")
    assert wrong.status_code == 422
    assert "missing ['year']" in wrong.json()["error"]
    assert "unexpected ['colour']" in wrong.json()["error"]
    assert not store.exists(keys.dataset("penguins-2"))


def test_the_upload_bound_holds_under_the_ingress_prefix_and_others_keep_theirs(served) -> None:
    proc, store, _ = served
    r = httpx.post(
        f"{proc.url}/api/admin/datasets",
        params={"name": "via-ingress", "target": "species"},
        content=PENGUINS,  # 16 KB: over the 4 KB of other bodies, within the 0.1 MB
        headers=ADMIN,
        timeout=30,
    )
    assert r.status_code == 201, r.text
    assert store.exists(keys.dataset("via-ingress", "meta.json"))
    big = _upload(proc, PENGUINS * 8, "too-big")
    assert big.status_code == 413 and "MLPLATFORM_DATASET_MAX_MB" in big.json()["error"]
    other = httpx.post(f"{proc.url}/predict", content=b"x" * 5000, headers=ADMIN)
    assert other.status_code == 413 and "limit of 4096 bytes" in other.json()["error"]


def test_a_parquet_upload_is_stored_as_the_csv_the_readers_parse(served, tmp_path: Path) -> None:
    proc, store, _ = served
    frame = pd.read_csv(io.BytesIO(PENGUINS))
    frame.to_parquet(tmp_path / "p.parquet", engine="fastparquet")
    r = _upload(proc, (tmp_path / "p.parquet").read_bytes(), "penguins-pq")
    assert r.status_code == 201, r.text
    stored = pd.read_csv(io.BytesIO(store.get(keys.dataset("penguins-pq"))))
    assert list(stored.columns) == list(frame.columns) and len(stored) == 344


def test_a_missing_dataset_is_one_clear_line(served) -> None:
    _, _, env = served
    done = run_cli("mlplatform_retrainer", ["train", "--dataset", "nothing-here"], env)
    assert done.returncode == 2
    assert "dataset 'nothing-here' is not in the store" in done.stderr
    assert "Traceback" not in done.stderr


HEADER = b"species,island,bill_length_mm,bill_depth_mm,flipper_length_mm,body_mass_g,sex,year\n"


@pytest.mark.parametrize(
    ("body", "params", "status", "says"),
    [
        (PENGUINS, {"target": "kind"}, 422, "target column 'kind' not found"),
        (b"", {}, 422, "the file is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 20, {}, 422, "not a CSV or Parquet file"),
        (PENGUINS * 8, {}, 413, "over the limit of 0.1 MB (MLPLATFORM_DATASET_MAX_MB)"),
        (b"a,a,species\n" + b"1,2,x\n" * 30, {}, 422, "named twice: ['a']"),
        (HEADER, {}, 422, "header but no rows"),
        (HEADER + PENGUINS.split(b"\n", 1)[1][:300], {}, 422, "has a single class"),
        (PENGUINS, {"name": "Bad Name"}, 422, "name 'Bad Name'"),
        (PENGUINS, {"headers": {"Authorization": "Bearer wrong"}}, 401, "bearer token"),
        (PENGUINS, {"headers": {}}, 401, "bearer token"),
    ],
)
def test_a_bad_upload_is_a_clear_4xx_and_stores_nothing(
    served, body: bytes, params: dict[str, object], status: int, says: str
) -> None:
    proc, store, _ = served
    before = store.list_keys(keys.DATASETS)
    name = str(params.pop("name", f"bad-{uuid.uuid4().hex[:8]}"))
    r = _upload(proc, body, name, **params)  # type: ignore[arg-type]
    assert r.status_code == status, r.text
    assert says in r.json()["error"]
    assert "Traceback" not in r.text
    assert store.list_keys(keys.DATASETS) == before
