"""Each benchmark's ``--quick`` mode runs to the end and prints its table (no timing is asserted).

The benchmarks start their own servers on loopback and clean them up; these tests only check
that they still work against the current code, so a refactor cannot silently break them.
The streams, memory and soak smoke runs take over 10 s and are marked slow.
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


def table_rows(out: str, column: str) -> list[dict[str, str]]:
    """The body rows of the first Markdown table with a column named ``column``, as dicts."""
    lines = out.splitlines()
    for i, line in enumerate(lines):
        header = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and column in header:
            rows = []
            for body in lines[i + 2 :]:
                if not body.startswith("|"):
                    break
                rows.append(dict(zip(header, (c.strip() for c in body.strip().strip("|").split("|")), strict=True)))
            return rows
    raise AssertionError(f"no table with a column {column!r} in:\n{out}")


@pytest.mark.slow
def test_streams_quick_prints_the_knees_of_this_tree_the_baseline_and_the_echo() -> None:
    out = run_bench("bench.streams", "--baseline", "HEAD")
    knees = table_rows(out, "knee (streams)")
    assert {r["server"] for r in knees} == {"hushwire", "baseline", "echo"}
    assert "hushwire knee / echo knee" in out and "baseline hushwire knee / echo knee" in out
    worktrees = subprocess.run(["git", "worktree", "list", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout
    assert "hushwire-bench-" not in worktrees  # the baseline's temporary worktree is gone


def test_denoiser_quick_prints_hop_costs_and_job_throughput() -> None:
    out = run_bench("bench.denoiser")
    rows = table_rows(out, "µs per hop")
    assert any(r["what"].startswith("Denoiser 16 kHz") for r in rows)
    assert any(r["what"].startswith("Denoiser 48 kHz × 8 ch") for r in rows)
    assert all(float(r["µs per hop"]) > 0 for r in rows)
    assert table_rows(out, "audio s per wall s")[0]["path"] == "run_job 16 kHz mono"


@pytest.mark.slow
def test_denoiser_baseline_measures_both_trees_and_removes_its_worktree() -> None:
    out = run_bench("bench.denoiser", "--baseline", "HEAD", "--rounds", "1")
    rows = table_rows(out, "ratio")
    assert [r["load"] for r in rows][-1] == "job path, 16 kHz mono, 1 s blocks"
    assert any(r["load"] == "live, 16 kHz, 10 streams per batch" for r in rows)
    for r in rows:
        assert float(r["baseline ms CPU per s"]) > 0 and float(r["this tree ms CPU per s"]) > 0
        base, cur = float(r["baseline ms CPU per s"]), float(r["this tree ms CPU per s"])
        assert float(r["ratio"]) == pytest.approx(cur / base, abs=0.02)
    worktrees = subprocess.run(["git", "worktree", "list", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout
    assert "hushwire-bench-" not in worktrees  # the baseline's temporary worktree is gone


@pytest.mark.slow
def test_memory_quick_prints_rss_per_stream_and_job_peaks() -> None:
    out = run_bench("bench.memory")
    streams = table_rows(out, "server RSS MiB")
    assert [r["open streams"] for r in streams[:3]] == ["0", "10", "20"]
    jobs = table_rows(out, "peak")
    assert len(jobs) == 2 and all(float(r["peak"]) > 0 for r in jobs)


def test_files_quick_prints_the_gateway_table() -> None:
    out = run_bench("bench.files")
    (row,) = table_rows(out, "uploads/s (POST /enhance)")
    assert row["clients"] == "2" and int(row["jobs"]) > 0 and row["errors"] == "0"


def test_claims_quick_prints_the_claim_cost() -> None:
    out = run_bench("bench.claims")
    (row,) = table_rows(out, "claim p50 ms")
    assert row["database"] == "SQLite" and row["jobs queued"] == "200" and float(row["claim p50 ms"]) > 0


@pytest.mark.slow
def test_replicas_quick_prints_the_scaling_table() -> None:
    import shutil

    if not (shutil.which("haproxy") or Path("/usr/sbin/haproxy").exists()):
        pytest.skip("haproxy is not installed (Debian: apt-get install haproxy)")
    out = run_bench("bench.replicas")
    rows = table_rows(out, "stream knee")
    assert [r["replicas"] for r in rows] == ["1", "2"]
    assert all(r["jobs done"] == "2/2" and float(r["job audio s per wall s"]) > 0 for r in rows)
    assert "2 replicas / 1 replica" in out


@pytest.mark.slow
def test_soak_quick_loses_nothing() -> None:
    out = run_bench("bench.soak")  # exits 1 if anything was lost or duplicated (run_bench asserts 0)
    (streams,) = table_rows(out, "chunks answered")
    assert streams["streams"] == "5" and streams["completed"] == "5", streams
    assert streams["unanswered"] == "0" and streams["tails flushed"] == "5", streams
    assert int(streams["chunks sent"]) > 0
    (uploads,) = table_rows(out, "downloads matching length")
    assert int(uploads["accepted"]) > 0 and uploads["completed"] == uploads["accepted"], uploads
    assert uploads["downloads matching length"] == uploads["completed"], uploads
    (jobs,) = table_rows(out, "lost (accepted, no row)")
    assert jobs["accepted"] == jobs["rows in the DB"] == uploads["accepted"], jobs
    assert jobs["lost (accepted, no row)"] == jobs["duplicated (rows per upload > 1)"] == "0", jobs
    memory = table_rows(out, "after − before")
    assert {r["process"] for r in memory} >= {"server", "gateway"}
    assert "nothing lost" in out


@pytest.mark.slow
def test_soak_quick_reports_refusals_with_their_codes() -> None:
    out = run_bench("bench.soak", "--max-streams-per-user", "3", "--max-queued-jobs-per-user", "1")
    (streams,) = table_rows(out, "chunks answered")
    assert streams["completed"] == "3" and streams["refused (status/code)"] == "2: RESOURCE_EXHAUSTED/RATE_LIMITED ×2"
    assert streams["unanswered"] == "0", streams
    (uploads,) = table_rows(out, "downloads matching length")
    assert "429 RATE_LIMITED" in uploads["refused (HTTP code)"], uploads
    (jobs,) = table_rows(out, "lost (accepted, no row)")
    assert jobs["orphans (a row, upload not accepted)"] == jobs["lost (accepted, no row)"] == "0", jobs
    assert jobs["accepted"] == jobs["rows in the DB"] == uploads["accepted"], jobs


@pytest.mark.slow
def test_slow_consumers_quick_ends_every_call() -> None:
    out = run_bench("bench.slow_consumers")
    (row,) = table_rows(out, "calls ended")
    assert row["calls ended"] == "3/3" and row["streams_open then"] == "0", row


@pytest.mark.slow
def test_overload_quick_admits_some_and_refuses_the_rest() -> None:
    out = run_bench("bench.overload")
    over, base = table_rows(out, "refusal codes")
    assert over["phase"] == "overload" and over["offered"] == "12", over
    assert int(over["admitted"]) >= 1 and int(over["refused"]) >= 1, over
    assert over["refusal codes"] == f"OVERLOADED×{over['refused']}", over
    # Whether they kept up is timing on a shared machine (tests/test_admission.py holds the server to it);
    # here the count must be one of the admitted streams'.
    assert 0 <= int(over["streams behind"]) <= int(over["admitted"]), over
    assert base["phase"] == "baseline" and base["offered"] == over["admitted"], base
    # The baseline retries refusals (slow start), so it runs as many of them as the server then takes.
    assert 1 <= int(base["admitted"]) <= int(base["offered"]), base
    assert over["server got"].endswith("%") and base["server got"].endswith("%"), (over, base)


@pytest.mark.slow
def test_processes_quick_measures_both_layouts() -> None:
    out = run_bench("bench.processes")
    rows = table_rows(out, "streams per process")
    rows.sort(key=lambda r: r["server"])
    assert [(r["server"], r["streams"]) for r in rows] == [("one", "2"), ("one@0", "2"), ("two", "4")], rows
    assert {r["dropped"] for r in rows} == {"0"}, rows
    rows = [r for r in rows if r["server"] != "one@0"]
    assert rows[1]["server CPU per process (siblings + parent)"].count("+") == 2, rows   # all three measured
    spread = [float(x) for x in rows[1]["streams per process"].split("+")]
    assert sum(spread) == 4 and spread[2] == 0, rows   # every stream counted in one sibling's metric
    (summary,) = table_rows(out, "ratio (target ≥ 1.8)")
    assert float(summary["ratio 2/1 (target ≤ 1.1)"]) > 0, summary
