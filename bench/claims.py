"""The cost of a fair job claim (``Store.claim_next``) as the queue grows.

Claims are fair across users (docs/security.md, "Fair job claims"): the users with runnable jobs are
ordered (fewest jobs running, then least recent service), then the first user's oldest job is leased.
This measures one claim, inside its transaction, with ``--jobs`` pending jobs spread evenly over
``--users`` users, on a fresh SQLite file, and on PostgreSQL when ``--postgres-url`` names a server
(a role that may create databases: each queue size gets a new database, dropped at the end). Each
round claims ``--claims`` jobs in a row from a freshly filled queue; the table gives the median and
the 95th percentile.

    python -m bench.claims
    python -m bench.claims --postgres-url postgresql://postgres@127.0.0.1:5432/postgres
    python -m bench.claims --quick
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import uuid
from collections.abc import Iterator

from bench._common import BenchTimeout, install_watchdog, percentile, print_header, print_table, stopped, temp_dir
from server.store import PENDING, JobRow, Store


def _job(uid: int, key_id: int, created_at: float) -> JobRow:
    job_id = uuid.uuid4().hex
    return JobRow(job_id=job_id, uid=uid, key_id=key_id, status=PENDING, progress=0.0, held=False,
                  file_name="bench.wav", file_key="file", attenuation_limit_db=None, created_at=created_at,
                  mod_time=created_at, format="WAV", subtype="PCM_16", sample_rate=16000, channels=1, frames=16000,
                  upload_bytes=32044, upload_blob=f"uploads/{job_id}")


def measure(database: str, jobs: int, users: int, claims: int) -> list[float]:
    """Seconds per claim, ``claims`` claims with ``jobs`` queued over ``users`` users."""
    store = Store(database, b"bench-pepper")
    try:
        accounts = []
        for u in range(users):
            uid = store.create_user(f"bench{u}")
            accounts.append((uid, store.create_key(uid)[0]))
        t0 = time.time()
        for i in range(jobs):
            uid, key_id = accounts[i % users]
            store.create_job(_job(uid, key_id, t0 + i * 1e-6))
        out = []
        for _ in range(claims):
            start = time.perf_counter()
            job = store.claim_next("bench", 600.0, 3)
            out.append(time.perf_counter() - start)
            assert job is not None
        return out
    finally:
        store.close()


@contextlib.contextmanager
def _fresh_postgres(server_url: str) -> Iterator[str]:
    import psycopg

    name = f"hushwire_bench_claims_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield server_url.rsplit("/", 1)[0] + "/" + name
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, nargs="+", default=[100, 1000, 5000], help="queue sizes to measure")
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--claims", type=int, default=50, help="claims measured per queue size")
    p.add_argument("--postgres-url", default=None, help="a PostgreSQL server to measure too (creates and drops "
                                                        "a database per queue size)")
    p.add_argument("--quick", action="store_true", help="one small queue (the smoke test)")
    p.add_argument("--max-seconds", type=float, default=600.0)
    args = p.parse_args(argv)
    if args.quick:
        args.jobs, args.users, args.claims = [200], 10, 20
    install_watchdog(args.max_seconds)
    print_header("bench.claims", "Fair job claims: the cost of one claim as the queue grows")
    rows = []
    try:
        with temp_dir() as tmp:
            for n in args.jobs:
                times = measure(f"sqlite://{tmp / f'claims-{n}.db'}", n, args.users, args.claims)
                rows.append(["SQLite", n, args.users, args.claims, 1000 * percentile(times, 50),
                             1000 * percentile(times, 95)])
        if args.postgres_url:
            for n in args.jobs:
                with _fresh_postgres(args.postgres_url) as url:
                    times = measure(url, n, args.users, args.claims)
                rows.append(["PostgreSQL", n, args.users, args.claims, 1000 * percentile(times, 50),
                             1000 * percentile(times, 95)])
    except (BenchTimeout, KeyboardInterrupt) as exc:
        return stopped(exc)
    print_table(["database", "jobs queued", "users", "claims", "claim p50 ms", "claim p95 ms"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
