"""Faults: the store going away and coming back, processes killed mid-write, tampered
versions, and retrains that crash.

Every fault is injected into real processes: the S3 server is stopped and started again on
the same ports with the same data directory (a real SeaweedFS: what it acknowledged must come
back), and publishers, retrainers and serving processes are killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import joblib
import pytest

from mlplatform_common import datalog, keys
from mlplatform_common.errors import ModelNotFound
from mlplatform_common.lock import StoreLock
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import LocalStore, Store
from tests.conftest import (
    REPO,
    SIGNING_KEY,
    S3Server,
    ServingProcess,
    publish_trained,
    published_local_store,
)
from tests.reliability.conftest import (
    PROFILE,
    WRITER,
    Figures,
    admin,
    local_env,
    restart_on_same_port,
    s3_env,
    start_together,
)

pytestmark = pytest.mark.soak


# -- the store goes down and comes back -----------------------------------------------------


class Recorder(threading.Thread):
    """Sends predictions and feedback in a loop and records every answer."""

    def __init__(self, url: str, rows: list[dict[str, float]], seed: int) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.rows = rows
        self.rng = random.Random(seed)
        self.halt = threading.Event()
        self.answers: list[tuple[float, str, int, dict[str, Any]]] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while not self.halt.is_set():
                row = self.rows[self.rng.randrange(len(self.rows))]
                if self.rng.random() < 0.6:
                    kind, r = "predict", c.post("/predict", json={"instances": [row] * 5})
                else:
                    body = {"features": row, "prediction": 1, "target": self.rng.randrange(2)}
                    kind, r = "feedback", c.post("/feedback", headers=WRITER, json=body)
                self.answers.append((time.monotonic(), kind, r.status_code, r.json()))


def test_store_outage_predictions_answer_feedback_503_and_all_recovers_without_restart(
    trained: Any, shipped_dataset: Any, rows: list[dict[str, float]], figures: Figures
) -> None:
    server = S3Server().start()
    store = server.store()
    publish_trained(ModelRegistry(store, SIGNING_KEY), trained, shipped_dataset)
    env = s3_env(
        server.endpoint,
        store.bucket,
        MLPLATFORM_S3_TIMEOUT_SECONDS="1",
        MLPLATFORM_S3_RETRIES="0",
        MLPLATFORM_LOG_BUFFER_MAX_ROWS="300",
        MLPLATFORM_FEEDBACK_COUNT_MAX_AGE="0",
    )
    proc = ServingProcess(env).start()
    pid = proc.proc.pid
    recorders = [Recorder(proc.url, rows, seed) for seed in range(4)]
    try:
        for r in recorders:
            r.start()
        time.sleep(2)
        down_at = time.monotonic()
        server.stop()
        time.sleep(PROFILE.outage_seconds)
        up_at = time.monotonic()
        restart_on_same_port(server)
        # Recovery without a restart: feedback is stored again.
        deadline = time.monotonic() + 30
        recovered_at = None
        while time.monotonic() < deadline and recovered_at is None:
            time.sleep(0.2)
            recent = [a for r in recorders for a in list(r.answers) if a[0] > up_at]
            recovered_at = next((a[0] for a in recent if a[1] == "feedback" and a[2] == 201), None)
        time.sleep(2)
        for r in recorders:
            r.halt.set()
        for r in recorders:
            r.join()
        assert proc.proc.pid == pid and proc.proc.poll() is None  # never restarted
        assert httpx.get(proc.url + "/ready").status_code == 200
        assert httpx.get(proc.url + "/model").status_code == 200  # reads the store again
        system = httpx.get(proc.url + "/metrics/system").json()["prediction_log"]
    finally:
        for r in recorders:
            r.halt.set()
        output = proc.stop()  # flushes what is still buffered
    try:
        answers = sorted(a for r in recorders for a in r.answers)
        assert recovered_at is not None, "feedback never recovered after the store came back"
        predictions = [a for a in answers if a[1] == "predict"]
        feedback = [a for a in answers if a[1] == "feedback"]
        # Predictions never failed, before, during or after the outage.
        assert {a[2] for a in predictions} == {200}
        during = [a for a in predictions if down_at < a[0] < up_at]
        assert during, "no prediction was answered while the store was down"
        # Feedback: stored (201) or refused with a clear 503; never anything else.
        assert {a[2] for a in feedback} <= {201, 503}
        refused = [a for a in feedback if a[2] == 503]
        assert refused, "the outage did not reach a feedback request"
        for _, _, _, body in refused:
            assert body["type"] == "StorageUnavailable", body
            assert "object store" in body["error"] and "unavailable" in body["error"], body
        # Every 201 is a readable row (and none is stored twice).
        acknowledged = {a[3]["feedback_id"] for a in feedback if a[2] == 201}
        stored = datalog.read_feedback(store)
        assert stored["feedback_id"].is_unique
        assert acknowledged <= set(stored["feedback_id"])
        # The prediction log: every answered row is either written or counted as dropped.
        answered = {p["prediction_id"] for a in predictions for p in a[3]["predictions"]}
        logged = datalog.read_predictions(store)
        assert logged["prediction_id"].is_unique
        assert set(logged["prediction_id"]) <= answered
        assert system["dropped_rows"] > 0, system
        # Every answered row is counted once, written, dropped or pending, and every row
        # counted as written is stored. The store may hold a few more: a write that reached the server as
        # it went down can lose its answer, and its rows are then counted as dropped (seen on
        # SeaweedFS; moto's instant stop never showed it).
        counted = system["written_rows"] + system["dropped_rows"] + system["pending_rows"]
        assert counted == len(answered), system  # pending: written when serving stops
        assert len(logged) >= system["written_rows"], (len(logged), system)
        assert "Traceback" not in output, output[-3000:]
    finally:
        server.stop()
    figures.record(
        "store_outage",
        outage_seconds=PROFILE.outage_seconds,
        faults_injected=1,
        predictions_answered=len(answered),
        predictions_answered_during_outage=sum(len(a[3]["predictions"]) for a in during),
        prediction_requests_failed=0,
        feedback_201=len(acknowledged),
        feedback_503=len(refused),
        feedback_stored_but_answered_503=len(set(stored["feedback_id"]) - acknowledged),
        feedback_rows_lost=len(acknowledged - set(stored["feedback_id"])),
        prediction_log_written=len(logged),
        prediction_log_dropped_and_counted=system["dropped_rows"],
        seconds_to_recover_after_store_back=round(recovered_at - up_at, 2),
    )


# -- processes killed mid-write -------------------------------------------------------------

PUBLISHER = """
import os, signal, sys
import joblib
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import LocalStore, S3Store
from tests.conftest import S3_KEYS, SIGNING_KEY, publish_trained

