"""TLS for the gRPC server: credentials whose certificate is re-read while the server runs.

``hushwire serve --tls-cert FILE --tls-key FILE`` serves gRPC over TLS only (a plaintext client
fails its handshake); with ``--tls-client-ca FILE`` a client must also present a certificate signed
by that CA (mutual TLS), and its subject is logged with each stream and job (:func:`peer_subject`).

Rotation is routine, so the files are watched: grpc core asks :class:`CertificateReloader` for the
current configuration before every new TLS handshake (``grpc.dynamic_ssl_server_credentials``).
It answers with a new configuration when the files' size, mtime or inode changed, or after
:meth:`CertificateReloader.reload_now` (``serve`` calls it on SIGHUP); otherwise with ``None``,
which keeps the one in use. Open connections, and the streams on them, keep the certificate they
were made with; new connections get the new one. A pair that does not load (a key that does not
match its certificate, a file caught half-written) is logged and the previous one stays in use,
so a botched rotation never takes the server off the air; it is tried again on the next change.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from dataclasses import dataclass

import grpc

__all__ = ["CertificateReloader", "TLSFiles", "peer_subject"]

log = logging.getLogger("hushwire.server")


@dataclass(frozen=True)
class TLSFiles:
    """The server's TLS files (PEM): certificate chain, its key, and the client CA for mutual TLS."""

    cert: str
    key: str
    client_ca: str | None = None


def _stamp(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


class CertificateReloader:
    """The files' current contents as grpc server certificate configurations (see the module docstring)."""

    def __init__(self, files: TLSFiles) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._forced = False
        try:
            self._stamps = self._read_stamps()
        except OSError as exc:
            raise ValueError(f"cannot read the TLS file {exc.filename}: {exc.strerror}") from None
        self.initial = self._load()   # raises ValueError: a bad pair at start-up is a configuration error
        self.loads = 1

    def _paths(self) -> list[str]:
        return [p for p in (self.files.cert, self.files.key, self.files.client_ca) if p is not None]

    def _read_stamps(self) -> list[tuple[int, int, int]]:
        return [_stamp(p) for p in self._paths()]

    def _load(self) -> grpc.ServerCertificateConfiguration:
        """Read and check the files; ValueError when they cannot be used."""
        try:
            # The ssl module checks what grpc would only find at the next handshake: PEM syntax and
            # that the key belongs to the certificate.
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(self.files.cert, self.files.key)
            with open(self.files.cert, "rb") as f:
                chain = f.read()
            with open(self.files.key, "rb") as f:
                key = f.read()
            ca = None
            if self.files.client_ca is not None:
                ssl.create_default_context(cafile=self.files.client_ca)
                with open(self.files.client_ca, "rb") as f:
                    ca = f.read()
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot use the TLS files {', '.join(self._paths())}: {exc}") from None
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=ca)

    def reload_now(self) -> None:
        """Make the next handshake re-read the files even if they look unchanged (SIGHUP)."""
        with self._lock:
            self._forced = True

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        """grpc's fetcher: a new configuration when the files changed, else None (keep the current one).
        Runs in a grpc core thread before each new handshake, so it must never raise."""
        with self._lock:
            try:
                stamps = self._read_stamps()
            except OSError as exc:   # a file moved away mid-rotation: keep serving the old pair
                log.warning("TLS files unreadable (%s); keeping the current certificate", exc)
                return None
            if stamps == self._stamps and not self._forced:
                return None
            self._stamps, self._forced = stamps, False
            try:
                config = self._load()
            except ValueError as exc:
                log.warning("%s; keeping the current certificate", exc)
                return None
            self.loads += 1
            log.info("TLS certificate reloaded from %s", self.files.cert)
            return config

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(self.initial, self,
                                                   require_client_authentication=self.files.client_ca is not None)


def peer_subject(context: grpc.aio.ServicerContext) -> str | None:
    """The subject of the client's certificate (mutual TLS), e.g. ``CN=svc-a,O=Example``; None without one."""
    try:
        auth = context.auth_context()
    except Exception:   # noqa: BLE001 (no transport security at all)
        return None
    for key in ("x509_subject", "x509_common_name"):
        values = auth.get(key)
        if values:
            return bytes(values[0]).decode("utf-8", "replace")
    return None
