"""Two builds of serving, A and B, in alternating runs: is a difference between them real?

One pair of ``make bench`` runs cannot tell a change from a slow moment of the machine. Here
each cell runs A and B in turn, the order swapped every round, each right after its own floor
run (``bench.baselines:floor_app``), on the same store and bodies as ``bench.run``.

Usage: python -m bench.ab --a <python of build A> --b <python of build B>
       [--rounds 3] [--seconds 5] [--cell "single JSON:1" ...]

Each ``--a``/``--b`` is the Python of a serving environment (``make serving-env`` in a worktree
at the commit to compare gives ``<worktree>/.venv-serving/bin/python``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.run import Server, bodies, machine, make_store, path_of, wrk

CELLS = ["single JSON:1", "single JSON:32", "1,000-row V2 FP64 binary:1"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    server: Server, path: str, sent: list[bytes], ctype: str, c: int, seconds: float
) -> tuple[float, float]:
    """Requests/s, and the server's CPU microseconds per request: the second is what the
    build costs, and moves less than the first when other work shares the machine."""
    server.start()
    try:  # a failed measurement must not leave the server running
        wrk(server.url + path, sent, ctype, c, 1)  # warm-up
        pid = server.proc.pid  # type: ignore[union-attr]
        before = cpu_seconds(pid)
        rps = float(wrk(server.url + path, sent, ctype, c, seconds)["rps"])
        used = cpu_seconds(pid) - before
        return rps, used / (rps * round(seconds)) * 1e6
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", required=True, help="Python of serving build A")
    parser.add_argument("--b", required=True, help="Python of serving build B")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--cell", action="append", help='"scenario:connections"; repeatable')
    args = parser.parse_args()
    cells = [(s, int(c)) for s, c in (cell.rsplit(":", 1) for cell in args.cell or CELLS)]
    every = bodies()
    unknown = [s for s, _ in cells if s not in every]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; known: {', '.join(every)}")

    tmp = Path(tempfile.mkdtemp(prefix="mlplatform-ab-"))
    try:
        env = make_store(tmp)
        uvicorn = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", "{port}"]
        floor = Server(
            "floor",
            [*uvicorn, "--log-level", "warning", "--no-access-log", "bench.baselines:floor_app"],
            {},
            "/predict",
        )
        builds = {
            "A": Server("A", [args.a, "-m", "mlplatform_serving"], env, "/ready"),
            "B": Server("B", [args.b, "-m", "mlplatform_serving"], env, "/ready"),
        }
        runs: list[dict[str, Any]] = []
        for round_ in range(args.rounds):
            order = ["A", "B"] if round_ % 2 == 0 else ["B", "A"]
            for scenario, c in cells:
                sent, ctype = every[scenario]
                path = path_of(scenario)
                for name in order:
                    floor_rps, _ = measure(floor, path, sent, ctype, c, args.seconds)
                    rps, cpu_us = measure(builds[name], path, sent, ctype, c, args.seconds)
                    runs.append(
                        {
                            "round": round_,
                            "scenario": scenario,
                            "c": c,
                            "build": name,
                            "rps": rps,
                            "cpu_us": cpu_us,
                            "floor": floor_rps,
                        }
                    )
                    print(
                        f"round {round_} {scenario:26} c={c:<3} {name} {rps:8.0f} req/s "
                        f"{cpu_us:7.1f} CPU µs/req (floor {floor_rps:.0f} req/s)",
                        flush=True,
                    )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nMachine: {machine()}\n")
    print(
        "| scenario | conns | round | A req/s (÷ floor) | B req/s (÷ floor) | B ÷ A req/s "
        "| A CPU µs/req | B CPU µs/req |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for scenario, c in cells:
        ratios, cpu = [], {"A": [], "B": []}  # type: ignore[var-annotated]
        for round_ in range(args.rounds):
            a, b = (
                next(
                    r
                    for r in runs
                    if (r["round"], r["scenario"], r["c"], r["build"]) == (round_, scenario, c, n)
                )
                for n in ("A", "B")
            )
            ratios.append(b["rps"] / a["rps"])
            cpu["A"].append(a["cpu_us"])
            cpu["B"].append(b["cpu_us"])
            print(
                f"| {scenario} | {c} | {round_} | {a['rps']:,.0f} ({a['rps'] / a['floor']:.2f}×) "
                f"| {b['rps']:,.0f} ({b['rps'] / b['floor']:.2f}×) | {ratios[-1]:.3f} "
                f"| {a['cpu_us']:.1f} | {b['cpu_us']:.1f} |"
            )
        print(
            f"| {scenario} | {c} | median | | | {statistics.median(ratios):.3f} "
            f"| {statistics.median(cpu['A']):.1f} | {statistics.median(cpu['B']):.1f} |"
        )
    print("\n" + json.dumps(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
