"""Peak memory of one serving process through all of ours' cells of ``make bench``, in the
same order, for serving settings side by side (alternating rounds).

Usage: python -m bench.memory [--rounds 2] [--seconds 10] [--set "NAME=VALUE ..."] ...

Each ``--set`` is one configuration (space-separated ``MLPLATFORM_*`` settings; ``""`` is the
defaults). Peak memory (VmHWM) moves little with other work on the machine; requests/s here
are not figures to compare (``make bench`` and ``bench.ab`` are).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from bench.run import REPO, Server, bodies, machine, make_store, path_of, rss_mb, wrk


def peak(env: dict[str, str], python: str, seconds: float) -> tuple[float, str]:
    """The process's VmHWM after every cell, and the cell that last raised it."""
    server = Server("ours", [python, "-m", "mlplatform_serving"], env, "/ready").start()
    try:
        top, where = rss_mb(server.proc.pid, "VmHWM"), "at /ready"  # type: ignore[union-attr]
        for scenario, (sent, ctype) in bodies().items():
            for connections in (1, 32):
                url = server.url + path_of(scenario)
                wrk(url, sent, ctype, connections, 1)  # warm-up, as make bench does
                wrk(url, sent, ctype, connections, seconds)
                hwm = rss_mb(server.proc.pid, "VmHWM")  # type: ignore[union-attr]
                if hwm > top:
                    top, where = hwm, f"{scenario}, {connections} conns"
        return top, where
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--set", action="append", dest="sets", help="one configuration")
    parser.add_argument(
        "--serving-python",
        default=str(REPO / ".venv-serving/bin/python"),
        help="the serving's own environment (make serving-env), as make bench runs it",
    )
    args = parser.parse_args()
    configs = args.sets or [""]
    tmp = Path(tempfile.mkdtemp(prefix="mlplatform-memory-"))
    try:
        store_env = make_store(tmp)
        for round_ in range(args.rounds):
            order = configs if round_ % 2 == 0 else configs[::-1]
            for config in order:
                env = {**store_env, **dict(kv.split("=", 1) for kv in config.split())}
                top, where = peak(env, args.serving_python, args.seconds)
                print(f"round {round_} [{config or 'defaults'}] peak {top:.0f} MB ({where})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"Machine: {machine()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
