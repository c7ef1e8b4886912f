"""``bench.jobs``, the timings of bench/BENCHMARKS.md's "Jobs" table, at its smallest sizes: each
job runs in its own process as ``bench.run.bench_jobs`` runs it, prints the JSON line that
function reads, and ``bench.run.write_markdown`` renders that line as the table BENCHMARKS.md
shows. The figures are never compared with a time."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.jobs import MIN_ROWS
from bench.run import write_markdown
from tests.conftest import REPO, run_cli

JOBS = {
    "report": {"reference_rows", "production_rows", "features", "seconds", "peak_mb"},
    "retrain": {"rows", "features", "seconds", "peak_mb"},
}


def jobs_section(markdown: str) -> str:
    """The "## Jobs" section with every figure as N (its shape)."""
    start = markdown.index("## Jobs")
    end = markdown.find("\n## ", start)
    section = markdown[start : end if end >= 0 else None]
    return re.sub(r"\d[\d,.]*", "N", section).strip()


def run_job(job: str) -> dict[str, Any]:
    done = run_cli("bench.jobs", [job, "--rows", str(MIN_ROWS)], {}, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def test_the_jobs_print_the_figures_of_the_benchmarks_jobs_table(tmp_path: Path) -> None:
    with ThreadPoolExecutor(2) as pool:  # two processes, as make bench runs them one by one
        jobs = dict(zip(JOBS, pool.map(run_job, JOBS), strict=True))
    for job, fields in JOBS.items():
        assert set(jobs[job]) == fields, jobs[job]
        assert jobs[job]["features"] == 30
        assert jobs[job]["seconds"] > 0 and jobs[job]["peak_mb"] > 0, jobs[job]
    assert jobs["report"]["reference_rows"] == MIN_ROWS
    assert jobs["report"]["production_rows"] == MIN_ROWS // 5
    assert jobs["retrain"]["rows"] == MIN_ROWS

    written = tmp_path / "BENCHMARKS.md"
    write_markdown(written, None, jobs, 5.0, "make bench")
    shipped = (REPO / "bench" / "BENCHMARKS.md").read_text()
    assert jobs_section(written.read_text()) == jobs_section(shipped)


def test_rows_below_the_smallest_size_are_one_line_and_exit_2() -> None:
    done = run_cli("bench.jobs", ["retrain", "--rows", "10"], {}, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"python -m bench.jobs: error: --rows: at least {MIN_ROWS:,}"
    )
