"""Retrainer fixtures: a store with v1 in production and its reference data uploaded."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pandas as pd
import pytest

from mlplatform_common import datalog
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import Store
from mlplatform_retrainer.job import upload_dataset
from mlplatform_retrainer.settings import RetrainerSettings
from mlplatform_retrainer.train import TrainConfig, split
from tests.conftest import DATA, SIGNING_KEY, publish_trained
from tests.services.reporter.conftest import prom_stack  # noqa: F401 (a real Pushgateway and Prometheus, for the push tests)


def retrainer_settings(**kw: object) -> RetrainerSettings:
    defaults: dict[str, object] = {
        "signing_key": SIGNING_KEY.decode(),
        "rollout": "none",
        "retrain_every": 20,
    }
    return RetrainerSettings(**{**defaults, **kw})  # type: ignore[arg-type]


@pytest.fixture
def v1_store(local_store: Store, trained, shipped_dataset) -> Store:
    upload_dataset(local_store, shipped_dataset)
    publish_trained(ModelRegistry(local_store, SIGNING_KEY), trained, shipped_dataset)
    return local_store


def gate_held_out_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the shipped data set that the retrainer's split holds out for its gate."""
    parts = split(frame.drop(columns="target"), frame["target"], TrainConfig())
    return frame.loc[parts.X_test.index]


def label(
    store: Store,
    features: dict[str, float],
    target: str,
    ts: float,
    *,
    prediction: str | None = None,
    prediction_id: str | None = None,
) -> None:
    """One labelled row of v1, stored as serving stores it (prediction: the target's)."""
    datalog.write_feedback(
        store,
        {
            "prediction_id": prediction_id,
            "model_version": "v1",
            "prediction": target if prediction is None else prediction,
            "target": target,
            "features": features,
        },
        ts=ts,
    )


def add_feedback(
    store: Store, n: int, *, corrupt: bool = False, seed: int = 0, start: int = 0, ids: bool = False
) -> None:
    """``n`` labelled rows from the shipped data (true labels, or flipped ones if corrupt);
    with ``ids``, labels of predictions ``p0``, ``p1``, ... (the same ones for the same seed)."""
    frame = pd.read_csv(DATA)
    frame = frame.drop(index=gate_held_out_rows(frame).index)  # new rows, not held-out ones
    frame = frame.sample(n=n, random_state=seed, replace=n > len(frame)).reset_index(drop=True)
    now = time.time()
    for i, row in frame.iterrows():
        features = row.drop("target").to_dict()
        target = 1 - int(row["target"]) if corrupt else int(row["target"])
        label(
            store,
            features,
            str(target),
            now + (start + int(i)) * 0.001,
            prediction=str(int(row["target"])),
            prediction_id=f"p{i}" if ids else None,
        )


NOT_FOUND = (404, {"kind": "Status", "code": 404, "reason": "NotFound"})


class JsonApi:
    """A JSON HTTP server on a free loopback port that stands in for the Kubernetes API:
    ``answer`` (a subclass's) decides each reply, and every request is recorded."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length", 0))
                request = {
                    "method": self.command,
                    "path": self.path,
                    "headers": dict(self.headers),
                    "body": json.loads(self.rfile.read(length)) if length else None,
                }
                outer.requests.append(request)
                status, answer = outer.answer(request)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PATCH = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, request: dict[str, Any]) -> tuple[int, Any]:
        raise NotImplementedError

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def log_messages(stderr: str) -> list[str]:
    """The messages of a CLI's text log lines on stderr (after ``[model ...]``), in order."""
    return [line.split("] ", 1)[1] for line in stderr.splitlines() if "] " in line]