trained, dataset = joblib.load(sys.argv[1])
url, mode = sys.argv[2], sys.argv[3]
if url.startswith("s3://"):
    store = S3Store(url[5:], os.environ["ENDPOINT"], **S3_KEYS)
else:
    store = LocalStore(url[7:])
if mode == "kill-before-manifest":
    put = store.put
    def put_or_die(key, data, *a, **kw):
        if key.endswith("/manifest.json"):
            os.kill(os.getpid(), signal.SIGKILL)
        return put(key, data, *a, **kw)
    store.put = put_or_die
registry = ModelRegistry(store, SIGNING_KEY)
if mode != "fork-loop":
    publish_trained(registry, trained, dataset, promote=False)
    sys.exit(0)
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # killed children are reaped at once
publish_trained(registry, trained, dataset, promote=False)  # imports done before forking
# Loaded once; each line on stdin forks a child that publishes in a loop until killed.
print("ready", flush=True)
for _ in sys.stdin:
    child = os.fork()
    if child == 0:
        while True:
            publish_trained(registry, trained, dataset, promote=False)
    print(child, flush=True)
"""


def _publisher(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory, trained: Any, shipped_dataset: Any) -> str:
    path = tmp_path_factory.mktemp("model") / "trained.joblib"
    joblib.dump((trained, shipped_dataset), path)
    return str(path)


def test_a_publisher_killed_between_files_and_manifest_leaves_no_version(
    s3_server: S3Server, model_file: str, trained: Any, shipped_dataset: Any
) -> None:
    store = s3_server.store()
    url, env = f"s3://{store.bucket}", {"ENDPOINT": s3_server.endpoint}
    registry = ModelRegistry(store, SIGNING_KEY)
    publish_trained(registry, trained, shipped_dataset)  # v1, in production
    proc = _publisher([model_file, url, "kill-before-manifest"], env)
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read() if proc.stdout else ""
    # v2's files are there, its manifest is not: v2 does not exist.
    assert store.exists(keys.model_file("v2", "model.joblib"))
    assert not store.exists(keys.model_file("v2", "manifest.json"))
    assert registry.versions() == ["v1"]
    assert registry.production_version() == "v1"
    with pytest.raises(ModelNotFound):
        registry.load("v2")
    # The next publisher skips the claimed number and publishes a whole version.
    assert publish_trained(registry, trained, shipped_dataset, promote=False) == "v3"
    assert registry.versions() == ["v1", "v3"]
    registry.load("v3")


def _wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_random_sigkills_of_a_publisher_never_expose_a_partial_version(
    tmp_path: Path, model_file: str, figures: Figures
) -> None:
    store = LocalStore(tmp_path / "store")
    store.ensure()
    registry = ModelRegistry(store, SIGNING_KEY)
    rng = random.Random(7)
    checked: set[str] = set()
    server = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, model_file, f"file://{store.root}", "fork-loop"],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdin is not None and server.stdout is not None
    try:
        assert server.stdout.readline().strip() == "ready"
        for _ in range(PROFILE.kills):
            server.stdin.write("go\n")
            server.stdin.flush()
            child = int(server.stdout.readline())
            time.sleep(rng.uniform(0.01, 0.4))  # somewhere in a publish (~35 ms each)
            os.kill(child, signal.SIGKILL)
            _wait_gone(child)
            # Every visible version verifies and loads; every visible key is whole.
            for version in registry.versions():
                if version not in checked:
                    registry.load(version)
                    checked.add(version)
            for key in store.list_keys():
                assert ".tmp-" not in key, key
                store.get(key)
    finally:
        server.kill()
        server.wait()
    claimed = store.list_dirs(keys.MODELS)
    visible = registry.versions()
    assert visible, "no publish completed: kills came too early to test anything"
    leftovers = [p.name for p in store.root.rglob(".*.tmp-*")]
    figures.record(
        "publisher_sigkills",
        faults_injected=PROFILE.kills,
        versions_visible=len(visible),
        versions_claimed=len(claimed),
        half_written_versions_hidden=len(claimed) - len(visible),
        temp_files_left_on_disk_never_listed=len(leftovers),
    )


def test_serving_killed_mid_feedback_leaves_only_whole_rows(
    tmp_path: Path,
    trained: Any,
    shipped_dataset: Any,
    rows: list[dict[str, float]],
    figures: Figures,
) -> None:
    store = published_local_store(tmp_path / "store", trained, shipped_dataset)
    proc = ServingProcess(local_env(store.root)).start()
    acknowledged: list[str] = []
    halt = threading.Event()

    def post() -> None:
        with httpx.Client(timeout=10) as c:
            i = 0
            while not halt.is_set():
                body = {"features": rows[i % len(rows)], "prediction": 1, "target": i % 2}
                try:
                    r = c.post(proc.url + "/feedback", headers=WRITER, json=body)
                except httpx.HTTPError:
                    return  # the server is gone
                if r.status_code == 201:
                    acknowledged.append(r.json()["feedback_id"])
                i += 1

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(3)
    proc.proc.send_signal(signal.SIGKILL)
    proc.proc.wait(timeout=10)
    halt.set()
    for t in threads:
        t.join()
    proc.stop()
    assert len(acknowledged) > 20
    feedback_keys = store.list_keys(keys.FEEDBACK)
    for key in feedback_keys:
        assert ".tmp-" not in key, key
        record = json.loads(store.get(key))  # whole JSON, never a prefix
        assert {"feedback_id", "target", "features", "ts"} <= set(record), record
    stored = datalog.read_feedback(store)
    assert stored["feedback_id"].is_unique
    assert set(acknowledged) <= set(stored["feedback_id"])
    figures.record(
        "serving_sigkill_mid_feedback",
        faults_injected=1,
        feedback_201_before_kill=len(acknowledged),
        feedback_rows_stored=len(stored),
        rows_stored_without_an_answer=len(stored) - len(acknowledged),
        rows_lost=0,
        partial_rows_visible=0,
        temp_files_left_on_disk_never_listed=len(list(store.root.rglob(".*.tmp-*"))),
    )


# -- tampered versions ---------------------------------------------------------------------


def _tamper_manifest(store: Store, version: str) -> None:
    key = keys.model_file(version, "manifest.json")
    manifest = json.loads(store.get(key))
    manifest["metrics"] = {"test": {"f1": 1.0}}  # better numbers, same signature
    store.put(key, json.dumps(manifest).encode())


def _tamper_file(store: Store, version: str, name: str = "model.joblib") -> None:
    key = keys.model_file(version, name)
    data = bytearray(store.get(key))
    data[len(data) // 2] ^= 0xFF
    store.put(key, bytes(data))


def test_a_tampered_version_is_refused_and_serving_stays_on_the_last_good_one(
    s3_server: S3Server,
    trained: Any,
    shipped_dataset: Any,
    rows: list[dict[str, float]],
    figures: Figures,
) -> None:
    store = s3_server.store()
    registry = ModelRegistry(store, SIGNING_KEY)
    publish_trained(registry, trained, shipped_dataset)  # v1
    publish_trained(registry, trained, shipped_dataset, promote=False)  # v2
    publish_trained(registry, trained, shipped_dataset, promote=False)  # v3
    _tamper_manifest(store, "v2")
    _tamper_file(store, "v3")
    proc = ServingProcess(s3_env(s3_server.endpoint, store.bucket)).start()
    failures: list[str] = []
    versions: set[str] = set()
    halt = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=30) as c:
            while not halt.is_set():
                r = c.post(proc.url + "/predict", json={"instances": rows[:3]})
                if r.status_code != 200:
                    failures.append(r.text)
                else:
                    versions.add(r.json()["model_version"])

    t = threading.Thread(target=traffic)
    t.start()
    try:
        refusals = {}
        for version, fragment in (("v2", "invalid signature"), ("v3", "does not match")):
            r = httpx.post(
                proc.url + "/admin/reload", json={"version": version}, headers=admin(), timeout=30
            )
            assert r.status_code == 503, r.text
            assert r.json()["type"] == "IntegrityError" and fragment in r.json()["error"]
            refusals[version] = r.json()["error"]
            assert httpx.get(proc.url + "/health").json()["model_version"] == "v1"
        time.sleep(0.5)
    finally:
        halt.set()
        t.join()
        proc.stop()
    assert failures == [] and versions == {"v1"}

    # A fresh start on a tampered version stays not ready and says why.
    store.put_json(keys.PRODUCTION_ALIAS, {"version": "v2", "previous": "v1", "history": ["v1"]})
    cases = {
        "models/v2/manifest.json has an invalid signature": {},
        "models/v3/model.joblib does not match": {"MLPLATFORM_MODEL_VERSION": "v3"},
    }
    fresh = [ServingProcess(s3_env(s3_server.endpoint, store.bucket, **e)) for e in cases.values()]
    start_together(fresh, wait_ready=False)
    try:
        for proc_, fragment in zip(fresh, cases, strict=True):
            r = httpx.get(proc_.url + "/ready")
            assert r.status_code == 503
            assert r.json()["type"] == "ModelNotReady" and fragment in r.json()["error"], r.json()
            assert httpx.post(proc_.url + "/predict", json={"features": rows[0]}).status_code == 503
    finally:
        for proc_ in fresh:
            proc_.stop()
    figures.record("tampered_versions", faults_injected=4, refused=4, requests_failed=0)


# -- retrains that crash ---------------------------------------------------------------------


@pytest.fixture
def retrain_store(local_store: Store, trained: Any, shipped_dataset: Any) -> Store:
    from mlplatform_retrainer.job import upload_dataset

    upload_dataset(local_store, shipped_dataset)
    publish_trained(ModelRegistry(local_store, SIGNING_KEY), trained, shipped_dataset)
    return local_store


def _retrainer_settings(**kw: Any) -> Any:
    from mlplatform_retrainer.settings import RetrainerSettings

    return RetrainerSettings(signing_key=SIGNING_KEY.decode(), rollout="none", **kw)


@pytest.mark.parametrize("where", ["training", "publishing"])
def test_a_retrain_that_raises_leaves_production_and_releases_the_lock(
    retrain_store: Store, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    from mlplatform_retrainer import retrain

    if where == "training":

        def broken(*a: Any, **kw: Any) -> Any:
            raise RuntimeError("training blew up")

        monkeypatch.setattr(retrain, "train_with_progress", broken)
    else:
        put = retrain_store.put

        def put_or_fail(key: str, data: bytes, *a: Any, **kw: Any) -> None:
            if key.endswith("/manifest.json"):
                raise OSError("disk full")
            put(key, data, *a, **kw)

        monkeypatch.setattr(retrain_store, "put", put_or_fail)
    alias_before = retrain_store.get(keys.PRODUCTION_ALIAS)
    with pytest.raises((RuntimeError, OSError)):
        retrain.run(_retrainer_settings(), force=True, store=retrain_store)
    assert retrain_store.get(keys.PRODUCTION_ALIAS) == alias_before
    assert ModelRegistry(retrain_store, SIGNING_KEY).versions() == ["v1"]
    assert not retrain_store.exists(keys.RETRAIN_LOCK)  # released on the way out
    monkeypatch.undo()
    assert retrain.run(_retrainer_settings(), force=True, store=retrain_store).outcome in (
        "promoted",
        "rejected",
    )


RETRAINER_KILLED_IN_TRAINING = """
import sys, time
from pathlib import Path
from mlplatform_retrainer import retrain
from mlplatform_retrainer.__main__ import main

