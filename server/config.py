"""The server's configuration: :class:`ServerConfig`, built by the CLI from the one settings table
(:mod:`hushwire.settings`, which resolves flags, environment, config file and defaults).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hushwire.contract.keepalive import KEEPALIVE_INTERVAL_S
from hushwire.settings import ConfigError, default

__all__ = ["ConfigError", "ServerConfig", "cores", "one_blas_thread"]


def cores() -> int:
    """The cores this process may use: the CPUs its affinity allows (``taskset``, cpusets), and no more
    than its cgroup's CPU quota rounded up (a container limited to 2 CPUs on a 64-core host: 2).
    ``serve --processes`` and ``--workers`` default to it."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        n = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:   # cgroup v2: "max 100000" or "200000 100000"
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def one_blas_thread() -> None:
    """The denoiser's matrices are tiny (a 96-unit GRU): a second BLAS thread only adds hand-off
    cost (measured 450 us against 74 us for one matmul), and parallelism comes from streams and
    worker processes instead. Call before numpy loads; job workers inherit it."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``create_server`` needs. Built by the CLI from :func:`hushwire.settings.resolve`; each
    field's default is the settings table's (:func:`hushwire.settings.default`), written there once."""

    data_dir: Path
    host: str = default("host")
    port: int = default("port")
    drain_seconds: float = default("drain_seconds")
    slow_consumer_seconds: float = default("slow_consumer_seconds")
    stream_idle_seconds: float = default("stream_idle_seconds")
    download_idle_seconds: float = default("download_idle_seconds")
    keepalive_seconds: float = default("keepalive_seconds")
    keepalive_timeout_seconds: float = default("keepalive_timeout_seconds")
    keepalive_min_ping_seconds: float = default("keepalive_min_ping_seconds")
    database_url: str | None = default("database_url")
    blob_url: str | None = default("blob_url")
    store_timeout: float = default("store_timeout")
    signing_secret_file: str | None = default("signing_secret_file")
    signing_secret: str | None = default("signing_secret")
    key_pepper: str | None = default("key_pepper")
    signing_secret_previous: str | None = default("signing_secret_previous")
    key_pepper_previous: str | None = default("key_pepper_previous")
    log_level: str = default("log_level")
    log_format: str = default("log_format")
    max_streams_per_user: int = default("max_streams_per_user")
    max_streams: int | None = default("max_streams")
    live_cpu_budget: float = default("live_cpu_budget")
    max_queued_jobs_per_user: int = default("max_queued_jobs_per_user")
    max_bytes_per_day_per_user: int = default("max_bytes_per_day_per_user")
    max_audio_seconds_per_day_per_user: float = default("max_audio_seconds_per_day_per_user")
    max_idempotency_keys_per_user: int = default("max_idempotency_keys_per_user")
    max_upload_bytes: int = default("max_upload_bytes")
    max_upload_seconds: float = default("max_upload_seconds")
    lease_seconds: float = default("lease_seconds")
    hold_seconds: float = default("hold_seconds")
    metrics_port: int | None = default("metrics_port")
    workers: int | None = default("workers")
    processes: int | None = default("processes")
    stream_batch_ms: float = default("stream_batch_ms")
    health_http_port: int | None = default("health_http_port")
    metrics_host: str = default("metrics_host")
    health_http_host: str = default("health_http_host")
    tls_cert: str | None = default("tls_cert")
    tls_key: str | None = default("tls_key")
    tls_client_ca: str | None = default("tls_client_ca")
    server_public_url: str | None = default("server_public_url")
    webhook_allow: tuple[str, ...] | None = default("webhook_allow")
    webhook_base_delay_seconds: float = default("webhook_base_delay_seconds")
    webhook_max_age_seconds: float = default("webhook_max_age_seconds")

    def __post_init__(self) -> None:
        if self.server_public_url is not None and not self.server_public_url.startswith(("http://", "https://")):
            raise ConfigError("--public-url must start with http:// or https://")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together: give both, or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS first)")
        if self.keepalive_min_ping_seconds > KEEPALIVE_INTERVAL_S:
            raise ConfigError(f"--keepalive-min-ping-seconds must be at most {KEEPALIVE_INTERVAL_S:g}: hushwire's "
                              f"clients ping every {KEEPALIVE_INTERVAL_S:g} s, and a longer minimum would end their "
                              "streams (GOAWAY too_many_pings)")

    @property
    def store_url(self) -> str:
        """The database URL every process of the server opens (workers included): the configured
        ``postgresql://...``, or ``sqlite://`` and the SQLite file's absolute path."""
        url = self.database_url
        if url and url.startswith(_POSTGRES_SCHEMES):
            return url
        return f"sqlite://{self.sqlite_path.absolute()}"

    @property
    def sqlite_path(self) -> Path:
        """The SQLite file: ``sqlite:///path`` from the database URL, else ``data_dir/hushwire.db``."""
        url = self.database_url
        if not url:
            return self.data_dir / "hushwire.db"
        if url.startswith("sqlite:///"):
            return Path(url[len("sqlite://"):])  # sqlite:///var/lib/x.db -> /var/lib/x.db
        if url.startswith(_POSTGRES_SCHEMES):
            raise ConfigError("the database is PostgreSQL, not a SQLite file")
        raise ConfigError(f"unsupported database URL {_redact(url)!r}: use sqlite:///PATH or "
                          "postgresql://USER@HOST:PORT/DATABASE")


_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def _redact(url: str) -> str:
    from server.store import redact

    return redact(url)
