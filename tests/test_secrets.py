"""Secrets shared by every process on one database (issue #18, item 7): the database records a
fingerprint of the key pepper and of the signing secret when it first sees them; a replica or a
``hushwire keys`` with another one stops at start with one line naming the secret. Rotation: the
new secret with the old one as "previous" retires the old one; old result URLs keep working for
their lifetime, and keys hashed with the old pepper are re-hashed when next used."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import run_cli, start_server

from client import HushwireClientError, JobsClient
from client.jobs import STATUS_NAMES

pytestmark = pytest.mark.slow   # several server starts each


def _env(pepper: str, signing: str, **previous: str) -> dict[str, str]:
    env = dict(os.environ, HUSHWIRE_KEY_PEPPER=pepper, HUSHWIRE_SIGNING_SECRET=signing)
    env.pop("HUSHWIRE_KEY_PEPPER_PREVIOUS", None)
    env.pop("HUSHWIRE_SIGNING_SECRET_PREVIOUS", None)
    env.update({f"HUSHWIRE_{k.upper()}_PREVIOUS": v for k, v in previous.items()})
    return env


def _refused(args: list[str], env: dict[str, str], secret: str) -> str:
    """Run a command that must stop at start because of ``secret``; returns its one error line."""
    proc = run_cli(*args, env=env, check=False, timeout=60)
    lines = [ln for ln in proc.stderr.splitlines() if "differs" in ln]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"hushwire: the {secret} (") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def _serve(data_dir: Path, database_url: str) -> list[str]:
    return ["serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data_dir), "--database-url",
            database_url, "--workers", "1"]


def _keys(data_dir: Path, database_url: str, *cmd: str) -> list[str]:
    return ["keys", *cmd, "--data-dir", str(data_dir), "--database-url", database_url]


def test_a_replica_or_keys_with_another_secret_stops_at_start(tmp_path: Path, database_url: str) -> None:
    p1, s1 = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    key = run_cli(*_keys(tmp_path / "a", database_url, "create"), env=_env(p1, s1)).stdout.split()[-1]
    (tmp_path / "a").mkdir()
    a = start_server(tmp_path / "a", "--database-url", database_url, env=_env(p1, s1))
    try:
        b = tmp_path / "b"   # another machine: its own data dir, secrets from configuration
        line = _refused(_serve(b, database_url), _env(secrets.token_urlsafe(32), s1), "key pepper")
        assert p1 not in line and "HUSHWIRE_KEY_PEPPER" in line
        line = _refused(_serve(b, database_url), _env(p1, secrets.token_urlsafe(32)), "signing secret")
        assert s1 not in line and "HUSHWIRE_SIGNING_SECRET" in line
        _refused(_keys(b, database_url, "create"), _env("wrong", s1), "key pepper")
        _refused(_keys(b, database_url, "list"), _env("wrong", s1), "key pepper")
        # Nothing was changed by the refused ones: the first replica and its key carry on.
        with JobsClient(a.target, key) as c:
            assert list(c.list()) == []
        run_cli(*_keys(b, database_url, "list"), env=_env(p1, "the keys command does not sign"))
    finally:
        assert a.stop() == 0, a.log


def test_rotating_the_signing_secret_keeps_old_urls_for_their_lifetime(tmp_path: Path) -> None:
    db = f"sqlite://{tmp_path / 'db' / 'hushwire.db'}"
    pepper, old, new = (secrets.token_urlsafe(32) for _ in range(3))
    key = run_cli(*_keys(tmp_path, db, "create"), env=_env(pepper, old)).stdout.split()[-1]
    src = tmp_path / "a.wav"
    sf.write(str(src), np.zeros(8000, np.float32), 16000)
    srv = start_server(tmp_path, "--database-url", db, env=_env(pepper, old))
    try:
        with JobsClient(srv.target, key) as c:
            job = c.wait(c.submit(src).job_id, timeout=60)
            assert STATUS_NAMES[job.status] == "completed"
            old_token = job.result.token
    finally:
        assert srv.stop() == 0
    srv = start_server(tmp_path, "--database-url", db, env=_env(pepper, new, signing_secret=old))
    try:
        assert "signing secret rotated in the database" in srv.log
        with JobsClient(srv.target, None) as anon:
            anon.download(job.job_id, token=old_token)   # signed with the old secret: still good
        with JobsClient(srv.target, key) as c:
            new_token = c.get(job.job_id).result.token
        assert new_token != old_token
    finally:
        assert srv.stop() == 0
    # The old secret is retired: a replica still configured with it stops at start.
    line = _refused(_serve(tmp_path / "stale", db), _env(pepper, old), "signing secret")
    assert "retired by a rotation" in line
    srv = start_server(tmp_path, "--database-url", db, env=_env(pepper, new))   # the rotation is over
    try:
        with JobsClient(srv.target, None) as anon:
            anon.download(job.job_id, token=new_token)
            with pytest.raises(HushwireClientError) as info:
                anon.download(job.job_id, token=old_token)
            assert info.value.code == "JOB_NOT_FOUND"
    finally:
        assert srv.stop() == 0


def test_rotating_the_key_pepper_rehashes_keys_on_use(tmp_path: Path, database_url: str) -> None:
    old, new, signing = (secrets.token_urlsafe(32) for _ in range(3))
    used = run_cli(*_keys(tmp_path, database_url, "create"), env=_env(old, signing)).stdout.split()[-1]
    idle = run_cli(*_keys(tmp_path, database_url, "create"), env=_env(old, signing)).stdout.split()[-1]
    srv = start_server(tmp_path, "--database-url", database_url, env=_env(new, signing, key_pepper=old))
    try:
        assert "key pepper rotated in the database" in srv.log
        with JobsClient(srv.target, used) as c:   # hashed with the old pepper: works, and is re-hashed
            assert list(c.list()) == []
        listing = run_cli(*_keys(tmp_path, database_url, "list"), env=_env(new, signing, key_pepper=old)).stdout
        status = {line.split()[0]: line for line in listing.splitlines()[1:]}
        assert "previous pepper" not in status["1"] and "previous pepper" in status["2"], listing
        _refused(_keys(tmp_path / "stale", database_url, "list"), _env(old, signing), "key pepper")
    finally:
        assert srv.stop() == 0
    srv = start_server(tmp_path, "--database-url", database_url, env=_env(new, signing))
    try:
        with JobsClient(srv.target, used) as c:
            assert list(c.list()) == []
        with JobsClient(srv.target, idle) as c, pytest.raises(HushwireClientError) as info:
            c.list().__next__()   # never used during the rotation: still on the retired pepper
        assert info.value.code == "API_KEY_NOT_FOUND"
    finally:
        assert srv.stop() == 0
