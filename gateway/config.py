"""The gateway's configuration: :class:`GatewayConfig`, built by the CLI from the one settings table
(:mod:`hushwire.settings`)."""

from __future__ import annotations

from dataclasses import dataclass

from hushwire.settings import ConfigError, check_client_tls

__all__ = ["GatewayConfig"]


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateway needs. ``public_url`` defaults to ``http://host:port``."""

    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    grpc_target: str = "127.0.0.1:50051"
    public_url: str | None = None
    log_level: str = "info"
    log_format: str = "text"
    connect_timeout: float = 10.0
    max_upload_bytes: int = 200 * 1000**2
    upload_idle_seconds: float = 60.0
    http_keepalive_seconds: int = 75
    gateway_tls_cert: str | None = None
    gateway_tls_key: str | None = None
    grpc_tls_ca: str | None = None
    grpc_tls_cert: str | None = None
    grpc_tls_key: str | None = None
    grpc_connections: int = 8

    def __post_init__(self) -> None:
        if (self.gateway_tls_cert is None) != (self.gateway_tls_key is None):
            raise ConfigError("gateway: --tls-cert and --tls-key go together: give both, or neither")
        check_client_tls("gateway: --grpc-tls-", self.grpc_tls_ca, self.grpc_tls_cert, self.grpc_tls_key)
