"""``make bench``: our serving beside two baselines in one run, plus the jobs' figures.

Servers are pinned to CPU 0 and ``wrk`` to CPU 1 (``taskset``) when the machine has two
cores. Each scenario runs the servers alternately (floor, ours, naive), so a slow moment of
the machine hits all of them. Results go to stdout and ``bench/BENCHMARKS.md``.

Usage: python -m bench.run [--seconds 5] [--only serving|jobs|tasks] [--ours-per-cell]
[--output bench/BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data" / "breast_cancer.csv"
KEY = "bench-signing-key"
WRITER_TOKEN = "bench-writer-token"
PIN = os.cpu_count() is not None and (os.cpu_count() or 1) >= 2


# wrk's Lua: every request is built once, then the connections send them in turn.
WRK_ROTATE = """
local requests = {}
init = function(args)
  for i, path in ipairs(files) do
    local f = io.open(path, "rb"); local body = f:read("*all"); f:close()
    requests[i] = wrk.format(nil, nil, nil, body)
  end
end
local sent = 0
request = function()
  sent = sent % #requests + 1
  return requests[sent]
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cmd: list[str], cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu), *cmd] if PIN and shutil.which("taskset") else cmd


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory now (``VmRSS``) or at its peak so far (``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Server:
    name: str
    cmd: list[str]
    env: dict[str, str]
    ready_path: str
    ready_only_on_200: bool = False  # MLServer answers 4xx until its model is loaded
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    started_in: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        self.port = free_port()
        env = {
            **os.environ,
            **self.env,
            "MLPLATFORM_PORT": str(self.port),
            "BENCH_PORT": str(self.port),
        }
        cmd = [c.replace("{port}", str(self.port)) for c in self.cmd]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            pinned(cmd, 0), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = t0 + 60
        while time.perf_counter() < deadline:
            try:
                method = httpx.post if self.ready_path == "/predict" else httpx.get
                kw = {"json": {}} if method is httpx.post else {}
                status = method(self.url + self.ready_path, timeout=0.5, **kw).status_code
                if status == 200 or (status < 500 and not self.ready_only_on_200):
                    self.started_in = time.perf_counter() - t0
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.name} did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None