def hang(*a, **kw):
    Path(sys.argv[1]).touch()
    time.sleep(300)

retrain.train_with_progress = hang
sys.exit(main(["run", "--force"]))
"""


def test_a_retrainer_killed_during_training_leaves_production_and_the_lock_expires(
    retrain_store: Store, tmp_path: Path, figures: Figures
) -> None:
    from mlplatform_retrainer import retrain

    assert isinstance(retrain_store, LocalStore)
    # long enough that the child's start and the checks below end before it expires under load
    ttl = 15.0
    marker = tmp_path / "training"
    env = {
        **os.environ,
        **local_env(retrain_store.root),
        "MLPLATFORM_ROLLOUT": "none",
        "MLPLATFORM_LOCK_TTL_SECONDS": str(ttl),
    }
    alias_before = retrain_store.get(keys.PRODUCTION_ALIAS)
    proc = subprocess.Popen(
        [sys.executable, "-c", RETRAINER_KILLED_IN_TRAINING, str(marker)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), "the retrainer never reached training"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)

    assert retrain_store.get(keys.PRODUCTION_ALIAS) == alias_before
    assert ModelRegistry(retrain_store, SIGNING_KEY).versions() == ["v1"]
    holder = StoreLock(retrain_store, keys.RETRAIN_LOCK, ttl).holder()
    assert holder is not None, "the killed retrainer's lock should still be there"
    settings = _retrainer_settings(lock_ttl_seconds=ttl)
    # Before expiry: nobody else runs.
    assert retrain.run(settings, force=True, store=retrain_store).outcome == "locked"
    time.sleep(max(0.0, float(holder["expires_at"]) - time.time()) + 0.2)
    # After expiry: the next run breaks the lock, finishes and releases it.
    result = retrain.run(settings, force=True, store=retrain_store)
    assert result.outcome in ("promoted", "rejected")
    assert not retrain_store.exists(keys.RETRAIN_LOCK)
    figures.record(
        "retrainer_crashes",
        faults_injected=3,
        production_alias_changed_by_a_crash=0,
        lock_ttl_seconds=ttl,
        lock_released_after_expiry=True,
    )
