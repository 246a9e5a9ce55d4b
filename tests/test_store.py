"""The store on each database (``database_url``: SQLite and a real PostgreSQL): schema and migrations,
concurrent claims, and leases that expire."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from server.store import (
    COMPLETED,
    FAILED,
    PENDING,
    PRE_PROCESSING,
    IdempotencyConflict,
    JobRow,
    Store,
    StoreError,
    TooManyKeys,
)
from server.store.engines import open_engine
from server.store.schema import VERSION

PEPPER = b"test-pepper"


def _job(job_id: str, uid: int, key_id: int, created_at: float, **kw: object) -> JobRow:
    fields: dict[str, object] = dict(
        job_id=job_id, uid=uid, key_id=key_id, status=PENDING, progress=0.0, held=False, file_name=f"{job_id}.wav",
        file_key="file", attenuation_limit_db=None, created_at=created_at, mod_time=created_at, format="WAV",
        subtype="PCM_16", sample_rate=16000, channels=2, frames=48000, upload_bytes=96044,
        upload_blob=f"uploads/{job_id}")
    fields.update(kw)
    return JobRow(**fields)  # type: ignore[arg-type]


def _user(store: Store) -> tuple[int, int]:
    uid = store.create_user("worker-test")
    key_id, _ = store.create_key(uid)
    return uid, key_id


def _tables(database_url: str) -> set[str]:
    engine = open_engine(database_url)
    try:
        if engine.dialect == "sqlite":
            sql = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        else:
            sql = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        return {r[0] for r in engine.execute(sql).fetchall()}
    finally:
        engine.close()


def test_schema_is_created_on_an_empty_database_and_reopening_changes_nothing(database_url: str) -> None:
    assert _tables(database_url) == set()
    store = Store(database_url, PEPPER)
    assert store.schema_version == VERSION
    assert _tables(database_url) == {"schema_version", "users", "api_keys", "jobs", "usage", "idempotency_keys",
                                     "secret_fingerprints", "webhook_outbox"}
    uid = store.create_user("ann")
    key_id, key = store.create_key(uid)
    store.close()
    again = Store(database_url, PEPPER)  # idempotent: nothing applied twice, nothing lost
    try:
        assert again.schema_version == VERSION
        p = again.authenticate(key)
        assert p is not None and (p.uid, p.key_id) == (uid, key_id)
        engine = open_engine(database_url)
        assert engine.execute("SELECT version FROM schema_version").fetchall() == [(VERSION,)]
        engine.close()
    finally:
        again.close()


def test_an_old_schema_is_migrated_forward(database_url: str) -> None:
    engine = open_engine(database_url)
    assert engine.migrate(upto=1) == 1  # users and keys only, as the first release left them
    engine.execute("INSERT INTO users (name, created_at) VALUES (?, ?)", ("early", 1.0))
    engine.close()
    assert "jobs" not in _tables(database_url)
    store = Store(database_url, PEPPER)
    try:
        assert store.schema_version == VERSION and store.user_name(1) == "early"
        uid, key_id = _user(store)
        store.create_job(_job("j1", uid, key_id, time.time()))
        assert store.get_job("j1") is not None
    finally:
        store.close()


def test_replicas_opening_a_new_database_at_once_migrate_it_once(database_url: str) -> None:
    barrier = threading.Barrier(4)

    def open_it(_: int) -> int:
        barrier.wait(timeout=30)
        store = Store(database_url, PEPPER)
        store.close()
        return store.schema_version

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(open_it, range(4))) == [VERSION] * 4
    engine = open_engine(database_url)
    assert engine.execute("SELECT version FROM schema_version").fetchall() == [(VERSION,)]
    engine.close()


def test_large_values_round_trip(database_url: str) -> None:
    """Unix times keep sub-millisecond precision and byte counts go past 32 bits on both databases."""
    store = Store(database_url, PEPPER)
    try:
        uid, key_id = _user(store)
        t = 1795700000.123456
        store.create_job(_job("big", uid, key_id, t, frames=2 * 3600 * 192000, upload_bytes=5 * 10**9,
                              attenuation_limit_db=12.5))
        job = store.get_job("big")
        assert job is not None and job.created_at == t and job.frames == 2 * 3600 * 192000
        assert job.upload_bytes == 5 * 10**9 and job.attenuation_limit_db == 12.5 and not job.held
        store.record_upload(key_id, uid, 3 * 10**9)
        store.record_upload(key_id, uid, 3 * 10**9)
        assert store.uploaded_today(uid) == 6 * 10**9
    finally:
        store.close()


def test_concurrent_claims_get_disjoint_jobs(database_url: str) -> None:
    """Two stores (two connections, as two replicas have) claim from one queue at once: every job is
    claimed exactly once."""
    setup = Store(database_url, PEPPER)
    uid, key_id = _user(setup)
    t0 = time.time()
    ids = [f"job{i:03d}" for i in range(40)]
    for i, job_id in enumerate(ids):
        setup.create_job(_job(job_id, uid, key_id, t0 + i * 1e-3))
    stores = [Store(database_url), Store(database_url)]
    barrier = threading.Barrier(2)

    def drain(n: int) -> list[str]:
        got = []
        barrier.wait(timeout=30)
        for _ in range(len(ids) + 1):  # bounded: never more claims than jobs
            job = stores[n].claim_next(f"replica{n}", 60.0, 3)
            if job is None:
                break
            assert job.status == PRE_PROCESSING and job.lease_owner == f"replica{n}" and job.attempts == 1
            got.append(job.job_id)
            time.sleep(0.005)  # a replica hands the job to a worker between claims
        return got

    try:
        with ThreadPoolExecutor(2) as pool:
            a, b = pool.map(drain, range(2))
        assert not set(a) & set(b), "a job was claimed twice"
        assert sorted(a + b) == ids and len(a + b) == len(ids)
        assert a and b, f"one claimer got everything ({len(a)} / {len(b)}): no concurrency was exercised"
        counts, queued, _ = setup.job_stats()
        assert counts == {PRE_PROCESSING: len(ids)} and queued == 0
    finally:
        for s in (*stores, setup):
            s.close()


def test_an_expired_lease_is_reclaimed_and_the_job_completes_exactly_once(database_url: str) -> None:
    setup = Store(database_url, PEPPER)
    uid, key_id = _user(setup)
    setup.create_job(_job("slow", uid, key_id, time.time()))
    dead, alive = Store(database_url), Store(database_url)
    try:
        first = dead.claim_next("dead", 0.5, 3)
        assert first is not None and first.attempts == 1
        assert alive.claim_next("alive", 30.0, 3) is None  # leased: nobody else may take it
        assert dead.update_job("slow", "dead", 0.5, progress=0.3, attempt=1)  # a renewal keeps it
        time.sleep(0.7)  # "dead" stops renewing: its lease runs out
        second = alive.claim_next("alive", 30.0, 3)
        assert second is not None and second.job_id == "slow" and second.attempts == 2
        assert second.progress == 0.0 and second.lease_owner == "alive"
        # The first worker comes back: it can neither renew nor finish the job any more.
        assert not dead.update_job("slow", "dead", 30.0, progress=0.9, attempt=1)
        assert not dead.finish_job("slow", "dead", result_blob="results/slow-dead-1", result_format="WAV",
                                   attempt=1)
        # Nor can a stale claim of the same owner (an earlier attempt).
        assert not alive.finish_job("slow", "alive", result_blob="x", result_format="WAV", attempt=1)
        assert alive.finish_job("slow", "alive", result_blob="results/slow-alive-2", result_format="WAV",
                                attempt=2)
        assert not alive.finish_job("slow", "alive", result_blob="again", result_format="WAV", attempt=2)
        job = setup.get_job("slow")
        assert job is not None and job.status == COMPLETED and job.result_blob == "results/slow-alive-2"
        assert job.lease_owner is None and job.attempts == 2
        [(_, billed, _, jobs)] = setup.usage(key_id)
        assert jobs == 1 and billed == pytest.approx(6.0)  # 3 s of stereo, billed once
        assert alive.claim_next("alive", 30.0, 3) is None
    finally:
        for s in (dead, alive, setup):
            s.close()


def test_a_job_that_keeps_losing_its_worker_fails(database_url: str) -> None:
    store = Store(database_url, PEPPER)
    try:
        uid, key_id = _user(store)
        store.create_job(_job("poison", uid, key_id, time.time()))
        for attempt in (1, 2):
            job = store.claim_next("w", 0.05, 2)
            assert job is not None and job.attempts == attempt
            time.sleep(0.1)
        assert store.claim_next("w", 0.05, 2) is None
        job = store.get_job("poison")
        assert job is not None and job.status == FAILED and job.error_code == "INTERNAL"
        assert "stopped 2 times" in (job.error_msg or "")
    finally:
        store.close()


def test_claims_take_turns_across_users(database_url: str) -> None:
    """Fair claims: user A's queue does not hold back B's job, which was submitted after all of A's and
    is claimed as soon as a worker is free; then users take turns (least recent service)."""
    store = Store(database_url, PEPPER)
    try:
        (a, ka), (b, kb), (c, kc) = _user(store), _user(store), _user(store)
        t0 = time.time()
        for i in range(4):
            store.create_job(_job(f"a{i}", a, ka, t0 + i * 1e-3))
        first = store.claim_next("w1", 60.0, 3)
        assert first is not None and first.job_id == "a0"
        store.create_job(_job("b0", b, kb, t0 + 1.0))   # the newest job of all
        second = store.claim_next("w2", 60.0, 3)
        assert second is not None and second.job_id == "b0", "B's job waited behind A's queue"
        third = store.claim_next("w3", 60.0, 3)  # only A has jobs left: a worker is never left idle
        assert third is not None and third.job_id == "a1"
        for job in (first, second, third):
            assert store.finish_job(job.job_id, job.lease_owner or "", result_blob="r", result_format="WAV",
                                    attempt=job.attempts)
        # One worker, three users with queues: they take turns.
        for i in range(1, 3):
            store.create_job(_job(f"b{i}", b, kb, t0 + 2.0 + i * 1e-3))
        store.create_job(_job("c0", c, kc, t0 + 3.0))
        order = []
        while (job := store.claim_next("w", 60.0, 3)) is not None:
            order.append(job.job_id)
            assert store.finish_job(job.job_id, "w", result_blob="r", result_format="WAV", attempt=job.attempts)
        # Least recent service: C (never served), then B (last served with b0), then A (a1), and so on.
        assert order == ["c0", "b1", "a2", "b2", "a3"], order
    finally:
        store.close()


def test_the_user_with_fewer_jobs_running_goes_first(database_url: str) -> None:
    store = Store(database_url, PEPPER)
    try:
        (a, ka), (b, kb) = _user(store), _user(store)
        t0 = time.time()
        store.create_job(_job("b0", b, kb, t0))
        store.create_job(_job("b1", b, kb, t0 + 0.001))
        running = store.claim_next("w1", 60.0, 3)
        assert running is not None and running.job_id == "b0"
        for i in range(3):
            store.create_job(_job(f"a{i}", a, ka, t0 + 1 + i * 1e-3))
        # B has a job running and A none: A goes first, although B's waiting job is older.
        got = store.claim_next("w2", 60.0, 3)
        assert got is not None and got.job_id == "a0"
        got = store.claim_next("w3", 60.0, 3)   # one running each; B was served less recently
        assert got is not None and got.job_id == "b1"
    finally:
        store.close()


def test_held_jobs_expire_unless_renewed_and_each_is_swept_once(database_url: str) -> None:
    store = Store(database_url, PEPPER)
    other = Store(database_url)   # a second replica sweeping at the same time
    try:
        (a, ka), (b, _) = _user(store), _user(store)
        now = time.time()
        for name in ("kept", "lapsed"):
            store.create_job(_job(name, a, ka, now, held=True, hold_expires=now + 1.0))
        store.create_job(_job("free", a, ka, now))   # not held: never swept
        assert store.renew_holds(a, ["kept", "free", "nope"], now + 60) == ["free", "nope"]
        assert store.renew_holds(b, ["kept"], now + 60) == ["kept"]   # another user's job is not renewed
        assert store.claim_next("w", 30.0, 3).job_id == "free"  # type: ignore[union-attr]  # held ones wait
        assert store.sweep_held(now + 0.5) == []
        with ThreadPoolExecutor(2) as pool:
            swept = list(pool.map(lambda s: s.sweep_held(now + 2.0), (store, other)))
        assert sorted(j.job_id for part in swept for j in part) == ["lapsed"]
        assert store.get_job("lapsed") is None and store.get_job("kept") is not None
        assert store.start_job("kept", None, False)
        assert store.sweep_held(now + 120) == []   # started: no longer held
        assert store.renew_holds(a, ["kept"], now + 60) == ["kept"]
    finally:
        other.close()
        store.close()


def test_idempotency_keys_reserve_fill_lapse_and_expire(database_url: str) -> None:
    store = Store(database_url, PEPPER)
    other = Store(database_url)   # another replica
    try:
        (a, ka), (b, _) = _user(store), _user(store)
        now = time.time()
        first = store.reserve_key(a, "k", now, 60.0, 3)
        assert first.reply is None and first.token
        with pytest.raises(IdempotencyConflict):   # the first request still runs, whichever replica asks
            other.reserve_key(a, "k", now + 1, 60.0, 3)
        assert other.reserve_key(b, "k", now, 60.0, 3).reply is None   # keys are per user
        store.create_job(_job("j1", a, ka, now, held=True, hold_expires=now + 60))
        assert store.start_jobs(a, ["j1", "nope"], None, False, ("k", first.token, "f" * 64, b"{}", now + 86400)) \
            == ["nope"]   # all or none: nothing started, nothing stored
        assert store.get_job("j1").held  # type: ignore[union-attr]
        with pytest.raises(IdempotencyConflict):   # a token that is not the reservation's
            store.start_jobs(a, ["j1"], 6.0, True, ("k", "stolen", "f" * 64, b"{}", now + 86400))
        assert store.get_job("j1").held  # type: ignore[union-attr]  # rolled back
        assert store.start_jobs(a, ["j1"], 6.0, True, ("k", first.token, "f" * 64, b'{"a":"j1"}', now + 86400)) == []
        job = store.get_job("j1")
        assert job is not None and not job.held and job.attenuation_limit_db == 6.0
        done = other.reserve_key(a, "k", now + 2, 60.0, 3)
        assert (done.reply, done.request_sha256, done.job_ids) == (b'{"a":"j1"}', "f" * 64, ["j1"])
        # A lapsed reservation (its request died) is replaced; a released one is gone.
        lapsed = store.reserve_key(a, "dead", now, 1.0, 3)
        assert store.reserve_key(a, "dead", now + 2, 60.0, 3).token != lapsed.token
        with pytest.raises(TooManyKeys):   # a holds 2 live keys (k, dead): a third is over a cap of 2
            store.reserve_key(a, "x", now + 2, 60.0, 2)
        store.release_key(a, "dead", "not-the-token")
        with pytest.raises(IdempotencyConflict):
            store.reserve_key(a, "dead", now + 3, 60.0, 3)
        assert store.sweep_keys(now + 3600) == 2   # the lapsed reservations of a/dead and b/k
        assert store.reserve_key(a, "k", now + 3600, 60.0, 3).reply == b'{"a":"j1"}'   # kept 24 h
        assert store.sweep_keys(now + 86401) >= 1
        assert store.reserve_key(a, "k", now + 86401, 60.0, 3).reply is None   # forgotten after 24 h
    finally:
        other.close()
        store.close()


def test_requeue_returns_one_owners_jobs(database_url: str) -> None:
    store = Store(database_url, PEPPER)
    try:
        uid, key_id = _user(store)
        for i in range(3):
            store.create_job(_job(f"r{i}", uid, key_id, time.time() + i))
        assert store.claim_next("a", 30.0, 3) is not None
        assert store.claim_next("b", 30.0, 3) is not None
        assert store.requeue("a") == 1
        counts, queued, _ = store.job_stats()
        assert counts == {PENDING: 2, PRE_PROCESSING: 1} and queued == 2
        held = store.get_job("r1")
        assert held is not None and held.lease_owner == "b"
    finally:
        store.close()


def test_unusable_database_urls_are_clear_errors(tmp_path: object) -> None:
    with pytest.raises(StoreError, match="unsupported database URL 'mysql://u:\\*\\*\\*@h/db'"):
        Store("mysql://u:secret@h/db")
