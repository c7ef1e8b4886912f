"""Reporter fixtures: real Prometheus and Pushgateway processes, a published model, traffic.

Prometheus and the Pushgateway are the Debian packages' binaries, started here on free loopback
ports with temporary directories and stopped by PID. A missing binary fails the test.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from mlplatform_common import datalog
from mlplatform_common.quality import to_builtin
from mlplatform_common.registry import LoadedModel, ModelRegistry
from mlplatform_common.schema import UNKNOWN, category_value, embed, encoded_frame, is_category
from mlplatform_common.storage import Store
from mlplatform_reporter.settings import ReporterSettings
from tests.conftest import REPO, SIGNING_KEY, free_port, publish_trained

PROMETHEUS = Path("/usr/bin/prometheus")
PUSHGATEWAY = Path("/usr/bin/prometheus-pushgateway")
PROMTOOL = Path("/usr/bin/promtool")
ALERTS = REPO / "charts" / "mlplatform" / "files" / "prometheus" / "alerts.yaml"


def require_binary(path: Path) -> Path:
    """Fail (never skip) when a binary the tests run for real is missing."""
    if not path.is_file():
        pytest.fail(
            f"{path} is missing: install the Debian packages prometheus and "
            "prometheus-pushgateway (make test-deps)"
        )
    return path


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}: {log.read_text()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout}s: {log.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass
class PromStack:
    """A Pushgateway and a Prometheus that scrapes it every second with ``honor_labels``."""

    pushgateway_url: str
    prometheus_url: str

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.prometheus_url}/api/v1/query", params={"query": expr}, timeout=5)
        r.raise_for_status()
        body = r.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for(self, expr: str, expected: float, timeout: float = 20) -> float:
        """Poll until ``expr`` returns exactly one sample equal to ``expected``."""
        deadline = time.monotonic() + timeout
        seen: Any = None
        while time.monotonic() < deadline:
            seen = self.query(expr)
            if len(seen) == 1 and float(seen[0]["value"][1]) == pytest.approx(expected, abs=1e-9):
                return float(seen[0]["value"][1])
            time.sleep(0.3)
        raise AssertionError(f"{expr}: expected {expected}, Prometheus has {seen}")

    def wait_absent(self, expr: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        seen: Any = None
        while time.monotonic() < deadline:
            seen = self.query(expr)
            if not seen:
                return
            time.sleep(0.3)
        raise AssertionError(f"{expr}: expected no series, Prometheus has {seen}")

    def clear(self) -> None:
        """Delete every group from the Pushgateway (state left by another test)."""
        r = httpx.put(f"{self.pushgateway_url}/api/v1/admin/wipe", timeout=5)
        assert r.status_code in (200, 202), r.text

    def push_before_names(self, job: str, metric: str, value: float) -> None:
        """Push ``metric`` for release ``blue`` in namespace ``ml`` under the grouping key of
        the jobs before named models (no ``model`` label), as an upgraded release left it."""
        from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

        old = CollectorRegistry()
        Gauge(metric, "x", registry=old).set(value)
        before_names = {"instance": "mlplatform", "release": "blue", "namespace": "ml"}
        push_to_gateway(self.pushgateway_url, job=job, grouping_key=before_names, registry=old)

    def groups(self) -> list[dict[str, str]]:
        """The Pushgateway's groups, each as its grouping key's labels (``job`` included)."""
        r = httpx.get(f"{self.pushgateway_url}/api/v1/metrics", timeout=5)
        r.raise_for_status()
        return [g["labels"] for g in r.json()["data"]]


@contextmanager
def running_prom_stack(root: Path, config: Callable[[str], dict[str, Any]]) -> Iterator[PromStack]:
    """A real Pushgateway and Prometheus on free ports, stopped on exit.

    ``config`` gets the Pushgateway's ``host:port`` and returns Prometheus' configuration.
    """
    pushgateway, prometheus = require_binary(PUSHGATEWAY), require_binary(PROMETHEUS)
    pg_port, prom_port = free_port(), free_port()
    pg_log, prom_log = root / "pushgateway.log", root / "prometheus.log"
    config_file = root / "prometheus.yml"
    config_file.write_text(json.dumps(config(f"127.0.0.1:{pg_port}")))  # JSON is YAML
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            subprocess.Popen(
                [
                    str(pushgateway),
                    f"--web.listen-address=127.0.0.1:{pg_port}",
                    "--web.enable-admin-api",  # PromStack.clear wipes every group
                    # in memory only: Debian's default file is shared by every Pushgateway on
                    # the machine, so groups pushed by other test runs came back
                    "--persistence.file=",
                ],
                stdout=pg_log.open("wb"),
                stderr=subprocess.STDOUT,
            )
        )
        _wait_ready(f"http://127.0.0.1:{pg_port}/-/ready", procs[-1], pg_log)
        procs.append(
            subprocess.Popen(
                [
                    str(prometheus),
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={root / 'data'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                ],
                stdout=prom_log.open("wb"),
                stderr=subprocess.STDOUT,
            )
        )
        _wait_ready(f"http://127.0.0.1:{prom_port}/-/ready", procs[-1], prom_log)
        yield PromStack(f"http://127.0.0.1:{pg_port}", f"http://127.0.0.1:{prom_port}")
    finally:
        for proc in reversed(procs):
            _stop(proc)


@pytest.fixture(scope="session")
def prom_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PromStack]:
    def config(pushgateway: str) -> dict[str, Any]:
        return {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {
                    "job_name": "pushgateway",
                    "honor_labels": True,
                    "static_configs": [{"targets": [pushgateway]}],
                }
            ],
        }

    with running_prom_stack(tmp_path_factory.mktemp("prom"), config) as stack:
        yield stack


# -- a published model and its traffic ---------------------------------------------------------


def published(store: Store, trained, dataset) -> LoadedModel:  # type: ignore[no-untyped-def]
    """``trained`` published and promoted, with its training data in the store."""
    from mlplatform_retrainer.job import upload_dataset

    registry = ModelRegistry(store, SIGNING_KEY)
    upload_dataset(store, dataset)
    return registry.load(publish_trained(registry, trained, dataset))


def split_rows(dataset, task: str = "classification") -> pd.DataFrame:  # type: ignore[no-untyped-def]
    """The retrainer's test split of a data set: features as read and ``target``."""
    from mlplatform_retrainer.train import TrainConfig, split

    parts = split(dataset.X, dataset.y, TrainConfig(), task=task)
    out = parts.X_test.copy()
    out["target"] = parts.y_test.to_numpy()
    return out.reset_index(drop=True)


