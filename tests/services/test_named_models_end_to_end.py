"""Two named models and a store from before names in one bucket of the real S3 server, through
real processes: each name trained by the retrainer's CLI, served by its own serving process,
sent predictions and labels, reported on and retrained; then nothing of one is found under the
other (versions, alias, prediction log, feedback, reports, retrain runs), and a rollback of one
leaves the other's production version where it was.

The default name is the store's root: a store written before names (v1 at the root, trained
without MLPLATFORM_MODEL_NAME) keeps serving under ``mlplatform``."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pandas as pd

from mlplatform_common import datalog, keys
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.reports import ReportArchive
from mlplatform_common.schema import load_dataset
from mlplatform_common.storage import Store, for_model
from tests.conftest import (
    DATA,
    SIGNING_KEY,
    S3Server,
    ServingProcess,
    run_cli,
    serving_env,
    wait_count,
)

WRITER = {"Authorization": "Bearer proc-writer"}
# name -> (data set, rows sent): a different count per name, so a row that crossed shows
MODELS = {"fraud": ("breast_cancer", 30), "penguins": ("penguins", 26)}
DEFAULT_ROWS = 7


def _rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(frame.to_json(orient="records"))
    return rows


def _traffic(serving: ServingProcess, part: Store, data: str, n: int) -> None:
    """``n`` rows predicted by JSON and labelled with their true target, all logged."""
    dataset = load_dataset(DATA.parent / f"{data}.csv")
    rows = dataset.X.sample(n=n, random_state=3)
    r = httpx.post(serving.url + "/predict", json={"instances": _rows(rows)}, timeout=30)
    assert r.status_code == 200, r.text
    answers = r.json()["predictions"]
    with httpx.Client(base_url=serving.url, headers=WRITER, timeout=30) as client:
        for answer, target in zip(answers, dataset.y.loc[rows.index], strict=True):
            label = target.item() if hasattr(target, "item") else target
            fb = client.post(
                "/feedback", json={"prediction_id": answer["prediction_id"], "target": label}
            )
            assert fb.status_code == 201, fb.text
    wait_count("logged predictions", lambda: len(datalog.read_predictions(part)), n)
    wait_count("labelled rows", lambda: datalog.count_feedback(part), n)


def test_two_named_models_and_a_store_from_before_names_share_a_bucket(s3_server: S3Server) -> None:
    root = s3_server.store()
    env = serving_env(
        s3_server,
        root.bucket,
        MLPLATFORM_PUSHGATEWAY_URL="",
        MLPLATFORM_ROLLOUT="local",
        MLPLATFORM_MIN_LABELLED_ROWS="20",
        MLPLATFORM_GATE_TOLERANCE="1.0",  # the gate promotes: its decisions are tested elsewhere
    )
    envs = {name: {**env, "MLPLATFORM_MODEL_NAME": name} for name in MODELS}
    parts = {name: for_model(root, name) for name in MODELS}

    # a store from before names: v1 at the root, trained without a model name
    proc = run_cli("mlplatform_retrainer", ["train", "--data", str(DATA)], env)
    assert proc.returncode == 0, proc.stderr
    for name, (data, _) in MODELS.items():
        proc = run_cli(
            "mlplatform_retrainer",
            ["train", "--data", str(DATA.parent / f"{data}.csv")],
            envs[name],
        )
        assert proc.returncode == 0, proc.stderr
        assert f"named/{name}/" in proc.stdout, proc.stdout  # where it went, in the summary

    servers = {"mlplatform": ServingProcess(env)} | {n: ServingProcess(envs[n]) for n in MODELS}
    try:
        for server in servers.values():
            server.start()
        for name, server in servers.items():
            assert httpx.get(server.url + "/ready").json()["model_name"] == name
            assert httpx.get(server.url + "/model").json()["name"] == name
            assert httpx.get(server.url + f"/v2/models/{name}").status_code == 200
            assert httpx.get(server.url + "/models/names").json() == {
                "serving": name,
                "names": ["mlplatform", "fraud", "penguins"],
            }
        assert httpx.get(servers["fraud"].url + "/v2/models/penguins").status_code == 404
        # each serves its own data set's model
        fraud_card = httpx.get(servers["fraud"].url + "/model").json()
        penguins_card = httpx.get(servers["penguins"].url + "/model").json()
        assert "mean_radius" in [f["name"] for f in fraud_card["feature_schema"]]
        assert "island" in [f["name"] for f in penguins_card["feature_schema"]]

        _traffic(servers["mlplatform"], root, "breast_cancer", DEFAULT_ROWS)
        for name, (data, n) in MODELS.items():
            _traffic(servers[name], parts[name], data, n)

        for name in MODELS:
            run_env = {**envs[name], "MLPLATFORM_SERVING_URL": servers[name].url}
            proc = run_cli("mlplatform_reporter", ["run"], run_env)
            assert proc.returncode == 0, proc.stderr
            assert f"(model {name} v1," in proc.stdout, proc.stdout
            proc = run_cli("mlplatform_retrainer", ["run", "--force"], run_env)
            assert proc.returncode == 0, proc.stderr
            assert f"retrain promoted (model {name})" in proc.stdout, proc.stdout
            assert httpx.get(servers[name].url + "/health").json()["model_version"] == "v2"

        # nothing crossed: each name's keys only under its own root
        every = root.list_keys("")
        at_root = [k for k in every if not k.startswith(keys.NAMED)]
        assert {k.split("/")[1] for k in every if k.startswith(keys.NAMED)} == set(MODELS)
        assert ModelRegistry(root, SIGNING_KEY).versions() == ["v1"]  # the retrains were not its
        assert ModelRegistry(root, SIGNING_KEY).production_version() == "v1"
        assert len(datalog.read_predictions(root)) == DEFAULT_ROWS
        assert datalog.count_feedback(root) == DEFAULT_ROWS
        assert not [k for k in at_root if k.startswith((keys.REPORTS, keys.RETRAIN_RUNS))]
        for name, (_, n) in MODELS.items():
            part = parts[name]
            registry = ModelRegistry(part, SIGNING_KEY)
            assert registry.versions() == ["v1", "v2"]
            assert registry.production_version() == "v2"
            assert registry.manifest("v2")["parent"] == "v1"
            logged = datalog.read_predictions(part)
            assert len(logged) == n and set(logged["model_version"]) == {"v1"}
            assert datalog.count_feedback(part) == n
            (report,) = ReportArchive(part).newest(10)
            summary = ReportArchive(part).latest()
            assert summary is not None and summary["model_name"] == name, report
            assert summary["rows"]["production"] == n
            runs = [part.get_json(k) for k in part.list_keys(keys.RETRAIN_RUNS)]
            assert [(r["model"], r["outcome"]) for r in runs] == [(name, "promoted")]
        penguins_log = datalog.read_predictions(parts["penguins"])
        assert "island" in penguins_log.columns
        assert "island" not in datalog.read_predictions(parts["fraud"]).columns

        # a rollback of one name leaves the others' production where it was
        proc = run_cli(
            "mlplatform_retrainer",
            ["rollback"],
            {**envs["fraud"], "MLPLATFORM_SERVING_URL": servers["fraud"].url},
        )
        assert proc.returncode == 0, proc.stderr
        assert ModelRegistry(parts["fraud"], SIGNING_KEY).production_version() == "v1"
        assert httpx.get(servers["fraud"].url + "/health").json()["model_version"] == "v1"
        assert ModelRegistry(parts["penguins"], SIGNING_KEY).production_version() == "v2"
        assert httpx.get(servers["penguins"].url + "/health").json()["model_version"] == "v2"
        assert ModelRegistry(root, SIGNING_KEY).production_version() == "v1"
        assert httpx.get(servers["mlplatform"].url + "/model").json()["version"] == "v1"
    finally:
        for server in servers.values():
            server.stop()
