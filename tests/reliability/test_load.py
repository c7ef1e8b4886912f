"""Sustained mixed traffic on two serving processes sharing one S3 store.

Two real ``python -m mlplatform_serving`` processes, one SeaweedFS S3 server (its own
process),
and a bounded run of mixed requests (single predictions, JSON batches, CSV batches, feedback
by prediction id and with full features) spread over both. Afterwards: every 201 feedback is a
readable row, no row is stored twice or without a 201, every answered prediction is in the
prediction log exactly once, and each process's resident memory after warm-up stays within a
stated bound. Latency percentiles and memory are recorded as figures.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter, defaultdict
from typing import Any

import httpx
import pytest

from mlplatform_common import datalog
from mlplatform_common.registry import ModelRegistry
from tests.conftest import SIGNING_KEY, S3Server, ServingProcess, publish_trained
from tests.reliability.conftest import (
    PROFILE,
    WRITER,
    Figures,
    percentile,
    rss_kib,
    s3_env,
    start_together,
)

pytestmark = pytest.mark.soak

# Resident memory may grow this much per process between the end of warm-up (the first
# quarter of the run, when caches fill to their bounds) and the end of the run.
RSS_GROWTH_BOUND_MIB = 40.0
# In-memory caches are bounded by settings; small bounds make them fill during warm-up, so
# growth after it is a leak, not a cache filling up.
CACHE_ENV = {"MLPLATFORM_RECENT_CACHE_ROWS": "5000", "MLPLATFORM_LOG_FLUSH_SECONDS": "1"}

BATCH = 20


class Traffic:
    """What the load loop sent and got back."""

    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.statuses: dict[str, Counter[int]] = defaultdict(Counter)
        self.unexpected: list[str] = []
        self.predicted_ids: list[str] = []
        self.feedback_ids: list[str] = []
        # Predicted, not yet labelled: (url of the process that answered, id, when).
        self.open_ids: list[tuple[str, str, float]] = []

    def requests(self) -> int:
        return sum(sum(c.values()) for c in self.statuses.values())


async def run_traffic(
    urls: list[str], rows: list[dict[str, float]], seconds: float, concurrency: int
) -> Traffic:
    traffic = Traffic()
    deadline = time.monotonic() + seconds
    csv_header = ",".join(rows[0])
    rng = random.Random(1234)

    async def one(client: httpx.AsyncClient, worker: int, n: int) -> None:
        url = urls[(worker + n) % len(urls)]
        pick = rng.random()
        row = rows[rng.randrange(len(rows))]
        kw: dict[str, Any]
        if pick < 0.40:
            kind, kw, want = "predict_single", {"json": {"features": row}}, 200
        elif pick < 0.55:
            batch = rng.sample(rows, BATCH)
            kind, kw, want = "predict_batch_json", {"json": {"instances": batch}}, 200
        elif pick < 0.65:
            batch = rng.sample(rows, BATCH)
            body = csv_header + "\n" + "\n".join(",".join(map(str, r.values())) for r in batch)
            kw = {"content": body.encode(), "headers": {"content-type": "text/csv"}}
            kind, want = "predict_batch_csv", 200
        elif pick < 0.85 and traffic.open_ids:
            origin, pid, at = traffic.open_ids.pop(rng.randrange(len(traffic.open_ids)))
            kind, kw, want = "feedback_by_id", {"json": {"prediction_id": pid, "target": 1}}, 201
            url = origin
            if time.monotonic() - at > 3 and rng.random() < 0.2:
                # Labelled through the other replica: found in the flushed prediction log.
                url = urls[(urls.index(origin) + 1) % len(urls)]
                kind = "feedback_by_id_other_replica"
        else:
            full = {"features": row, "prediction": 1, "target": rng.randrange(2)}
            kind, kw, want = "feedback_full", {"json": full}, 201
        path = "/feedback" if kind.startswith("feedback") else "/predict"
        if path == "/feedback":
            kw["headers"] = WRITER
        started = time.perf_counter()
        try:
            r = await client.post(url + path, **kw)
        except httpx.HTTPError as exc:
            traffic.unexpected.append(f"{kind}: {type(exc).__name__} {exc}")
            return
        traffic.latency[kind].append(time.perf_counter() - started)
        traffic.statuses[kind][r.status_code] += 1
        if r.status_code != want:
            traffic.unexpected.append(f"{kind}: {r.status_code} {r.text[:200]}")
            return
        body = r.json()
        if path == "/predict":
            ids = [p["prediction_id"] for p in body["predictions"]]
            traffic.predicted_ids.extend(ids)
            if len(traffic.open_ids) < 5000:
                traffic.open_ids.append((url, ids[0], time.monotonic()))
        else:
            traffic.feedback_ids.append(body["feedback_id"])

    async def worker(client: httpx.AsyncClient, i: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            await one(client, i, n)
            n += 1

    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        await asyncio.gather(*(worker(client, i) for i in range(concurrency)))
    return traffic


class MemorySampler(threading.Thread):
    """Samples each process's VmRSS once a second."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.samples: list[tuple[float, list[int]]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while not self.halt.is_set():
            self.samples.append((time.monotonic() - started, [rss_kib(p) for p in self.pids]))
            self.halt.wait(1.0)


