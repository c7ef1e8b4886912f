"""``mlplatform run`` with MLPLATFORM_ACTION=register:<id>, as serving's launcher starts it for
an upload of POST /admin/models: the upload is registered, its outcome written and its files
deleted; a retried run registers nothing twice; an unknown upload is one line. A run that fails
where a retry may succeed (the store, the retrain lock) exits 1 and leaves the upload pending
with its files: the retry registers it."""

from __future__ import annotations

import http.client
import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import joblib
import pandas as pd
import pytest
import skops.io
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from mlplatform_common import keys, storage, uploads
from mlplatform_common.lock import StoreLock
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.settings import DEV_SIGNING_KEY
from mlplatform_common.storage import LocalStore, Store
from tests.conftest import DATA, SIGNING_KEY, S3Server, ServingProcess, run_cli, serving_env

NAME = "fraud"


def _env(root: Path, upload_id: str) -> dict[str, str]:
    return {
        "MLPLATFORM_STORE_URL": f"file://{root}",
        "MLPLATFORM_DEV_MODE": "true",
        "MLPLATFORM_ROLLOUT": "none",
        "MLPLATFORM_MODEL_NAME": NAME,
        "MLPLATFORM_ACTION": f"register:{upload_id}",
    }


def _upload(store: Store, model: bytes, filename: str, promote: bool) -> str:
    """An upload as serving stores it (routes/uploads.py)."""
    upload_id = uploads.new_id()
    request = {
        "model_file": filename,
        "format": uploads.model_format(filename),
        "data_file": "cancer.csv",
        "dataset": uploads.dataset_name("cancer.csv", upload_id),
        "target": "target",
        "task": None,
        "promote": promote,
        "trust": [],
    }
    uploads.store_upload(store, upload_id, model, DATA.read_bytes(), request)
    return upload_id


def _pipeline() -> Pipeline:
    frame = pd.read_csv(DATA)
    model = Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression(max_iter=500))])
    return model.fit(frame.drop(columns=["target"]), frame["target"])


def test_an_upload_is_registered_once_and_its_files_deleted(tmp_path: Path) -> None:
    root = LocalStore(tmp_path / "store")
    root.ensure()
    store = storage.for_model(root, NAME)
    buf = io.BytesIO()
    skops.io.dump(_pipeline(), buf)
    upload_id = _upload(store, buf.getvalue(), "lr.skops", promote=True)

    proc = run_cli("mlplatform_retrainer", ["run"], _env(tmp_path / "store", upload_id))
    assert proc.returncode == 0, proc.stderr
    assert "model v1 (classification" in proc.stdout and "in production" in proc.stdout
    registry = ModelRegistry(store, DEV_SIGNING_KEY.encode())
    assert registry.versions() == ["v1"] and registry.production_version() == "v1"
    assert registry.manifest("v1")["source_file"] == "lr.skops"
    status = uploads.status(store, upload_id)
    assert status["state"] == "published" and status["version"] == "v1"
    assert status["promoted"] is True
    assert sorted(store.list_keys(keys.upload_file(upload_id, ""))) == [
        keys.upload_file(upload_id, "outcome.json"),
        keys.upload_file(upload_id, "request.json"),
    ]

    # A retried Job (Kubernetes' backoffLimit) finds the outcome: nothing registered twice.
    again = run_cli("mlplatform_retrainer", ["run"], _env(tmp_path / "store", upload_id))
    assert again.returncode == 0, again.stderr
    assert "model v1" in again.stdout
    assert registry.versions() == ["v1"]


