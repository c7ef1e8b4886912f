"""Locally, end to end: k labelled rows start a retrain by themselves and serving swaps to v2
while requests keep flowing; rollback brings v1 back the same way."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pandas as pd

from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import LocalStore
from mlplatform_reporter.simulate import replay
from mlplatform_retrainer.job import upload_dataset
from tests.conftest import DATA, REPO, SIGNING_KEY, ServingProcess, publish_trained


def test_k_labelled_rows_retrain_and_serving_swaps_without_failures(
    tmp_path: Path, trained, shipped_dataset
) -> None:
    store = LocalStore(tmp_path / "store")
    store.ensure()
    upload_dataset(store, shipped_dataset)
    registry = ModelRegistry(store, SIGNING_KEY)
    publish_trained(registry, trained, shipped_dataset)
    env = {
        "MLPLATFORM_STORE_URL": f"file://{store.root}",
        "MLPLATFORM_SIGNING_KEY": SIGNING_KEY.decode(),
        "MLPLATFORM_ADMIN_TOKEN": "e2e-admin",
        "MLPLATFORM_WRITER_TOKEN": "e2e-writer",
        "MLPLATFORM_RETRAIN_LAUNCHER": "local",
        "MLPLATFORM_RETRAIN_EVERY": "20",
        "MLPLATFORM_ROLLOUT": "local",
    }
    serving = ServingProcess(env).start()
    try:
        _retrain_and_roll_back(serving, registry, shipped_dataset, env)
        _a_retrainer_on_another_store_cannot_swap_this_serving(
            serving, tmp_path, trained, shipped_dataset, env
        )
        # make train: the new version is served at once (it waited for a restart before).
        proc = _retrainer("train", {**env, "MLPLATFORM_SERVING_URL": serving.url}, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert f"serving at {serving.url} now serves v3" in proc.stdout
        assert httpx.get(serving.url + "/health").json()["model_version"] == "v3"
    finally:
        serving.stop()


def _retrainer(
    command: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m mlplatform_retrainer <command>`` as a user runs it, with ``env`` set."""
    return subprocess.run(
        [sys.executable, "-m", "mlplatform_retrainer", command],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _a_retrainer_on_another_store_cannot_swap_this_serving(
    serving: ServingProcess, tmp_path: Path, trained, shipped_dataset, env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    # Its own v1..v3; rolling back to its v2 would have made this serving load *its* v2.
    other = LocalStore(tmp_path / "other-store")
    other.ensure()
    other_registry = ModelRegistry(other, SIGNING_KEY)
    for _ in range(3):
        publish_trained(other_registry, trained, shipped_dataset)
    other_env = {**env, "MLPLATFORM_STORE_URL": f"file://{other.root}"}
    proc = _retrainer("rollback", {**other_env, "MLPLATFORM_SERVING_URL": serving.url})
    assert proc.returncode != 0
    assert "serving refused to reload v2: 409" in proc.stderr + proc.stdout
    assert "its manifest signature differs" in proc.stderr + proc.stdout
    assert httpx.get(serving.url + "/health").json()["model_version"] == "v1"


def _retrain_and_roll_back(
    serving: ServingProcess, registry: ModelRegistry, shipped_dataset, env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    failures: list[str] = []
    versions: list[str] = []
    stop = threading.Event()
    rows = pd.read_csv(DATA).drop(columns="target").head(5).to_dict(orient="records")

    def traffic() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                r = client.post(serving.url + "/predict", json={"instances": rows})
                if r.status_code != 200:
                    failures.append(f"{r.status_code}: {r.text[:200]}")
                else:
                    versions.append(r.json()["model_version"])

    flowing = threading.Thread(target=traffic)
    flowing.start()
    try:
        # The traffic simulator replays held-out rows and labels every one of them, with the
        # writer token as `python -m mlplatform_reporter simulate` sends it.
        frame = pd.read_csv(DATA).sample(n=20, random_state=3)
        writer = {"Authorization": "Bearer e2e-writer"}
        with httpx.Client(base_url=serving.url, timeout=30, headers=writer) as client:
            summary = replay(
                client,
                frame,
                shipped_dataset.features,
                "target",
                rate=200,
                feedback_fraction=1.0,
                progress=False,
            )
        assert summary.feedback_sent == 20
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if httpx.get(serving.url + "/health").json()["model_version"] == "v2":
                break
            time.sleep(0.5)
        time.sleep(1)  # keep requests flowing on v2 for a moment
    finally:
        stop.set()
        flowing.join()
    assert httpx.get(serving.url + "/health").json()["model_version"] == "v2"

    # The retrainer serving started has exited and been waited for: no zombie is left.
    def children() -> list[str]:  # of every thread: a child is its forking thread's
        tasks = Path(f"/proc/{serving.proc.pid}/task").glob("*/children")
        return [pid for task in tasks for pid in task.read_text().split()]

    deadline = time.monotonic() + 30
    while children() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert children() == []
    assert failures == []
    assert versions[0] == "v1" and versions[-1] == "v2"
    assert registry.production_version() == "v2"
    assert registry.manifest("v2")["trigger"] == ["20 new labelled rows (k=20)"]

    # Rollback, by the same path: alias back to v1 and serving told to reload.
    proc = _retrainer("rollback", {**env, "MLPLATFORM_SERVING_URL": serving.url})
    assert proc.returncode == 0, proc.stderr
    assert "production is v1 again (was v2); rollout: local" in proc.stdout
    assert httpx.get(serving.url + "/health").json()["model_version"] == "v1"
