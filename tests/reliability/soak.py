"""The long run of the reliability tests: ``python -m tests.reliability.soak [--minutes N]``.

The same tests as ``make test`` runs, with the soak profile (``MLPLATFORM_SOAK=1``): ten minutes
of load by default, 1000 generated inputs per API operation, a 30 s store outage and 25
publisher kills. Figures go to ``tests/reliability/results/soak.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import pytest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.soak")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the load phase")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    os.environ["MLPLATFORM_SOAK"] = "1"
    os.environ["MLPLATFORM_SOAK_SECONDS"] = str(args.minutes * 60)
    # Only now: the profile is read from the environment when the conftest is imported.
    from tests.reliability.conftest import PROFILE, RESULTS

    assert PROFILE.name == "soak", PROFILE
    # The soak load phase alone is longer than the suite's per-test timeout.
    timeout = str(int(args.minutes * 60 * 2 + 900))
    code = pytest.main(
        [
            "tests/reliability",
            "-m",
            "soak",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            f"timeout={timeout}",
            *args.pytest_args,
        ]
    )
    path = RESULTS / "soak.json"
    if path.exists():
        load = json.loads(path.read_text())["tests"].get("load_two_processes", {})
        print(f"\nsoak figures: {path}")
        for key in ("requests", "requests_per_second", "feedback_rows_lost", "latency_ms"):
            if key in load:
                print(f"  {key}: {load[key]}")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
