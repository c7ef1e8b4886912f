"""The serving's own cost, step by step, in process (prints one JSON line).

``make bench`` runs ``python -m bench.steps`` in the serving's environment, pinned to one core,
with the store of its run in the environment (``MLPLATFORM_STORE_URL``), on uvloop as uvicorn
runs it. No HTTP, no load generator: each figure is wall time on that core, with nothing else
running there, the minimum of 7 rounds.

- µs per request through the app (``hotpath.HotRoutes``, then ``predict.answer`` or
  ``v2.infer_answer``), without the prediction log (its writer is measured apart, below);
  single rows also with FastAPI's OpenTelemetry check on (``MLPLATFORM_OPENTELEMETRY``);
- a 1,000-row JSON body: msgspec's decode, then its rows to a float64 matrix, ours
  (``RowsCodec.matrix``) beside the way before it (``np.fromiter`` over the values) as the
  baseline;
- the log writer per 50,000-row object of binary V2 requests: the frame (``to_frame``) and
  its Parquet write to the local store (``write_predictions``, with its fsync).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
import uvloop

from bench.run import bodies, path_of

ROUNDS = 7


def best_us(fn: Callable[[], Any], repeat: int) -> float:
    """The fastest of ``ROUNDS`` rounds of ``repeat`` calls, in µs per call."""
    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(repeat):
            fn()
        times.append((time.perf_counter() - started) / repeat)
    return min(times) * 1e6


def asgi_request(app: Any, path: str, bodies: list[bytes], content_type: str) -> Callable[[], Any]:
    """A coroutine function sending one POST through the app as uvicorn would, the next of
    ``bodies`` each time: the body in 64 kB messages, the answer discarded."""
    first, *extra = content_type.split("\n")
    common = [
        (b"host", b"bench"),
        (b"content-type", first.encode()),
        *(
            (k.strip().lower().encode(), v.strip().encode())
            for k, v in (h.split(":") for h in extra)
        ),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }
    turns = itertools.cycle(bodies)
    step = 65536

    async def one() -> None:
        body = next(turns)
        offsets = iter(range(0, max(len(body), 1), step))

        async def receive() -> dict[str, Any]:
            at = next(offsets, len(body))
            return {
                "type": "http.request",
                "body": body[at : at + step],
                "more_body": at + step < len(body),
            }

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] != 200:
                raise RuntimeError(f"{path}: HTTP {message['status']}")

        length = (b"content-length", str(len(body)).encode())
        await app({**scope, "headers": [*common, length], "state": {}}, receive, send)

    return one


async def measure() -> dict[str, Any]:
    from mlplatform_common import datalog
    from mlplatform_serving import predlog
    from mlplatform_serving.app import create_app
    from mlplatform_serving.codecs.json_rows import RowsCodec
    from mlplatform_serving.settings import ServingSettings

    app = create_app()
    # The baseline of the single-row figure: the same app with FastAPI's own check for an
    # OpenTelemetry provider on every request (FastAPI's default; MLPLATFORM_OPENTELEMETRY).
    otel_app = create_app(ServingSettings(opentelemetry=True))
    scenarios = bodies()
    out: dict[str, Any] = {}
    async with app.router.lifespan_context(app), otel_app.router.lifespan_context(otel_app):
        service = app.state.service
        log = service.log
        add = log.add
        log.add = lambda *a, **k: None
        otel_app.state.service.log.add = lambda *a, **k: None
        cases = {  # name: the app, its scenario of bodies(), requests per round
            "single JSON": (app, "single JSON", 2000),
            "single JSON, MLPLATFORM_OPENTELEMETRY=true": (otel_app, "single JSON", 2000),
            "1,000-row JSON": (app, "1,000-row JSON", 200),
            "1,000-row V2 FP64 binary": (app, "1,000-row V2 FP64 binary", 500),
        }
        calls = {}
        for name, (which, scenario, repeat) in cases.items():
            sent, ctype = scenarios[scenario]
            calls[name] = asgi_request(which, path_of(scenario), sent, ctype)
            for _ in range(repeat // 4):  # warm-up
                await calls[name]()
        rounds: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(ROUNDS):  # the cases take turns: a slow moment hits all of them
            for name, (_, _, repeat) in cases.items():
                started = time.perf_counter()
                for _ in range(repeat):
                    await calls[name]()
                rounds[name].append((time.perf_counter() - started) / repeat * 1e6)
        out["request_us"] = {name: min(times) for name, times in rounds.items()}

        body = scenarios["1,000-row JSON"][0][0]
        codec = RowsCodec.of(service.runtime.served)
        decoder = codec.decoder
        if decoder is None:
            raise RuntimeError("the model's features have no typed JSON decoder")
        rows = decoder.decode(body).instances
        n = len(codec.features)

        def fromiter() -> np.ndarray:
            values = itertools.chain.from_iterable(map(msgspec.structs.astuple, rows))
            return np.fromiter(values, dtype=np.float64, count=len(rows) * n).reshape(-1, n)

        if not np.array_equal(fromiter(), codec.matrix(rows)):
            raise RuntimeError("RowsCodec.matrix and the baseline disagree")
        out["json_1000_us"] = {
            "decode": best_us(lambda: decoder.decode(body), 200),
            "matrix": best_us(lambda: codec.matrix(rows), 500),
            "matrix_fromiter": best_us(fromiter, 500),
        }

        log.add = add
        one = calls["1,000-row V2 FP64 binary"]
        log.flush()
        for _ in range(50):
            await one()
        entries = list(log._pending)  # 50 requests of 1,000 rows, unwritten (settings below)
        if sum(len(e) for e in entries) != 50_000:
            raise RuntimeError("the log wrote some of the 50,000 rows before they were measured")
        frame_ms = best_us(lambda: predlog.to_frame(entries), 1) / 1000
        frame = predlog.to_frame(entries)
        write_ms = best_us(lambda: datalog.write_predictions(log.store, frame), 1) / 1000
        out["writer_ms"] = {"rows": len(frame), "frame": frame_ms, "write": write_ms}
        log._pending.clear()
        log._pending_rows = log._pending_bytes = 0
    return out


def main() -> int:
    # The writer must not flush while the bench holds its 50,000 rows.
    os.environ.update(
        MLPLATFORM_LOG_FLUSH_SECONDS="3600",
        MLPLATFORM_LOG_FLUSH_ROWS="1000000",
        MLPLATFORM_LOG_BUFFER_MAX_ROWS="1000000",
        MLPLATFORM_LOG_BUFFER_MAX_MB="4096",
        MLPLATFORM_LOG_LEVEL="WARNING",
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        print(json.dumps(runner.run(measure())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