def test_a_refused_upload_is_one_line_its_outcome_written_and_nothing_published(
    tmp_path: Path,
) -> None:
    root = LocalStore(tmp_path / "store")
    root.ensure()
    store = storage.for_model(root, NAME)
    buf = io.BytesIO()
    joblib.dump(LogisticRegression(), buf)  # not fitted
    upload_id = _upload(store, buf.getvalue(), "lr.joblib", promote=True)
    for _ in range(2):  # the first run, then a retried one: the same line
        proc = run_cli("mlplatform_retrainer", ["run"], _env(tmp_path / "store", upload_id))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        # the stages it passed (the pod's log), then the refusal's one line
        lines = [line for line in proc.stderr.splitlines() if " ERROR " in line]
        assert len(lines) == 1 and "UploadRefused" in lines[0], proc.stderr
        assert "lr.joblib: the LogisticRegression is not fitted" in lines[0]
        assert "Traceback" not in proc.stderr
    status = uploads.status(store, upload_id)
    assert status["state"] == "refused" and "is not fitted" in status["reason"]
    assert ModelRegistry(store, DEV_SIGNING_KEY.encode()).versions() == []
    assert store.list_keys(keys.DATASETS) == []
    assert not store.exists(keys.upload_file(upload_id, uploads.DATA))


def test_an_unknown_upload_is_one_line(tmp_path: Path) -> None:
    proc = run_cli("mlplatform_retrainer", ["run"], _env(tmp_path / "store", "0" * 32))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"upload '{'0' * 32}': no such upload" in lines[0], proc.stderr


# -- a run that may succeed when retried (errors.retryable: exit 1) -----------------------


def _s3_upload(
    s3_server: S3Server, promote: bool, endpoint: str | None = None
) -> tuple[Store, str, dict[str, str]]:
    """A bucket on the real SeaweedFS holding one upload of a fitted skops pipeline, and the
    environment of the run serving starts for it (on ``endpoint``, default the server's)."""
    root = s3_server.store()
    store = storage.for_model(root, NAME)
    buf = io.BytesIO()
    skops.io.dump(_pipeline(), buf)
    upload_id = _upload(store, buf.getvalue(), "lr.skops", promote=promote)
    env = serving_env(
        s3_server,
        root.bucket,
        MLPLATFORM_S3_TIMEOUT_SECONDS="2",
        MLPLATFORM_ROLLOUT="none",
        MLPLATFORM_MODEL_NAME=NAME,
        MLPLATFORM_ACTION=f"register:{upload_id}",
    )
    if endpoint is not None:
        env["MLPLATFORM_S3_ENDPOINT"] = endpoint
    return store, upload_id, env


def _left_pending(store: Store, upload_id: str, request_file: str) -> None:
    """No outcome, the status pending, and the model and the data kept for the retry."""
    assert uploads.outcome(store, upload_id) is None
    assert uploads.status(store, upload_id)["state"] == uploads.PENDING
    assert sorted(store.list_keys(keys.upload_file(upload_id, ""))) == sorted(
        keys.upload_file(upload_id, f) for f in ("data.csv", request_file, "request.json")
    )


