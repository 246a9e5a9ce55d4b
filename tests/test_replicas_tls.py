"""TLS to the replicas behind a balancer (issue #19): the shipped ``deploy/haproxy/grpc-tls.cfg`` and
``deploy/nginx/grpc-tls.conf`` run for real, in front of two ``hushwire serve`` replicas that speak TLS
only and require client certificates. Clients talk TLS to the balancer, which opens its own TLS to
the replicas with its own client certificate (re-encryption); health checks stay on the plain mirror.

The configs are the files in ``deploy/`` with only loopback addresses and the tests' certificate folder
swapped in (tests/replica_fixtures.py), so these prove the shipped shape works.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from replica_fixtures import DEPLOY, HAPROXY, Cluster, StoreURLs, render_haproxy, start_cluster, start_nginx
from tls_fixtures import PKI, Leaf, deploy_tls_dir, pki  # noqa: F401  (fixture)

from client import EnhancerClient, HushwireClientError, JobsClient
from client.jobs import STATUS_NAMES

pytestmark = pytest.mark.slow

RATE = 16000


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory, pki: PKI) -> tuple[Path, Leaf]:  # noqa: F811
    d = tmp_path_factory.mktemp("deploy-tls")
    return d, deploy_tls_dir(pki, d)


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory, pki: PKI,  # noqa: F811
                tls_dir: tuple[Path, Leaf]) -> Iterator[Cluster]:
    if HAPROXY is None:
        pytest.skip("haproxy is not installed (Debian: apt-get install haproxy)")
    work = tmp_path_factory.mktemp("tls-cluster")
    stores = StoreURLs(f"sqlite:///{work}/shared.db", f"file://{work}/blobs")
    c = start_cluster(work, stores, "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key),
                      "--tls-client-ca", str(pki.ca.path), haproxy_cfg=DEPLOY / "grpc-tls.cfg", tls_dir=tls_dir[0])
    yield c
    c.stop()


def _subjects(c: Cluster, event: str) -> list[str]:
    return [str(e.get("client_subject")) for r in c.replicas for e in r.events(event)]


def _stream_and_job(target: str, c: Cluster, pki: PKI, tmp_path: Path) -> None:  # noqa: F811
    x = (np.random.default_rng(0).standard_normal(RATE // 2) * 0.05).astype(np.float32)
    with EnhancerClient(target, c.key, tls_ca=str(pki.ca.path)) as client:
        assert client.enhance(x, RATE).shape == x.shape
    src = tmp_path / "in.wav"
    sf.write(str(src), x, RATE)
    with JobsClient(target, c.key, tls_ca=str(pki.ca.path)) as jobs:
        job_id = jobs.submit(src).job_id
        done = jobs.wait(job_id, timeout=120)
        assert STATUS_NAMES[done.status] == "completed", done
        _, data = jobs.download(job_id)
    assert isinstance(data, bytes) and sf.info(io.BytesIO(data)).frames == x.shape[0]


def test_the_tls_configs_are_valid(tmp_path: Path, tls_dir: tuple[Path, Leaf]) -> None:
    import subprocess

    if HAPROXY is None:
        pytest.skip("haproxy is not installed (Debian: apt-get install haproxy)")
    cfg = tmp_path / "grpc-tls.cfg"
    cfg.write_text(render_haproxy(DEPLOY / "grpc-tls.cfg", 50051, [("replica1", 50052, 8081)], tmp_path / "s.sock",
                                  tls_dir[0]))
    out = subprocess.run([str(HAPROXY), "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr


def test_through_haproxy_with_tls_to_the_replicas(tls_cluster: Cluster, pki: PKI,  # noqa: F811
                                                  tls_dir: tuple[Path, Leaf], tmp_path: Path) -> None:
    assert tls_cluster.lb is not None
    # The checks reach the plain mirrors (both replicas UP: start_cluster waited for it), and a
    # plaintext client is refused by the balancer.
    with EnhancerClient(tls_cluster.lb.target, tls_cluster.key, connect_timeout=2) as plain, \
            pytest.raises(HushwireClientError):
        plain.enhance(np.zeros(160, np.float32), RATE)
    _stream_and_job(tls_cluster.lb.target, tls_cluster, pki, tmp_path)
    # The replicas saw the balancer's client certificate.
    balancer = tls_dir[1].subject
    assert _subjects(tls_cluster, "stream opened") and set(_subjects(tls_cluster, "stream opened")) == {balancer}
    assert set(_subjects(tls_cluster, "job submitted")) == {balancer}


def test_through_nginx_with_tls_to_the_replicas(tls_cluster: Cluster, pki: PKI,  # noqa: F811
                                                tls_dir: tuple[Path, Leaf], tmp_path: Path) -> None:
    before = _subjects(tls_cluster, "stream opened")
    lb = start_nginx(tls_cluster, DEPLOY.parent / "nginx" / "grpc-tls.conf", tls_dir[0])
    try:
        _stream_and_job(lb.target, tls_cluster, pki, tmp_path)
    finally:
        lb.stop()
    after = _subjects(tls_cluster, "stream opened")
    assert len(after) == len(before) + 1 and set(after) == {tls_dir[1].subject}
