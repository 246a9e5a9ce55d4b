"""The gateway's configuration: :class:`GatewayConfig`, built by the CLI from the one settings table
(:mod:`hushwire.settings`)."""

from __future__ import annotations

from dataclasses import dataclass

from hushwire.settings import ConfigError, check_client_tls, default

__all__ = ["GatewayConfig"]


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateway needs. ``public_url`` defaults to ``http://host:port``. Each field's default
    is the settings table's (:func:`hushwire.settings.default`), written there once."""

    gateway_host: str = default("gateway_host")
    gateway_port: int = default("gateway_port")
    grpc_target: str = default("grpc_target")
    public_url: str | None = default("public_url")
    log_level: str = default("log_level")
    log_format: str = default("log_format")
    connect_timeout: float = default("connect_timeout")
    max_upload_bytes: int = default("max_upload_bytes")
    upload_idle_seconds: float = default("upload_idle_seconds")
    http_keepalive_seconds: int = default("http_keepalive_seconds")
    gateway_tls_cert: str | None = default("gateway_tls_cert")
    gateway_tls_key: str | None = default("gateway_tls_key")
    grpc_tls_ca: str | None = default("grpc_tls_ca")
    grpc_tls_cert: str | None = default("grpc_tls_cert")
    grpc_tls_key: str | None = default("grpc_tls_key")
    grpc_connections: int = default("grpc_connections")
    max_connections: int = default("max_connections")

    def __post_init__(self) -> None:
        if (self.gateway_tls_cert is None) != (self.gateway_tls_key is None):
            raise ConfigError("gateway: --tls-cert and --tls-key go together: give both, or neither")
        check_client_tls("gateway: --grpc-tls-", self.grpc_tls_ca, self.grpc_tls_cert, self.grpc_tls_key)
