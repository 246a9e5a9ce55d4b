"""Users and keys: the store, the ``keys`` commands, and revocation seen by a running server."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import grpc
import pytest
from conftest import create_key, run_cli, start_server

from client import EnhancerClient, HushwireClientError
from server.store import Store, StoreError

PEPPER = b"test-pepper"


def test_store_keeps_only_peppered_hashes(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite", PEPPER)
    uid = store.create_user("ann")
    key_id, key = store.create_key(uid)
    p = store.authenticate(key)
    assert p is not None and (p.uid, p.key_id, p.name) == (uid, key_id, "ann")
    assert store.authenticate(key + "x") is None
    assert store.authenticate("") is None
    store.close()
    raw = (tmp_path / "db.sqlite").read_bytes() + b"".join(
        f.read_bytes() for f in tmp_path.glob("db.sqlite-*"))
    assert key.encode() not in raw
    assert hashlib.sha256(key.encode()).digest() not in raw  # keyed: the database alone can't test guesses
    assert Store(tmp_path / "db.sqlite", b"another pepper").authenticate(key) is None


def test_legacy_sha256_keys_still_work_and_are_upgraded(tmp_path: Path) -> None:
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


def test_rotation_and_revocation(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite", PEPPER)
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


def test_keys_cli_contract(tmp_path: Path) -> None:
    out = run_cli("keys", "create", "--name", "carol", "--data-dir", str(tmp_path))
    key = out.stdout.strip().splitlines()[-1]
    assert key.startswith("hw_") and len(key) > 30
    assert "key_id=1 uid=1 name=carol" in out.stderr
    out2 = run_cli("keys", "create", "--user", "1", "--data-dir", str(tmp_path))
    assert "key_id=2 uid=1 name=carol" in out2.stderr
    listing = run_cli("keys", "list", "--data-dir", str(tmp_path)).stdout
    assert "carol" in listing and key not in listing and listing.count("active") == 2
    run_cli("keys", "revoke", "1", "--data-dir", str(tmp_path))
    assert "revoked" in run_cli("keys", "list", "--data-dir", str(tmp_path)).stdout
    bad = run_cli("keys", "revoke", "42", "--data-dir", str(tmp_path), check=False)
    assert bad.returncode == 2 and "no key with id 42" in bad.stderr and "Traceback" not in bad.stderr
    bad = run_cli("keys", "create", "--user", "7", "--data-dir", str(tmp_path), check=False)
    assert bad.returncode == 2 and "no user with uid 7" in bad.stderr


def test_keys_follow_env_and_database_url(tmp_path: Path) -> None:
    import os

    env = dict(os.environ, HUSHWIRE_DATABASE_URL=f"sqlite://{tmp_path}/other.db")
    run_cli("keys", "create", "--name", "dan", "--data-dir", str(tmp_path / "unused"), env=env)
    assert (tmp_path / "other.db").exists()
    con = sqlite3.connect(tmp_path / "other.db")
    assert con.execute("SELECT name FROM users").fetchall() == [("dan",)]


def test_revocation_takes_effect_at_once(tmp_path: Path) -> None:
    key = create_key(tmp_path, "--name", "eve")
    srv = start_server(tmp_path)
    try:
        import numpy as np

        with EnhancerClient(srv.target, key) as c:
            c.enhance(np.zeros(1600, np.float32), 16000)
            run_cli("keys", "revoke", "1", "--data-dir", str(tmp_path))
            with pytest.raises(HushwireClientError) as info:
                c.enhance(np.zeros(1600, np.float32), 16000)
            assert info.value.status == grpc.StatusCode.UNAUTHENTICATED
    finally:
        assert srv.stop() == 0