@pytest.fixture
def model(store: Store, trained, shipped_dataset) -> LoadedModel:  # type: ignore[no-untyped-def]
    """The shipped model, published and promoted, with its training data in the store."""
    return published(store, trained, shipped_dataset)


@pytest.fixture
def heldout(shipped_dataset) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    """The retrainer's test split of the shipped data: features and ``target``."""
    return split_rows(shipped_dataset)


def reporter_settings(**kw: Any) -> ReporterSettings:
    base: dict[str, Any] = {
        "signing_key": SIGNING_KEY.decode(),
        "pushgateway_url": "",
        "window_hours": 24.0,
    }
    return ReporterSettings(**{**base, **kw})


def _cell(value: Any, spec: dict[str, Any]) -> Any:
    """One feature value as the serving logs it (the contract of issue 26): a number as a
    float (None when missing), a category as its text, ``UNKNOWN`` for one the version never
    saw, None when missing."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if is_category(spec):
        text = category_value(value)
        return text if text in spec["categories"] else UNKNOWN
    return float(value)


def logged_features(X: pd.DataFrame, schema: list[dict[str, Any]]) -> pd.DataFrame:
    """Raw features in the prediction log's format: numbers float64 (NaN when missing),
    categories as text (None when missing, ``UNKNOWN`` when unseen)."""
    out = pd.DataFrame(index=X.index)
    for spec in schema:
        cells = [_cell(v, spec) for v in X[spec["name"]]]
        out[spec["name"]] = (
            pd.Series(cells, index=X.index, dtype=object)
            if is_category(spec)
            else pd.Series(cells, index=X.index, dtype=float)
        )
    return out


def log_traffic(
    store: Store,
    model: LoadedModel,
    rows: pd.DataFrame,
    *,
    labelled: float = 0.0,
    flip: float = 0.0,
    seed: int = 0,
    ts: float | None = None,
) -> pd.DataFrame:
    """Log predictions for ``rows`` as serving does, and feedback for a share of them.

    The log is written in the serving's format for the version's task (issue 26's contract):
    categories as text, ``UNKNOWN`` for a value the version never saw; classification rows
    with their label and probabilities; regression rows with the predicted value (float64) as
    ``prediction`` and no probability columns. Feedback stores the target as text.

    Args:
        labelled: share of rows that get feedback with their true ``target``.
        flip: share of the labelled rows whose true label is replaced by another class
            (so quality numbers are not all 1.0); classification only.

    Returns:
        The labelled rows as sent: ``prediction_id``, ``target``, ``prediction``, probabilities
        (classification).
    """
    rng = np.random.default_rng(seed)
    schema = model.manifest["feature_schema"]
    regression = model.manifest.get("task") == "regression"
    features = model.features
    X = logged_features(rows[features].reset_index(drop=True), schema)
    Xe = encoded_frame(X, schema)
    pred = model.pipeline.predict(Xe)
    ids = [datalog.new_id() for _ in range(len(X))]
    now = time.time() - 5 if ts is None else ts  # feedback follows within a second
    log = pd.DataFrame({"prediction_id": ids, "ts": now, "model_version": model.version})
    if regression:
        log["prediction"] = pred.astype(np.float64)
    else:
        proba = model.pipeline.predict_proba(Xe)
        log["prediction"] = [str(p) for p in pred]
        log["probability"] = proba.max(axis=1)
        log["proba_json"] = [json.dumps([float(v) for v in p]) for p in proba]
    log["backup"] = False
    log = pd.concat([log, X, embed(model.pipeline, Xe)], axis=1)
    datalog.write_predictions(store, log, ts=now)
    sent = []
    classes = [str(c) for c in model.classes]
    for i in np.flatnonzero(rng.random(len(X)) < labelled):
        truth = str(rows["target"].iloc[i])
        if not regression and rng.random() < flip:
            truth = classes[(classes.index(truth) + 1) % len(classes)]
        datalog.write_feedback(
            store,
            {
                "prediction_id": ids[i],
                "model_version": model.version,
                "prediction": str(pred[i]),
                "target": truth,
                "features": {
                    f: _cell(X[f].iloc[i], spec) for f, spec in zip(features, schema, strict=True)
                },
            },
            ts=now + 0.001 * (i + 1),
        )
        row: dict[str, Any] = {
            "prediction_id": ids[i],
            "target": truth,
            "prediction": float(pred[i]) if regression else str(pred[i]),
        }
        if not regression:
            row["proba"] = proba[i]
        sent.append(row)
    return pd.DataFrame(sent)


# -- a stand-in for the serving API (its /predict and /feedback contract) -----------------------


class StubServing:
    """The serving contract the simulator is written against, on a real HTTP port.

    ``POST /predict`` logs predictions to the store as serving does; ``POST /feedback`` stores
    the labelled row. Rows whose first feature is negative get a 422, to exercise error paths.
    """

    def __init__(self, store: Store, model: LoadedModel) -> None:
        self.store, self.model = store, model
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.seen: dict[str, dict[str, Any]] = {}
        self.feedback_delays: list[float] = []
        self.requests = 0
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub._lock:
                    stub.requests += 1
                if self.path == "/predict":
                    self._answer(*stub.predict(body))
                elif self.path == "/feedback":
                    self._answer(*stub.feedback(body))
                else:
                    self._answer(404, {"error": "not found"})

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def predict(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        features = self.model.features
        X = pd.DataFrame(body["instances"])
        if list(X.columns) != features:
            return 422, {"error": "wrong features", "type": "InvalidInput"}
        if (X[features[0]] < 0).any():
            return 422, {"error": f"{features[0]} must be positive", "type": "InvalidInput"}
        pred = self.model.pipeline.predict(X)
        proba = self.model.pipeline.predict_proba(X)
        now = time.time()
        ids = [datalog.new_id() for _ in range(len(X))]
        log = pd.DataFrame(
            {
                "prediction_id": ids,
                "ts": now,
                "model_version": self.model.version,
                "prediction": [str(p) for p in pred],
                "probability": proba.max(axis=1),
                "proba_json": [json.dumps([float(v) for v in p]) for p in proba],
                "backup": False,
            }
        )
        log = pd.concat([log, X.astype(float), embed(self.model.pipeline, X)], axis=1)
        datalog.write_predictions(self.store, log, ts=now)
        answers = []
        for i, pid in enumerate(ids):
            label = to_builtin(pred[i])
            with self._lock:
                self.seen[pid] = {"row": X.iloc[i].to_dict(), "label": label, "ts": now}
            answers.append(
                {
                    "prediction_id": pid,
                    "label": label,
                    "label_name": str(label),
                    "probability": float(proba[i].max()),
                    "probabilities": {
                        str(c): float(p) for c, p in zip(self.model.classes, proba[i], strict=True)
                    },
                    "model_version": self.model.version,
                    "backup": False,
                }
            )
        return 200, {"model_version": self.model.version, "predictions": answers}

    def feedback(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            seen = self.seen.get(body.get("prediction_id", ""))
        if seen is None:
            return 404, {"error": "unknown prediction_id", "type": "NotFound"}
        with self._lock:
            self.feedback_delays.append(time.time() - seen["ts"])
        datalog.write_feedback(
            self.store,
            {
                "prediction_id": body["prediction_id"],
                "model_version": self.model.version,
                "prediction": str(seen["label"]),
                "target": str(body["target"]),
                "features": seen["row"],
            },
        )
        return 201, {"stored": True}

    def __enter__(self) -> StubServing:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