def wrk(
    url: str, body: bytes | list[bytes], content_type: str, connections: int, seconds: float
) -> dict[str, Any]:
    """One wrk run (1 thread, pinned to CPU 1) posting ``body``, or each of a list of bodies in
    turn; requests/s and latencies.

    ``content_type`` may carry more headers after it, one ``Name: value`` per line."""
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, one in enumerate([body] if isinstance(body, bytes) else body):
            files.append(Path(tmp) / f"body{i}")
            files[-1].write_bytes(one)
        script = Path(tmp) / "post.lua"
        ctype, *more = content_type.split("\n")
        extra = "".join(
            f'wrk.headers["{k.strip()}"] = "{v.strip()}"\n' for k, v in (h.split(":") for h in more)
        )
        script.write_text(
            'wrk.method = "POST"\n'
            f'wrk.headers["Content-Type"] = "{ctype}"\n'
            + extra
            + "local files = {"
            + ", ".join(f'"{f}"' for f in files)
            + "}\n"
            + WRK_ROTATE
        )
        duration = f"-d{max(1, round(seconds))}s"  # wrk takes whole seconds
        cmd = ["wrk", "-t1", f"-c{connections}", duration, "--latency", "-s", str(script), url]
        out = subprocess.run(pinned(cmd, 1), capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    timeouts = re.search(r"Socket errors: .*timeout (\d+)", out)

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        if not m:
            return float("nan")
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    return {
        "rps": rps,
        "p50_ms": pct("50"),
        "p99_ms": pct("99"),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
        # wrk counts a request unanswered after 2 s as a timeout
        "timeouts": int(timeouts.group(1)) if timeouts else 0,
    }


def make_store(tmp: Path, data: Path = DATA) -> dict[str, str]:
    """A local store with v1 trained on ``data`` and published (as `make dev` does)."""
    env = {
        "MLPLATFORM_STORE_URL": f"file://{tmp}/store",
        "MLPLATFORM_SIGNING_KEY": KEY,
        "MLPLATFORM_LOG_LEVEL": "WARNING",
        # feedback ingestion is measured with the key checked but no rate: the rate would
        # measure itself
        "MLPLATFORM_WRITER_TOKEN": WRITER_TOKEN,
        "MLPLATFORM_FEEDBACK_RATE": "0",
    }
    subprocess.run(
        [sys.executable, "-m", "mlplatform_retrainer", "train", "--data", str(data)],
        cwd=REPO,
        env={**os.environ, **env, "MLPLATFORM_ROLLOUT": "none"},  # no serving to tell
        check=True,
        capture_output=True,
    )
    return env


def path_of(scenario: str) -> str:
    """The route a scenario of ``bodies()`` posts to."""
    return "/v2/models/mlplatform/infer" if "V2" in scenario else "/predict"


def bodies() -> dict[str, tuple[list[bytes], str]]:
    """Each scenario's request bodies (sent in turn) and content type. Every row is a
    different row, as in real traffic: the dataset's rows, each feature times 1 ± ~2%, to 4
    decimals; 50 bodies of 1,000 rows, 1,000 of one row. A body sent over and over, as
    before, logged the same rows again and again: its log compressed ~9x, real rows ~1.5x,
    so its writer cost a fraction of what real traffic's does (bench/BENCHMARKS.md)."""
    frame = pd.read_csv(DATA).drop(columns="target")
    names = list(frame.columns)
    rng = np.random.default_rng(2026)

    def rows(n: int) -> np.ndarray:
        picked = frame.to_numpy()[rng.integers(0, len(frame), n)]
        return np.round(picked * rng.normal(1.0, 0.02, picked.shape), 4)

    def records(X: np.ndarray) -> list[dict[str, float]]:
        return [dict(zip(names, row, strict=True)) for row in X.tolist()]

    def csv(X: np.ndarray) -> bytes:
        return pd.DataFrame(X).to_csv(index=False, header=False).encode()

    def tensor(X: np.ndarray) -> bytes:
        data = {"name": "input-0", "shape": list(X.shape), "datatype": "FP64"}
        return json.dumps({"inputs": [{**data, "data": X.ravel().tolist()}]}).encode()

    def binary(X: np.ndarray) -> bytes:
        # The binary tensor extension (what tritonclient sends with binary_data=True): a JSON
        # header, then the 240,000 bytes of the tensor.
        data = {"name": "input-0", "shape": list(X.shape), "datatype": "FP64"}
        params = {"parameters": {"binary_data_size": X.size * 8}}
        return json.dumps({"inputs": [{**data, **params}]}).encode() + X.astype("<f8").tobytes()

    singles = [rows(1) for _ in range(1000)]
    batches = [rows(1000) for _ in range(50)]
    head = len(binary(batches[0])) - batches[0].size * 8  # the same for every body
    return {
        "single JSON": (
            [json.dumps({"features": records(X)[0]}).encode() for X in singles],
            "application/json",
        ),
        "1,000-row JSON": (
            [json.dumps({"instances": records(X)}).encode() for X in batches],
            "application/json",
        ),
        "single CSV": ([csv(X) for X in singles], "text/csv"),
        "1,000-row CSV": ([csv(X) for X in batches], "text/csv"),
        "single V2 FP64 tensor": ([tensor(X) for X in singles], "application/json"),
        "1,000-row V2 FP64 tensor": ([tensor(X) for X in batches], "application/json"),
        "1,000-row V2 FP64 binary": (
            [binary(X) for X in batches],
            f"application/octet-stream\nInference-Header-Content-Length: {head}",
        ),
    }


# The other tasks' cells (issue 26): a classifier of mixed types (categories as text, missing
# cells) and a regression, each with rows of its own data set, ours only.
TASK_DATA = {"penguins": REPO / "data" / "penguins.csv", "diabetes": REPO / "data" / "diabetes.csv"}


def task_bodies(dataset: str) -> dict[str, tuple[list[bytes], str]]:
    """A task's request bodies, as ``bodies`` makes them: the data set's rows, numbers times
    1 ± ~2% (missing cells stay missing, categories as they are); 20 bodies of 1,000 rows,
    1,000 of one row. A mixed-type model's V2 requests are an input per feature (BYTES for a
    category), a regression's one FP64 tensor."""
    path = TASK_DATA[dataset]
    target = json.loads(path.with_suffix(".meta.json").read_text())["target"]
    frame = pd.read_csv(path).drop(columns=target)
    numbers = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
    rng = np.random.default_rng(2026)

    def rows(n: int) -> pd.DataFrame:
        picked = frame.iloc[rng.integers(0, len(frame), n)].reset_index(drop=True)
        noise = rng.normal(1.0, 0.02, (n, len(numbers)))
        picked[numbers] = np.round(picked[numbers].to_numpy() * noise, 4)
        return picked

    def records(X: pd.DataFrame) -> list[dict[str, Any]]:
        return [
            {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in r.items()}
            for r in X.astype(object).to_dict(orient="records")
        ]

    def v2(X: pd.DataFrame) -> bytes:
        if len(numbers) == len(frame.columns):
            data = {"name": "input-0", "shape": list(X.shape), "datatype": "FP64"}
            return json.dumps(
                {"inputs": [{**data, "data": X.to_numpy().ravel().tolist()}]}
            ).encode()
        columns = records(X)
        inputs = [
            {
                "name": c,
                "datatype": "FP64" if c in numbers else "BYTES",
                "shape": [len(X)],
                "data": [r[c] for r in columns],
            }
            for c in frame.columns
        ]
        return json.dumps({"inputs": inputs}).encode()

    singles = [rows(1) for _ in range(1000)]
    batches = [rows(1000) for _ in range(20)]
    return {
        f"{dataset}: single JSON": (
            [json.dumps({"features": records(X)[0]}).encode() for X in singles],
            "application/json",
        ),
        f"{dataset}: 1,000-row JSON": (
            [json.dumps({"instances": records(X)}).encode() for X in batches],
            "application/json",
        ),
        f"{dataset}: 1,000-row CSV": (
            [X.to_csv(index=False).encode() for X in batches],
            "text/csv",
        ),
        f"{dataset}: 1,000-row V2": ([v2(X) for X in batches], "application/json"),
    }


def bench_tasks(
    seconds: float,
    serving_python: str,
    connections: tuple[int, ...] = (1, 32),
    one_process: bool = True,
) -> list[dict[str, Any]]:
    """Ours serving a mixed-type classifier (penguins) and a regression (diabetes). A version
    without a checked ONNX file needs scikit-learn, which the serving's own environment does
    not have: such a model runs in the all-packages ``.venv`` (its cells say which engine and
    environment answered). ``one_process``: one process per data set serves its cells in
    turn; otherwise each cell starts a fresh one."""
    results: list[dict[str, Any]] = []
    for dataset in TASK_DATA:
        tmp = Path(tempfile.mkdtemp(prefix=f"mlplatform-bench-{dataset}-"))
        try:
            env = make_store(tmp, TASK_DATA[dataset])
            server = Server("ours", [serving_python, "-m", "mlplatform_serving"], env, "/ready")
            try:
                server.start().stop()
            except RuntimeError:  # not servable without scikit-learn
                server = Server("ours", [sys.executable, "-m", "mlplatform_serving"], env, "/ready")
            venv = Path(server.cmd[0]).absolute() == Path(sys.executable).absolute()
            where = ".venv" if venv else "serving env"
            if one_process:
                server.start()
            for scenario, (sent, ctype) in task_bodies(dataset).items():
                for c in connections:
                    if not one_process:
                        server.start()
                    try:
                        engine = httpx.get(server.url + "/model", timeout=30).json()["engine"]
                        url = server.url + path_of(scenario)
                        wrk(url, sent, ctype, c, 1)  # warm-up
                        before = log_metrics(server.url)
                        r = wrk(url, sent, ctype, c, seconds)
                        log = log_delta(before, log_metrics(server.url))
                        dropped = log["log_dropped_rows"]
                    except BaseException:
                        server.stop()
                        raise
                    if not one_process:
                        server.stop()
                    rows = 1000 if "1,000" in scenario else 1
                    results.append(
                        {
                            "scenario": scenario,
                            "connections": c,
                            "server": "ours",
                            "engine": f"{engine}, {where}",
                            **log,
                            **r,
                            "rows_per_s": r["rps"] * rows,
                        }
                    )
                    print(
                        f"{scenario:30} c={c:<3} ours ({engine}, {where}) {r['rps']:9.0f} req/s  "
                        f"p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  "
                        f"non-2xx {r['non_2xx']}  dropped {dropped:.0f}  "
                        f"log waits {log['log_waits']:.0f}",
                        flush=True,
                    )
            server.stop()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return results


def log_wait_cells(r: dict[str, Any]) -> str:
    """A cell's log waits (those at the bound) and their p99, or blanks for another server."""
    if "log_waits" not in r:
        return " | "
    return f"{r['log_waits']:,.0f} ({r['log_wait_limit']:,.0f}) | " + (
        f"{r['log_wait_p99_ms']:g}" if r["log_waits"] else "–"
    )


def tasks_markdown(results: list[dict[str, Any]]) -> list[str]:
    return [
        "## Other tasks: a mixed-type classifier and a regression (ours)",
        "",
        "*penguins*: species from text categories (island, sex) and numbers, with missing cells",
        "(null in JSON, an empty CSV cell; V2 as an input per feature, BYTES for a category).",
        "*diabetes*: a regression of numbers (answers a `value`; V2 one FP64 tensor). Rows of",
        "each data set, numbers times 1 ± ~2% (`bench.run.task_bodies`). A version without a",
        "checked ONNX file runs in the `.venv` (scikit-learn), as the engine column says.",
        "",
        "| scenario | conns | engine | req/s | rows/s | p50 ms | p99 ms | timeouts | non-2xx | log rows dropped | log waits | log wait p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {r['scenario']} | {r['connections']} | {r['engine']} | {r['rps']:,.0f} | "
            f"{r['rows_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r.get('timeouts', 0)} | {r['non_2xx']} | {r['log_dropped_rows']:.0f} | "
            f"{log_wait_cells(r)} |"
            for r in results
        ),
        "",
    ]