def test_two_processes_sustained_mixed_traffic_lose_nothing(
    s3_server: S3Server,
    trained: Any,
    shipped_dataset: Any,
    rows: list[dict[str, float]],
    figures: Figures,
) -> None:
    store = s3_server.store()
    publish_trained(ModelRegistry(store, SIGNING_KEY), trained, shipped_dataset)
    env = s3_env(s3_server.endpoint, store.bucket, **CACHE_ENV)
    procs = start_together([ServingProcess(env), ServingProcess(env)])
    sampler = MemorySampler([p.proc.pid for p in procs])
    server_side: list[dict[str, Any]] = []
    try:
        sampler.start()
        traffic = asyncio.run(
            run_traffic(
                [p.url for p in procs], rows, PROFILE.load_seconds, PROFILE.load_concurrency
            )
        )
        sampler.halt.set()
        sampler.join()
        server_side = [httpx.get(p.url + "/metrics/system").json() for p in procs]
    finally:
        sampler.halt.set()
        outputs = [p.stop() for p in procs]  # graceful: the prediction log is flushed

    assert traffic.unexpected == [], traffic.unexpected[:20]
    assert all("Traceback" not in out for out in outputs)

    # Zero lost, zero duplicated, zero unacknowledged feedback rows.
    stored = datalog.read_feedback(store)
    assert stored["feedback_id"].is_unique
    assert sorted(stored["feedback_id"]) == sorted(traffic.feedback_ids)
    # Every answered prediction is in the prediction log exactly once.
    logged = datalog.read_predictions(store)
    assert logged["prediction_id"].is_unique
    assert set(logged["prediction_id"]) == set(traffic.predicted_ids)

    # Memory after warm-up.
    warm = [s for s in sampler.samples if s[0] >= PROFILE.load_seconds / 4]
    assert len(warm) >= 3, sampler.samples
    growth_mib = [(warm[-1][1][i] - warm[0][1][i]) / 1024 for i in range(len(procs))]
    peak_mib = [max(s[1][i] for s in sampler.samples) / 1024 for i in range(len(procs))]

    every = [x for values in traffic.latency.values() for x in values]
    figures.record(
        "load_two_processes",
        seconds=PROFILE.load_seconds,
        concurrency=PROFILE.load_concurrency,
        requests=traffic.requests(),
        requests_per_second=round(traffic.requests() / PROFILE.load_seconds, 1),
        by_kind={k: dict(sorted(v.items())) for k, v in sorted(traffic.statuses.items())},
        predictions=len(traffic.predicted_ids),
        feedback_201=len(traffic.feedback_ids),
        feedback_rows_stored=len(stored),
        feedback_rows_lost=len(set(traffic.feedback_ids) - set(stored["feedback_id"])),
        feedback_rows_duplicated=int(stored["feedback_id"].duplicated().sum()),
        prediction_log_rows=len(logged),
        prediction_log_rows_lost=len(set(traffic.predicted_ids) - set(logged["prediction_id"])),
        latency_ms={
            kind: {
                q: round(percentile(values, float(q[1:])) * 1000, 1) for q in ("p50", "p95", "p99")
            }
            for kind, values in sorted({**traffic.latency, "all": every}.items())
        },
        server_side_p99_ms=[round(s["latency_seconds"]["p99"] * 1000, 1) for s in server_side],
        rss_growth_after_warmup_mib=[round(g, 1) for g in growth_mib],
        rss_peak_mib=[round(p, 1) for p in peak_mib],
        rss_growth_bound_mib=RSS_GROWTH_BOUND_MIB,
        rss_samples=len(sampler.samples),
    )
    assert max(growth_mib) <= RSS_GROWTH_BOUND_MIB, (growth_mib, sampler.samples)
