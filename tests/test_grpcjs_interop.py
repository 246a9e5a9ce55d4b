"""grpc-js interop over TLS (issue #19): a Node client made from the .proto files and the CA alone.

``tests/interop/grpcjs_client.js`` loads ``protos/hushwire/v1/*.proto`` with @grpc/proto-loader and
talks to a real ``hushwire serve --tls-cert ... --tls-client-ca ...`` with @grpc/grpc-js, presenting
a client certificate: Account.WhoAmI, then a whole live stream. The npm packages are installed into a
temp dir from ``tests/interop/package.json`` (Node 18+ and npm needed; CI installs them: .ci/run).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, ServerProcess, create_key, start_server
from tls_fixtures import PKI, pki  # noqa: F401  (fixture)

INTEROP = ROOT / "tests" / "interop"
NODE, NPM = shutil.which("node"), shutil.which("npm")
CHUNKS, CHUNK = 50, 320

pytestmark = pytest.mark.slow   # an npm install and a Node process


@pytest.fixture(scope="module")
def node_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if NODE is None or NPM is None:
        pytest.skip("node and npm are not installed (apt-get install nodejs npm)")
    work = tmp_path_factory.mktemp("grpcjs")
    for name in ("package.json", "grpcjs_client.js"):
        shutil.copyfile(INTEROP / name, work / name)
    out = subprocess.run([NPM, "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=work,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"npm install failed:\n{out.stdout}{out.stderr}"
    return work / "grpcjs_client.js"


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, pki: PKI) -> Iterator[ServerProcess]:  # noqa: F811
    srv = start_server(tmp_path_factory.mktemp("grpcjs-data"), "--workers", "0", "--tls-cert", str(pki.server.cert),
                       "--tls-key", str(pki.server.key), "--tls-client-ca", str(pki.ca.path))
    yield srv
    assert srv.stop() == 0, srv.log


def _run(node_client: Path, srv: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    assert NODE is not None
    return subprocess.run([NODE, str(node_client), srv.target, str(ROOT / "protos"), *args], capture_output=True,
                          text=True, timeout=60, cwd=node_client.parent)


def test_a_grpcjs_client_streams_over_mutual_tls(node_client: Path, mtls_server: ServerProcess,
                                                 pki: PKI) -> None:  # noqa: F811
    key = create_key(mtls_server.data_dir, "--name", "node")
    out = _run(node_client, mtls_server, str(pki.ca.path), key, str(pki.client.cert), str(pki.client.key))
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout.strip().splitlines()[-1])
    assert reply["name"] == "node" and reply["uid"] > 0, reply
    assert reply["delay"] > 0 and reply["samples_out"] == CHUNKS * CHUNK + reply["delay"], reply
    assert 0 <= reply["vp_max"] <= 1
    # The same client trusting another CA, or without its certificate, gets nowhere.
    for args in ([str(pki.wrong_ca.path), key, str(pki.client.cert), str(pki.client.key)], [str(pki.ca.path), key]):
        refused = _run(node_client, mtls_server, *args)
        assert refused.returncode == 1 and "WhoAmI: 14" in refused.stderr, refused.stderr   # 14: UNAVAILABLE
