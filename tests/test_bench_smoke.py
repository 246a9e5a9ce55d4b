"""Each benchmark's ``--quick`` mode runs to the end and prints its table (no timing is asserted).

The benchmarks start their own servers on loopback and clean them up; these tests only check
that they still work against the current code, so a refactor cannot silently break them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_bench(module: str, *args: str, timeout: float = 180) -> str:
    proc = subprocess.run([sys.executable, "-m", module, "--quick", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)
    assert proc.returncode == 0, f"{module} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert f"-m {module} --quick" in proc.stdout, "the exact command is printed"
    return proc.stdout


def table_rows(out: str, first_header: str) -> list[list[str]]:
    """The body rows of the Markdown table whose header starts with ``first_header``."""
    lines = out.splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_header:
            rows = []
            for body in lines[i + 2 :]:
                if not body.startswith("|"):
                    break
                rows.append([c.strip() for c in body.strip().strip("|").split("|")])
            return rows
    raise AssertionError(f"no table with header {first_header!r} in:\n{out}")


@pytest.mark.slow
def test_streams_quick_prints_both_knees() -> None:
    out = run_bench("bench.streams")
    knees = table_rows(out, "server")
    assert {r[0] for r in knees} >= {"hushwire", "echo"}
    assert "hushwire knee / echo knee" in out


@pytest.mark.slow
def test_denoiser_quick_prints_hop_costs_and_job_throughput() -> None:
    out = run_bench("bench.denoiser")
    rows = table_rows(out, "what")
    assert any(r[0].startswith("Denoiser 16 kHz") for r in rows)
    assert any(r[0].startswith("Denoiser 48 kHz × 8 ch") for r in rows)
    assert all(float(r[2]) > 0 for r in rows)
    assert table_rows(out, "path")[0][0] == "run_job 16 kHz mono"


@pytest.mark.slow
def test_memory_quick_prints_rss_per_stream_and_job_peaks() -> None:
    out = run_bench("bench.memory")
    streams = table_rows(out, "open streams")
    assert [r[0] for r in streams[:3]] == ["0", "10", "20"]
    jobs = table_rows(out, "file")
    assert len(jobs) == 2 and all(float(r[6]) > 0 for r in jobs)


@pytest.mark.slow
def test_files_quick_prints_the_gateway_table() -> None:
    out = run_bench("bench.files")
    (row,) = table_rows(out, "clients")
    assert row[0] == "2" and int(row[8]) > 0 and row[9] == "0"