class _PartialOutage(BaseHTTPRequestHandler):
    """In front of the real SeaweedFS: while ``down`` is set, a write anywhere but the
    uploads' own objects is answered 503 ServiceUnavailable (as an S3 under load or losing a
    volume does), so the version cannot be published while the upload's outcome could still
    be written; everything else is passed through."""

    protocol_version = "HTTP/1.1"
    upstream = ""
    down = threading.Event()

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.command == "PUT" and self.down.is_set() and "/uploads/" not in self.path:
            error = b"<Error><Code>ServiceUnavailable</Code><Message>down</Message></Error>"
            self._answer(503, [("content-type", "application/xml")], error)
            return
        conn = http.client.HTTPConnection(self.upstream, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
        conn.request(self.command, self.path, body or None, headers)
        resp = conn.getresponse()
        payload = resp.read()
        kept = [(k, v) for k, v in resp.getheaders() if k.lower() != "transfer-encoding"]
        if self.command != "HEAD":
            kept = [(k, v) for k, v in kept if k.lower() != "content-length"]
            kept.append(("content-length", str(len(payload))))
        self._answer(resp.status, kept, payload)
        conn.close()

    def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response_only(status)
        for name, value in headers:
            self.send_header(name, value)
        if not any(k.lower() == "content-length" for k, _ in headers):
            self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _forward

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def partial_outage(s3_server: S3Server) -> Iterator[tuple[str, threading.Event]]:
    """The proxy's endpoint and its ``down`` switch (off)."""
    handler = type("Outage", (_PartialOutage,), {"upstream": s3_server.endpoint})
    handler.down = threading.Event()
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{proxy.server_address[1]}", handler.down
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_an_outage_while_publishing_leaves_the_upload_pending_and_the_retry_registers_it(
    s3_server: S3Server, partial_outage: tuple[str, threading.Event]
) -> None:
    endpoint, down = partial_outage
    store, upload_id, env = _s3_upload(s3_server, promote=True, endpoint=endpoint)

    down.set()
    first = run_cli("mlplatform_retrainer", ["run"], env)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "StorageUnavailable" in first.stderr and "unavailable" in first.stderr
    assert "UploadRefused" not in first.stderr
    _left_pending(store, upload_id, "model.skops")
    registry = ModelRegistry(store, SIGNING_KEY)
    assert registry.versions() == []
    # What the user polls meanwhile: still pending, not refused.
    direct = {**env, "MLPLATFORM_S3_ENDPOINT": s3_server.endpoint}
    serving = ServingProcess({k: v for k, v in direct.items() if k != "MLPLATFORM_ACTION"})
    serving.start(wait_ready=False)
    try:
        url = f"{serving.url}/admin/models/uploads/{upload_id}"
        auth = {"Authorization": "Bearer proc-admin"}
        pending = httpx.get(url, headers=auth)
        assert pending.status_code == 200 and pending.json()["state"] == "pending", pending.text

        down.clear()  # the store is back: Kubernetes' retry of the Job
        second = run_cli("mlplatform_retrainer", ["run"], env)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "model v1 (classification" in second.stdout and "in production" in second.stdout
        assert registry.versions() == ["v1"] and registry.production_version() == "v1"
        done = httpx.get(url, headers=auth).json()
        assert done["state"] == "published" and done["version"] == "v1", done
        assert done["promoted"] is True
    finally:
        serving.stop()
    assert not store.exists(uploads.model_key(upload_id, uploads.read_request(store, upload_id)))


def test_a_store_down_for_the_first_run_leaves_the_upload_for_the_retry(
    s3_server: S3Server,
) -> None:
    store, upload_id, env = _s3_upload(s3_server, promote=False)
    s3_server.stop()
    try:
        first = run_cli("mlplatform_retrainer", ["run"], env)
    finally:
        s3_server.start()
    assert first.returncode == 1, first.stdout + first.stderr
    assert "StorageUnavailable" in first.stderr
    _left_pending(store, upload_id, "model.skops")

    second = run_cli("mlplatform_retrainer", ["run"], env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "published as a candidate" in second.stdout
    assert uploads.status(store, upload_id)["version"] == "v1"


def test_a_held_retrain_lock_leaves_the_published_upload_pending_and_the_retry_promotes_it(
    s3_server: S3Server,
) -> None:
    store, upload_id, env = _s3_upload(s3_server, promote=True)
    lock = StoreLock(store, keys.RETRAIN_LOCK, 600, owner="a-running-retrain")
    lock.acquire()
    try:
        first = run_cli("mlplatform_retrainer", ["run"], env)
    finally:
        lock.release()
    # Published, but its promotion was not done: no outcome yet, the upload kept.
    assert first.returncode == 1, first.stdout + first.stderr
    assert "LockHeld" in first.stderr
    _left_pending(store, upload_id, "model.skops")
    registry = ModelRegistry(store, SIGNING_KEY)
    assert registry.versions() == ["v1"] and registry.production() is None
    assert registry.manifest("v1")["upload"] == upload_id

    # The retry finds v1 by its upload (no second version) and promotes it.
    second = run_cli("mlplatform_retrainer", ["run"], env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert registry.versions() == ["v1"] and registry.production_version() == "v1"
    status = uploads.status(store, upload_id)
    assert status["state"] == "published" and status["promoted"] is True
    assert sorted(store.list_keys(keys.upload_file(upload_id, ""))) == [
        keys.upload_file(upload_id, "outcome.json"),
        keys.upload_file(upload_id, "request.json"),
    ]
