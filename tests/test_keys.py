"""Users and keys: the store, the ``keys`` commands, and revocation seen by a running server, on each
database (``database_url``: SQLite and a real PostgreSQL)."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import grpc
import pytest
from conftest import create_key, free_port, run_cli, start_server

from client import EnhancerClient, HushwireClientError
from server.store import SecretMismatch, Store, StoreError

PEPPER = b"test-pepper"


def _database_bytes(database_url: str) -> bytes:
    """Everything the database holds: the SQLite files, or a dump of the PostgreSQL tables."""
    if database_url.startswith("sqlite://"):
        path = Path(database_url[len("sqlite://"):])
        return b"".join(f.read_bytes() for f in path.parent.glob(path.name + "*"))
    import psycopg

    with psycopg.connect(database_url) as con:
        rows = [r for t in ("users", "api_keys", "jobs", "usage")
                for r in con.execute(f"SELECT * FROM {t}").fetchall()]
    return b"".join(v if isinstance(v, bytes) else str(v).encode() for r in rows for v in r)


def test_store_keeps_only_peppered_hashes(database_url: str) -> None:
    store = Store(database_url, PEPPER)
    uid = store.create_user("ann")
    key_id, key = store.create_key(uid)
    p = store.authenticate(key)
    assert p is not None and (p.uid, p.key_id, p.name) == (uid, key_id, "ann")
    assert store.authenticate(key + "x") is None
    assert store.authenticate("") is None
    store.close()
    raw = _database_bytes(database_url)
    assert b"ann" in raw  # the dump does see the rows
    assert key.encode() not in raw
    assert hashlib.sha256(key.encode()).digest() not in raw  # keyed: the database alone can't test guesses
    with pytest.raises(SecretMismatch, match="^the key pepper .* differs from the one the database"):
        Store(database_url, b"another pepper")   # keys hashed with one pepper are not checked with another


def test_replicas_first_started_at_once_with_different_secrets_do_not_both_record(database_url: str) -> None:
    """Replicas started together on a fresh database: one secret is recorded, every other one is refused."""
    import threading

    replicas = 6
    stores = [Store(database_url, PEPPER) for _ in range(replicas)]
    try:
        for round_ in range(5):   # a fresh secret name per round: each is a first start
            name = f"race-{round_}"
            barrier = threading.Barrier(replicas)
            outcomes: list[str] = []

            def start(i: int, name: str = name, barrier: threading.Barrier = barrier,
                      outcomes: list[str] = outcomes) -> None:
                barrier.wait()
                try:
                    outcomes.append(stores[i].check_secret(name, f"secret {i}".encode()))
                except SecretMismatch:
                    outcomes.append("refused")

            threads = [threading.Thread(target=start, args=(i,)) for i in range(replicas)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert sorted(outcomes) == ["recorded"] + ["refused"] * (replicas - 1), (round_, outcomes)
    finally:
        for store in stores:
            store.close()


def test_legacy_sha256_keys_still_work_and_are_upgraded(tmp_path: Path) -> None:
    # SQLite only: unpeppered keys date from schema 1-2, before PostgreSQL was supported.
    store = Store(tmp_path / "db.sqlite", PEPPER)
    uid = store.create_user("old")
    key = "hw_" + "x" * 32
    con = sqlite3.connect(tmp_path / "db.sqlite")
    con.execute("INSERT INTO api_keys (uid, key_hash, created_at, scheme) VALUES (?, ?, 0, 'sha256')",
                (uid, hashlib.sha256(key.encode()).digest()))
    con.commit()
    p = store.authenticate(key)
    assert p is not None and p.uid == uid
    assert con.execute("SELECT scheme FROM api_keys").fetchall() == [("hmac",)]
    assert store.authenticate(key) is not None


def test_rotation_and_revocation(database_url: str) -> None:
    store = Store(database_url, PEPPER)
    uid = store.create_user("bo")
    k1_id, k1 = store.create_key(uid)
    _, k2 = store.create_key(uid)
    store.revoke_key(k1_id)
    assert store.authenticate(k1) is None
    p2 = store.authenticate(k2)
    assert p2 is not None and p2.uid == uid
    with pytest.raises(StoreError):
        store.revoke_key(999)
    with pytest.raises(StoreError):
        store.create_key(999)
    store.close()


def test_keys_cli_contract(tmp_path: Path, database_url: str) -> None:
    where = ("--data-dir", str(tmp_path), "--database-url", database_url)
    out = run_cli("keys", "create", "--name", "carol", *where)
    key = out.stdout.strip().splitlines()[-1]
    assert key.startswith("hw_") and len(key) > 30
    assert "key_id=1 uid=1 name=carol" in out.stderr
    out2 = run_cli("keys", "create", "--user", "1", *where)
    assert "key_id=2 uid=1 name=carol" in out2.stderr
    listing = run_cli("keys", "list", *where).stdout
    assert "carol" in listing and key not in listing and listing.count("active") == 2
    run_cli("keys", "revoke", "1", *where)
    assert "revoked" in run_cli("keys", "list", *where).stdout
    bad = run_cli("keys", "revoke", "42", *where, check=False)
    assert bad.returncode == 2 and "no key with id 42" in bad.stderr and "Traceback" not in bad.stderr
    bad = run_cli("keys", "create", "--user", "7", *where, check=False)
    assert bad.returncode == 2 and "no user with uid 7" in bad.stderr
    assert not (tmp_path / "hushwire.db").exists()  # the URL was used, not the data dir's default
    store = Store(database_url, (tmp_path / "key_pepper").read_bytes().strip())
    try:
        p = store.authenticate(out2.stdout.strip().splitlines()[-1])
        assert p is not None and (p.key_id, p.uid, p.name) == (2, 1, "carol")
        assert store.authenticate(key) is None  # revoked
    finally:
        store.close()


def test_keys_follow_env_and_database_url(tmp_path: Path, database_url: str) -> None:
    import os

    env = dict(os.environ, HUSHWIRE_DATABASE_URL=database_url)
    run_cli("keys", "create", "--name", "dan", "--data-dir", str(tmp_path / "unused"), env=env)
    assert not (tmp_path / "unused" / "hushwire.db").exists()
    if database_url.startswith("sqlite://"):
        assert Path(database_url[len("sqlite://"):]).exists()
    store = Store(database_url)
    try:
        assert [k.name for k in store.list_keys()] == ["dan"]
    finally:
        store.close()


def test_unreachable_database_is_one_clear_line(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql://hushwire:s3cret@127.0.0.1:{port}/hushwire"
    for args in (["keys", "list"], ["keys", "create", "--name", "x"], ["serve", "--port", "0"]):
        out = run_cli(*args, "--data-dir", str(tmp_path), "--database-url", url, check=False)
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hushwire: cannot connect to the database"), out.stderr
        assert f"127.0.0.1:{port}" in lines[0] and "s3cret" not in lines[0] and "Traceback" not in out.stderr
    bad = run_cli("keys", "list", "--data-dir", str(tmp_path), "--database-url", "mysql://h/db", check=False)
    assert bad.returncode == 2 and "unsupported database URL" in bad.stderr and "Traceback" not in bad.stderr


def test_a_postgresql_url_without_the_driver_says_what_to_install(tmp_path: Path) -> None:
    import subprocess
    import sys

    from conftest import ROOT

    hide_psycopg = ("import sys; sys.modules['psycopg'] = None; from cli.main import main; "
                    f"sys.exit(main(['keys', 'list', '--data-dir', {str(tmp_path)!r}, "
                    "'--database-url', 'postgresql://u@127.0.0.1:5432/db']))")
    out = subprocess.run([sys.executable, "-c", hide_psycopg], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip() == ("hushwire: a postgresql:// database URL needs the psycopg driver: "
                                  "pip install 'hushwire[scale]'")


def test_revocation_takes_effect_at_once(tmp_path: Path, database_url: str) -> None:
    key = create_key(tmp_path, "--name", "eve", "--database-url", database_url)
    srv = start_server(tmp_path, "--database-url", database_url)
    try:
        import numpy as np

        with EnhancerClient(srv.target, key) as c:
            c.enhance(np.zeros(1600, np.float32), 16000)
            run_cli("keys", "revoke", "1", "--data-dir", str(tmp_path), "--database-url", database_url)
            with pytest.raises(HushwireClientError) as info:
                c.enhance(np.zeros(1600, np.float32), 16000)
            assert info.value.status == grpc.StatusCode.UNAUTHENTICATED
    finally:
        assert srv.stop() == 0