def mlserver(tmp: Path, mlserver_python: str) -> Server:
    """MLServer (mlserver-sklearn) serving the very model file ours serves, as its docs set it
    up: one process (``parallel_workers=0``), its metrics on their own port."""
    repo = tmp / "mlserver"
    repo.mkdir()
    settings = {
        "name": "mlplatform",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": str(tmp / "store/models/v1/model.joblib"), "version": "v1"},
    }
    (repo / "model-settings.json").write_text(json.dumps(settings))
    bin_dir = Path(mlserver_python).parent
    env = {
        "MLSERVER_HOST": "127.0.0.1",
        "MLSERVER_PARALLEL_WORKERS": "0",
        "MLSERVER_GRPC_PORT": str(free_port()),
        "MLSERVER_METRICS_PORT": str(free_port()),
        "MLSERVER_LOGGING_SETTINGS": "",
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
    }
    cmd = ["env", "MLSERVER_HTTP_PORT={port}", str(bin_dir / "mlserver"), "start", str(repo)]
    return Server("mlserver", cmd, env, "/v2/models/mlplatform/ready", ready_only_on_200=True)


def with_probabilities(body: bytes) -> bytes:
    """A V2 request asking MLServer for ``predict`` and ``predict_proba``: what ours answers."""
    request = json.loads(body)
    request["outputs"] = [{"name": "predict"}, {"name": "predict_proba"}]
    return json.dumps(request).encode()


