"""A throwaway certificate authority for the TLS tests, made with the ``cryptography`` package.

``pki`` (module scope) holds a CA and the certificates the tests need, as PEM files in a temp dir:
a server certificate for ``127.0.0.1``/``localhost`` (and the replicas' shared name), a client
certificate, and a second, unrelated CA (the "wrong CA"). :meth:`CA.issue` makes more, e.g. the
certificate a rotation installs.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

x509 = pytest.importorskip("cryptography.x509", reason="cryptography is not installed (pip install -e '.[test]')")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

__all__ = ["CA", "PKI", "REPLICA_NAME", "Leaf", "deploy_tls_dir", "pki"]

# The name every replica's certificate carries, which the balancers check (deploy/ configs).
REPLICA_NAME = "replicas.hushwire.internal"
_DAY = datetime.timedelta(days=1)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hushwire tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass(frozen=True)
class Leaf:
    """A certificate and its key as PEM files, plus what tests compare."""

    cert: Path
    key: Path
    der: bytes
    subject: str            # RFC 4514, as grpc reports it (e.g. "CN=svc-a,O=hushwire tests")

    @property
    def spki_sha256_b64(self) -> str:
        """Base64 SHA-256 of the public key info (Chromium's --ignore-certificate-errors-spki-list)."""
        cert = x509.load_der_x509_certificate(self.der)
        spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(hashlib.sha256(spki).digest()).decode()

    def install(self, cert: Path, key: Path) -> None:
        """Copy this pair over ``cert`` and ``key`` (what an operator's rotation does)."""
        shutil.copyfile(self.key, key)
        shutil.copyfile(self.cert, cert)

    def pem_bundle(self, path: Path) -> Path:
        """Certificate and key in one PEM file (HAProxy's ``crt``)."""
        path.write_bytes(self.cert.read_bytes() + self.key.read_bytes())
        return path


class CA:
    def __init__(self, directory: Path, name: str) -> None:
        self.dir = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.name = _name(name)
        self.cert = (
            x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY).not_valid_after(now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = directory / f"{name.replace(' ', '-')}.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, file_stem: str, cn: str, *, dns: Sequence[str] = ("localhost",),
              ips: Sequence[str] = ("127.0.0.1",), client: bool = False) -> Leaf:
        """A leaf certificate signed by this CA: a server's (with those names) or, with ``client``, a client's."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY).not_valid_after(now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client
                                                  else ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        )
        if not client:
            names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
            names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path, key_path = self.dir / f"{file_stem}.crt", self.dir / f"{file_stem}.key"
        key_path.write_bytes(_pem_key(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return Leaf(cert_path, key_path, cert.public_bytes(serialization.Encoding.DER), cert.subject.rfc4514_string())


@dataclass
class PKI:
    ca: CA
    server: Leaf        # 127.0.0.1, localhost and REPLICA_NAME
    client: Leaf        # CN=svc-a
    wrong_ca: CA        # trusts nothing of the above


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PKI]:
    d = tmp_path_factory.mktemp("pki")
    ca = CA(d, "hushwire test CA")
    yield PKI(ca, ca.issue("server", "hushwire server", dns=("localhost", REPLICA_NAME)),
              ca.issue("client", "svc-a", client=True), CA(d, "wrong CA"))


def deploy_tls_dir(pki: PKI, directory: Path) -> Leaf:
    """The files the deploy/ configs with TLS read from ``/etc/hushwire/tls/``, written to ``directory``:
    the balancer's certificate (for 127.0.0.1), its client certificate towards the replicas (returned:
    its subject is what the replicas log), and the CA of the replicas' certificates."""
    directory.mkdir(parents=True, exist_ok=True)
    front = pki.ca.issue("balancer-front", "hushwire balancer")
    client = pki.ca.issue("balancer-client-leaf", "hushwire balancer", client=True)
    for name, leaf in (("balancer", front), ("balancer-client", client)):
        shutil.copyfile(leaf.cert, directory / f"{name}.crt")
        shutil.copyfile(leaf.key, directory / f"{name}.key")
        leaf.pem_bundle(directory / f"{name}.pem")
    shutil.copyfile(pki.ca.path, directory / "ca.pem")
    return client