SHARED_WITH_MLSERVER = ("single V2 FP64 tensor", "1,000-row V2 FP64 tensor")


def bench_serving(
    seconds: float,
    serving_python: str,
    mlserver_python: str | None = None,
    one_process: bool = True,
) -> dict[str, Any]:
    """Every scenario, the servers in turn. ``one_process``: one serving process of ours
    serves all its cells in turn (and the feedback run), as a deployed one would, and its
    peak memory over the whole run is reported; otherwise each cell starts a fresh one."""
    tmp = Path(tempfile.mkdtemp(prefix="mlplatform-bench-"))
    try:
        env = make_store(tmp)
        uvicorn = [
            sys.executable,
            "-m",
            "uvicorn",
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "--log-level",
            "warning",
            "--no-access-log",
        ]
        servers = {
            "floor": Server("floor", [*uvicorn, "bench.baselines:floor_app"], {}, "/predict"),
            "ours": Server("ours", [serving_python, "-m", "mlplatform_serving"], env, "/ready"),
            "naive": Server(
                "naive",
                [*uvicorn, "bench.baselines:naive_app"],
                {"BENCH_MODEL": str(tmp / "store/models/v1/model.joblib")},
                "/docs",
            ),
        }
        if mlserver_python:
            servers["mlserver"] = servers["mlserver+proba"] = mlserver(tmp, mlserver_python)
        cold, ready_rss = [], []
        for _ in range(3):
            cold.append(servers["ours"].start().started_in)
            ready_rss.append(rss_mb(servers["ours"].proc.pid))  # type: ignore[union-attr]
            servers["ours"].stop()
        results: list[dict[str, Any]] = []
        memory, memory_where, peak, peak_where, dropped = 0.0, "", 0.0, "", 0.0
        shared = servers["ours"].start() if one_process else None
        for scenario, (sent, ctype) in bodies().items():
            for connections in (1, 32):
                for name in ("floor", "ours", "naive", "mlserver", "mlserver+proba"):
                    if name == "naive" and ("CSV" in scenario or "V2" in scenario):
                        continue
                    if name.startswith("mlserver") and (
                        name not in servers or scenario not in SHARED_WITH_MLSERVER
                    ):
                        continue
                    body = [with_probabilities(b) for b in sent] if name.endswith("proba") else sent
                    ours = name == "ours"
                    server = shared if ours and shared else servers[name].start()
                    log: dict[str, Any] = {}
                    try:  # a failed measurement must not leave the server running
                        url = server.url + path_of(scenario)
                        wrk(url, body, ctype, connections, 1)  # warm-up
                        before = log_metrics(server.url) if ours else {}
                        r = wrk(url, body, ctype, connections, seconds)
                        if ours:
                            log = log_delta(before, log_metrics(server.url))
                            rss = rss_mb(server.proc.pid)  # type: ignore[union-attr]
                            if rss > memory:
                                memory, memory_where = rss, f"{scenario}, {connections} conns"
                            hwm = rss_mb(server.proc.pid, "VmHWM")  # type: ignore[union-attr]
                            if hwm > peak:
                                peak, peak_where = hwm, f"{scenario}, {connections} conns"
                            dropped += log["log_dropped_rows"]
                    finally:
                        if server is not shared:
                            server.stop()
                    rows = 1000 if "1,000" in scenario else 1
                    results.append(
                        {
                            "scenario": scenario,
                            "connections": connections,
                            "server": name,
                            **r,
                            **log,
                            "rows_per_s": r["rps"] * rows,
                        }
                    )
                    waits = (
                        f"  log waits {log['log_waits']:.0f} (p99 {log['log_wait_p99_ms']:g} ms)"
                        if ours
                        else ""
                    )
                    print(
                        f"{scenario:26} c={connections:<3} {name:6} {r['rps']:9.0f} req/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  non-2xx {r['non_2xx']}{waits}",
                        flush=True,
                    )
        whole_run: dict[str, Any] | None = None
        if shared:
            feedback = bench_feedback(shared, seconds, running=True)
            whole_run = {
                "peak_mb": rss_mb(shared.proc.pid, "VmHWM"),  # type: ignore[union-attr]
                "end_mb": rss_mb(shared.proc.pid),  # type: ignore[union-attr]
                "cells": sum(r["server"] == "ours" for r in results),
            }
            shared.stop()
            print(f"one process, whole run: {whole_run}", flush=True)
        else:
            feedback = bench_feedback(servers["ours"], seconds)
        steps = bench_steps(serving_python, env)
        return {
            "whole_run": whole_run,
            "results": results,
            "tasks": bench_tasks(seconds, serving_python, one_process=one_process),
            "cold_start_s": sorted(cold)[1],
            "rss_ready_mb": sorted(ready_rss)[1],
            "rss_mb": memory,
            "rss_where": memory_where,
            "peak_mb": peak,
            "peak_where": peak_where,
            "log_dropped_rows": dropped,
            "serving_env": (
                "its own environment, the serving package alone as its image installs it "
                "(`make serving-env`: no scikit-learn, no pyarrow)"
                if Path(serving_python).absolute() != Path(sys.executable).absolute()
                else "the all-packages `.venv` (scikit-learn, pyarrow and the jobs' libraries "
                "loaded too; its image has less)"
            ),
            "feedback": feedback,
            "steps": steps,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def log_dropped(url: str) -> float:
    """Prediction log rows our server dropped (its buffer overflowed): the throughput counts
    only if the log kept up."""
    return log_metrics(url)["dropped"]


def log_metrics(url: str) -> dict[str, Any]:
    """Our server's prediction log counters so far: rows dropped, and the requests' waits for
    room in its buffer (back-pressure): how many, their total seconds, how many reached the
    bound, and the wait histogram's cumulative buckets."""
    text = httpx.get(url + "/metrics", timeout=30).text

    def value(name: str) -> float:
        found = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
        if found is None:
            raise RuntimeError(f"/metrics has no {name}")
        return float(found.group(1))

    buckets = {
        float(le): float(n)
        for le, n in re.findall(
            r'^mlplatform_prediction_log_wait_seconds_bucket\{le="([^"]+)"\} ([0-9.e+-]+)$',
            text,
            re.M,
        )
    }
    return {
        "dropped": value("mlplatform_prediction_log_dropped_rows_total"),
        "waits": value("mlplatform_prediction_log_wait_seconds_count"),
        "wait_s": value("mlplatform_prediction_log_wait_seconds_sum"),
        "limit": value("mlplatform_prediction_log_wait_limit_reached_total"),
        "buckets": buckets,
    }


def log_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """One cell's share of the log's counters (a server that served earlier cells too):
    rows dropped, waits, waits that reached the bound, and the 99th percentile of the waits
    (the upper edge of its histogram bucket, ms; 0 without waits)."""
    waits = after["waits"] - before["waits"]
    p99 = 0.0
    if waits:
        for le in sorted(after["buckets"]):
            if after["buckets"][le] - before["buckets"].get(le, 0.0) >= 0.99 * waits:
                p99 = le * 1000
                break
    return {
        "log_dropped_rows": after["dropped"] - before["dropped"],
        "log_waits": waits,
        "log_wait_limit": after["limit"] - before["limit"],
        "log_wait_p99_ms": p99,
        "log_wait_mean_ms": (after["wait_s"] - before["wait_s"]) * 1000 / waits if waits else 0.0,
    }


def bench_feedback(server: Server, seconds: float, running: bool = False) -> dict[str, Any]:
    """Feedback ingestion into the local store: every 201 must be a stored row. ``running``:
    the server is already up (and stays up)."""
    from mlplatform_common import datalog
    from mlplatform_common.storage import LocalStore

    if not running:
        server.start()
    try:
        row = pd.read_csv(DATA).drop(columns="target").iloc[0].to_dict()
        body = json.dumps({"features": row, "prediction": 0, "target": 0}).encode()
        headers = f"application/json\nAuthorization: Bearer {WRITER_TOKEN}"
        r = wrk(server.url + "/feedback", body, headers, 8, seconds)
    finally:
        if not running:
            server.stop()
    store = LocalStore(server.env["MLPLATFORM_STORE_URL"].removeprefix("file://"))
    stored = datalog.count_feedback(store)
    print(
        f"feedback: {r['rps']:.0f} rows/s, {stored} rows stored, non-2xx {r['non_2xx']}", flush=True
    )
    return {**r, "stored_rows": stored}


def bench_steps(serving_python: str, env: dict[str, str]) -> dict[str, Any] | None:
    """The serving's own cost step by step, in process (``bench/steps.py``), on CPU 0; None
    (with its error printed) if it fails, so the run's other figures are still written."""
    proc = subprocess.run(
        pinned([serving_python, "-m", "bench.steps"], 0),
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        print(f"bench.steps failed (exit {proc.returncode}):\n{proc.stderr}", file=sys.stderr)
        return None
    steps: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"steps: {steps}", flush=True)
    return steps


def steps_markdown(steps: dict[str, Any]) -> list[str]:
    req, js, wr = steps["request_us"], steps["json_1000_us"], steps["writer_ms"]
    rows = {"single JSON": 1, "1,000-row JSON": 1000, "1,000-row V2 FP64 binary": 1000}
    otel = "single JSON, MLPLATFORM_OPENTELEMETRY=true"
    rows[otel] = 1
    per_row = (wr["frame"] + wr["write"]) * 1000 / wr["rows"]
    return [
        "## The serving's own cost, in process (this run)",
        "",
        "`python -m bench.steps`, run by `make bench` in the same environment as *ours* above,",
        "pinned to CPU 0: the app called directly on uvloop (no HTTP, no load generator), wall",
        "time, the fastest of 7 rounds. The requests are measured without the prediction log;",
        "its writer is below.",
        "",
        "| request | µs per request | rows/s at that cost |",
        "|---|---|---|",
        *(f"| {name} | {us:,.0f} | {rows[name] * 1e6 / us:,.0f} |" for name, us in req.items()),
        "",
        f"- Single rows with FastAPI's check for an OpenTelemetry provider on every request "
        f"(FastAPI's default, `MLPLATFORM_OPENTELEMETRY=true`; the serving turns it off "
        f"otherwise): **{req[otel]:,.0f} µs** against **{req['single JSON']:,.0f} µs**.",
        f"- A 1,000-row JSON body: msgspec decodes it in **{js['decode']:,.0f} µs**; its rows "
        f"become a float64 matrix in **{js['matrix']:,.0f} µs** (`RowsCodec.matrix`, `struct` "
        f"packing) against **{js['matrix_fromiter']:,.0f} µs** for the way before it "
        f"(`np.fromiter` over the values), {js['matrix_fromiter'] / js['matrix']:.1f}× as long.",
        f"- The prediction log writer, per {wr['rows']:,}-row object of binary V2 requests: the "
        f"frame {wr['frame']:.1f} ms, the Parquet write to the local store (with its fsync) "
        f"{wr['write']:.1f} ms; {per_row:.2f} µs per row of wall time in its own thread on the "
        "same core (the fsync's wait included).",
        "",
    ]


def bench_jobs() -> dict[str, Any]:
    """Report (100k reference x 20k production x 30 features) and retraining on 100k rows, each
    in a fresh process so its peak memory is its own."""
    out = {}
    for job in ("report", "retrain"):
        proc = subprocess.run(
            [sys.executable, "-m", "bench.jobs", job],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        out[job] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{job}: {out[job]}", flush=True)
    return out


def machine() -> str:
    def first(path: str, prefix: str) -> str:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
        return "?"

    mem_gib = int(first("/proc/meminfo", "MemTotal").split()[0]) // 1024 // 1024
    cpu = first("/proc/cpuinfo", "model name")
    return f"{os.cpu_count()} cores ({cpu}), {mem_gib} GiB, {platform.platform()}, Python {platform.python_version()}"


def ratio(results: list[dict[str, Any]], scenario: str, c: int, base: str) -> str:
    by = {r["server"]: r for r in results if r["scenario"] == scenario and r["connections"] == c}
    if base not in by or "ours" not in by:
        return "–"
    return f"{by['ours']['rps'] / by[base]['rps']:.2f}×"


def targets(serving: dict[str, Any], jobs: dict[str, Any]) -> list[str]:
    """The benchmark issue's targets against this run's figures."""
    res = serving["results"]

    def cell(scenario: str, c: int, server: str = "ours") -> dict[str, Any]:
        return next(
            r
            for r in res
            if r["scenario"] == scenario and r["connections"] == c and r["server"] == server
        )

    one32, one1 = cell("single JSON", 32), cell("single JSON", 1)
    floor32 = cell("single JSON", 32, "floor")
    json_rows = max(cell("1,000-row JSON", c)["rows_per_s"] for c in (1, 32))
    v2_rows = max(
        cell(s, c)["rows_per_s"]
        for s in ("1,000-row V2 FP64 tensor", "1,000-row V2 FP64 binary")
        for c in (1, 32)
    )
    rep, ret = jobs["report"], jobs["retrain"]
    rows = [
        (
            "single-row JSON, 32 connections: >= 0.5× the HTTP floor",
            one32["rps"] / floor32["rps"] >= 0.5,
            f"{one32['rps'] / floor32['rps']:.2f}×",
        ),
        (
            "single-row JSON, 32 connections: p99 < 15 ms",
            one32["p99_ms"] < 15,
            f"{one32['p99_ms']:.1f} ms",
        ),
        (
            "single-row JSON, 1 connection: p50 < 0.5 ms",
            one1["p50_ms"] < 0.5,
            f"{one1['p50_ms']:.2f} ms",
        ),
        ("1,000-row JSON: >= 400,000 rows/s", json_rows >= 400_000, f"{json_rows:,.0f} rows/s"),
        (
            "1,000-row V2 FP64 tensor: >= 800,000 rows/s",
            v2_rows >= 800_000,
            f"{v2_rows:,.0f} rows/s (best of JSON and binary)",
        ),
        (
            "cold start to `/ready` < 3 s",
            serving["cold_start_s"] < 3,
            f"{serving['cold_start_s']:.2f} s",
        ),
        (
            "one serving process < 250 MB, at `/ready`",
            serving["rss_ready_mb"] < 250,
            f"{serving['rss_ready_mb']:.0f} MB",
        ),
        (
            "one serving process < 250 MB, at its peak during the runs above",
            serving["peak_mb"] < 250,
            f"{serving['peak_mb']:.0f} MB ({serving['peak_where']})",
        ),
        *(
            [
                (
                    "one serving process < 250 MB through a whole run (every cell in one process)",
                    serving["whole_run"]["peak_mb"] < 250,
                    f"{serving['whole_run']['peak_mb']:.0f} MB",
                )
            ]
            if serving.get("whole_run")
            else []
        ),
        (
            "report 100k × 20k × 30: < 15 s, < 1.5 GB",
            rep["seconds"] < 15 and rep["peak_mb"] < 1500,
            f"{rep['seconds']:.1f} s, {rep['peak_mb']:.0f} MB",
        ),
        ("retraining on 100k rows < 20 s", ret["seconds"] < 20, f"{ret['seconds']:.1f} s"),
    ]
    if any(r["server"] == "mlserver" for r in res):
        for scenario in SHARED_WITH_MLSERVER:
            for c in (1, 32):
                got = cell(scenario, c)["rps"] / cell(scenario, c, "mlserver")["rps"]
                rows.append(
                    (f"{scenario}, {c} conns: ours ÷ MLServer >= 1", got >= 1, f"{got:.2f}×")
                )
    return [
        "## Against the targets of the benchmark issue (this run)",
        "",
        "| target | measured | |",
        "|---|---|---|",
        *(f"| {name} | {got} | {'met' if ok else '**not met**'} |" for name, ok, got in rows),
        "",
    ]


def write_markdown(
    path: Path,
    serving: dict[str, Any] | None,
    jobs: dict[str, Any] | None,
    seconds: float,
    command: str,
) -> None:
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `{command}` on {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
        f"Machine: {machine()}.",
        "Servers pinned to CPU 0, `wrk` (1 thread) to CPU 1; each cell ran "
        f"{seconds:g} s after a 1 s warm-up; the servers of a scenario ran one after another.",
        "",
    ]
    if serving:
        res = serving["results"]
        lines += [
            "## Serving: ours beside the baselines",
            "",
            "*floor*: FastAPI returning a constant JSON. *naive*: the course-style server (a pandas",
            "DataFrame per request, `predict` + `predict_proba`). *ours*: `python -m mlplatform_serving` as",
            "deployed: validation, prediction ids, prediction log, Prometheus metrics, ONNX Runtime;",
            f"run in {serving['serving_env']}.",
            "Every row sent is a different row (`bench.run.bodies`): 50 bodies of 1,000 rows, 1,000",
            "of one row, sent in turn, so the prediction log holds what real traffic would.",
            "",
            "*mlserver*: MLServer 1.7.1 (mlserver-sklearn, one process, `make mlserver-env`) serving",
            "the same model file, sent the same bodies; *mlserver+proba* asks it for `predict` and",
            "`predict_proba`, what ours always answers.",
            "",
            "*log waits*: requests of ours that waited for room in the prediction log's buffer",
            "(back-pressure, `mlplatform_prediction_log_wait_seconds`), of them how many waited the",
            "whole bound (`MLPLATFORM_LOG_WAIT_MAX_SECONDS`) in brackets, and the 99th percentile",
            "of those waits (the upper edge of its histogram bucket), from `/metrics` after the cell.",
            "",
            "| scenario | conns | server | req/s | rows/s | p50 ms | p99 ms | timeouts | non-2xx | log waits | log wait p99 ms | ours ÷ floor | ours ÷ naive | ours ÷ mlserver | ours ÷ mlserver+proba |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in res:
            scenario, c = r["scenario"], r["connections"]
            lines.append(
                f"| {scenario} | {c} | {r['server']} | {r['rps']:,.0f} | {r['rows_per_s']:,.0f} | "
                f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r.get('timeouts', 0)} | {r['non_2xx']} | "
                f"{log_wait_cells(r)} | "
                + (
                    " | ".join(
                        ratio(res, scenario, c, base)
                        for base in ("floor", "naive", "mlserver", "mlserver+proba")
                    )
                    + " |"
                    if r["server"] == "ours"
                    else " | | | |"
                )
            )
        fb = serving["feedback"]
        lines += [
            "",
            f"- Cold start, process start to `/ready` 200 (median of 3): **{serving['cold_start_s']:.2f} s**.",
            f"- Memory of one serving process (VmRSS): **{serving['rss_ready_mb']:.0f} MB** when `/ready` "
            f"answers (median of 3); **{serving['rss_mb']:.0f} MB** at most right after a run "
            f"({serving['rss_where']}); at its peak during a run (VmHWM) **{serving['peak_mb']:.0f} MB** "
            f"({serving['peak_where']}: bodies in flight, the log buffer, and the object being written).",
            *(
                [
                    f"- Through the whole run, one serving process of ours served every one of its "
                    f"{serving['whole_run']['cells']} cells above in turn, then the feedback run: "
                    f"its peak (VmHWM) **{serving['whole_run']['peak_mb']:.0f} MB** (last raised "
                    f"in {serving['peak_where']}), **{serving['whole_run']['end_mb']:.0f} MB** at "
                    f"the end (VmRSS)."
                ]
                if serving.get("whole_run")
                else ["- Each cell of ours ran in a fresh process (`--ours-per-cell`)."]
            ),
            f"- Prediction log rows dropped by ours over all these runs: "
            f"**{serving['log_dropped_rows']:.0f}** "
            + (
                "(the log kept up with every figure above)."
                if serving["log_dropped_rows"] == 0
                else "(**the log fell behind: the figures above overstate ours**)."
            ),
            f"- Feedback ingestion into the local store, 8 connections: **{fb['rps']:,.0f} rows/s** "
            f"(p99 {fb['p99_ms']:.1f} ms; {fb['stored_rows']} rows stored, non-2xx {fb['non_2xx']}).",
            "",
        ]
    if serving and serving.get("tasks"):
        lines += tasks_markdown(serving["tasks"])
    if serving and serving.get("steps"):
        lines += steps_markdown(serving["steps"])
    if jobs:
        rep, ret = jobs["report"], jobs["retrain"]
        lines += [
            "## Jobs",
            "",
            "| job | rows | wall time | peak memory (ru_maxrss) |",
            "|---|---|---|---|",
            f"| Evidently report (drift in 2 spaces + quality) | {rep['reference_rows']:,} reference × {rep['production_rows']:,} production × {rep['features']} features | {rep['seconds']:.1f} s | {rep['peak_mb']:.0f} MB |",
            f"| retraining (split, fit, backup, evaluate, ONNX conversion + check) | {ret['rows']:,} × {ret['features']} | {ret['seconds']:.1f} s | {ret['peak_mb']:.0f} MB |",
            "",
            "Each job ran in its own process (`python -m bench.jobs report|retrain`).",
            "",
        ]
    if serving and jobs:
        lines += targets(serving, jobs)
    # Kept from the previous file: the analysis, written by hand, and the image sizes, written
    # by `make test-images --write-bench`.
    if path.exists():
        old = path.read_text()
        for heading in ("## Where the time goes", "## Service images"):
            if heading in old:
                section = old[old.index(heading) :]
                nxt = section.find("\n## ", 1)
                lines += ["", (section if nxt < 0 else section[:nxt]).rstrip(), ""]
    path.write_text("\n".join(lines).rstrip() + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--only",
        choices=["serving", "jobs", "tasks"],
        help="tasks: only the mixed-type and regression cells, printed (BENCHMARKS.md is left as "
        "it is)",
    )
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "BENCHMARKS.md")
    parser.add_argument(
        "--ours-per-cell",
        action="store_true",
        help="start a fresh serving process of ours for each cell (by default one process "
        "serves every cell in turn, and its peak memory over the whole run is reported)",
    )
    parser.add_argument(
        "--mlserver-python",
        help="the Python of MLServer's environment (make bench: .venv-mlserver); without it, "
        "no MLServer baseline",
    )
    parser.add_argument(
        "--serving-python",
        default=sys.executable,
        help="the Python of the serving's own environment (make bench: .venv-serving, the "
        "serving package alone, as its image installs it)",
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print(
            "wrk is not installed (Debian package wrk; `make bench` installs it)", file=sys.stderr
        )
        return 1
    one_process = not args.ours_per_cell
    if args.only == "tasks":  # a quick look at the new cells: printed, not written
        bench_tasks(args.seconds, args.serving_python, one_process=one_process)
        return 0
    serving = (
        bench_serving(args.seconds, args.serving_python, args.mlserver_python, one_process)
        if args.only in (None, "serving")
        else None
    )
    jobs = bench_jobs() if args.only in (None, "jobs") else None
    flags = (f"--seconds {args.seconds:g} " if args.seconds != 5 else "") + (
        "--ours-per-cell" if args.ours_per_cell else ""
    )
    command = "make bench" + (f" BENCH_ARGS='{flags.strip()}'" if flags else "")
    write_markdown(args.output, serving, jobs, args.seconds, command)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
