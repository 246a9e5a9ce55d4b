"""Settings: command-line flags, environment, config file and defaults, resolved in one place.

Precedence is flag > environment > TOML config file > default (docs/design.md, "Command line and
configuration"). :func:`resolve` is the only code that reads ``os.environ`` for a setting; every
role receives a typed config object built from what it returns (``server.config.ServerConfig``,
``gateway.config.GatewayConfig``, ``cli.main.ClientConfig``). :data:`SETTINGS` is the one table of
every role's settings; ``docs/operations.md`` embeds it (``scripts/gen_docs.py``).

It sits beside the contract, not in ``server``, because every role's command reads it and the
gateway may not import the server. Standard library only, and the contract's pure-Python modules,
whose numbers it takes as defaults (each default is written once: here, or in the contract; the
config classes take theirs from :func:`default`).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hushwire.contract.defaults import CONNECT_TIMEOUT_SECONDS, TARGET
from hushwire.contract.keepalive import KEEPALIVE_INTERVAL_S, KEEPALIVE_TIMEOUT_S, MIN_PING_INTERVAL_S
from hushwire.contract.limits import SLOW_CONSUMER_SECONDS

__all__ = [
    "ConfigError",
    "SECRET_SETTINGS",
    "SETTINGS",
    "Setting",
    "bind_all",
    "check_client_tls",
    "default",
    "default_data_dir",
    "listen_hosts",
    "reference_table",
    "resolve",
    "tcp_socket",
]


_log = logging.getLogger("hushwire")
_PORT_TRIES = 5   # picks of a port free on every address (port 0) before giving up


def listen_hosts(host: str, port: int = 0) -> list[tuple[socket.AddressFamily, str]]:
    """The addresses ``host`` names, each once, in the resolver's order: a name may have several
    (``localhost`` is often 127.0.0.1 and ::1), and every listener (gRPC, gateway, health mirror,
    metrics) serves on every one of them. A wildcard (``0.0.0.0``, ``::``, or no host) is one
    address: grpc serves either from one dual-stack socket on ``[::]`` (IPv4 and IPv6) where the
    machine has IPv6, so that is what is listened on; ``0.0.0.0`` alone where it has not."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    found: list[tuple[socket.AddressFamily, str]] = []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6) and (family, str(sockaddr[0])) not in found:
            found.append((family, str(sockaddr[0])))
    if not found:
        raise ConfigError(f"cannot listen on {host}:{port}: it names no IPv4 or IPv6 address")
    if any(ipaddress.ip_address(address.split("%", 1)[0]).is_unspecified for _, address in found):
        return [(socket.AF_INET6, "::")] if _dual_stack() else [(socket.AF_INET, "0.0.0.0")]
    return found


def _dual_stack() -> bool:
    """Whether a socket on ``[::]`` can take IPv4 as well (IPv6 configured, dual-stack allowed)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", 0))
    except OSError:
        return False
    return True


def tcp_socket(family: socket.AddressFamily) -> socket.socket:
    """A TCP socket of ``family``; an IPv6 one also takes IPv4 on ``[::]``, whatever the system's default."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    return sock


def bind_all(host: str, port: int, what: str = "") -> tuple[list[socket.socket], int]:
    """Sockets bound (not listening, no ``SO_REUSEPORT``) on every address of ``host``
    (:func:`listen_hosts`), all on one port: ``port``, or for 0 one the OS picked that is free on every
    address. A busy or bad address is a one-line :class:`ConfigError` (``what`` names the setting)
    before anything else starts.

    An address of a name that this machine does not have (``localhost``'s ::1 where IPv6 is off, as
    in many containers whose /etc/hosts still lists it) is left out with a warning, as grpc leaves it
    out when it resolves the name itself: the name is served on the addresses that exist, and only a
    name none of whose addresses exists is an error."""
    hosts = listen_hosts(host, port)
    for _ in range(_PORT_TRIES):
        bound: list[socket.socket] = []
        absent: list[str] = []
        got = port
        try:
            for family, address in hosts:
                sock = tcp_socket(family)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((address, got))
                except OSError as exc:
                    sock.close()
                    if exc.errno != errno.EADDRNOTAVAIL or len(hosts) == 1:
                        raise
                    absent.append(address)
                    continue
                bound.append(sock)
                got = int(sock.getsockname()[1])
            if not bound:
                raise ConfigError(f"{what}cannot listen on {host}:{port}: none of its addresses "
                                  f"({', '.join(absent)}) is configured on this machine")
            for address in absent:
                _log.warning("%s%s: %s is not configured on this machine: listening on %s only", what, host,
                             address, ", ".join(str(s.getsockname()[0]) for s in bound))
            return bound, got
        except OSError as exc:
            for sock in bound:
                sock.close()
            if port == 0 and bound and exc.errno == errno.EADDRINUSE:
                continue   # the OS's pick for the first address is taken on another: pick again
            where = f" ({address})" if len(hosts) > 1 else ""
            raise ConfigError(f"{what}cannot listen on {host}:{got}{where}: {exc.strerror or exc}") from None
    raise ConfigError(f"{what}cannot listen on {host}:0: no port free on all of its addresses")


class ConfigError(ValueError):
    """A setting has a value that cannot be used (bad number, unreadable config file)."""


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "hushwire"


def _size(text: str | int | float) -> int:
    """Parse a byte size: 200000, "200 MB", "10GB", "512KiB"."""
    if isinstance(text, int | float):
        return int(text)
    s = text.strip().upper().replace(" ", "")
    units = {"KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "KB": 1000, "MB": 1000**2, "GB": 1000**3,
             "K": 1000, "M": 1000**2, "G": 1000**3, "B": 1}
    for suffix, factor in units.items():
        if s.endswith(suffix):
            return int(float(s[: -len(suffix)]) * factor)
    return int(float(s))


def _positive_int(text: str | int) -> int:
    n = int(text)
    if n < 1:
        raise ValueError("must be 1 or more")
    return n


def _port(text: str | int) -> int:
    """A TCP port, 0-65535 (0: any free port)."""
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError("a port is 0-65535")
    return port


def _fraction(text: str | float) -> float:
    """A share of one core: 0 (off) to 64."""
    x = float(text)
    if not 0 <= x <= 64:
        raise ValueError("must be 0 (off) to 64")
    return x


def _count(text: str | int) -> int:
    """A count that may be 0 but not negative."""
    n = int(text)
    if n < 0:
        raise ValueError("must be 0 or more")
    return n


def _positive(text: str | float) -> float:
    """A duration that must be more than 0 seconds."""
    x = float(text)
    if not x > 0:
        raise ValueError("must be more than 0")
    return x


def _list(value: str | list[str]) -> tuple[str, ...]:
    """A list: a TOML array, or text separated by commas or spaces."""
    items = value if isinstance(value, list) else str(value).replace(",", " ").split()
    return tuple(str(v).strip() for v in items if str(v).strip())


def _bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    return text.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Setting:
    """One row of docs/design.md's settings table."""

    name: str                      # attribute name and argparse dest
    env: str | None                # environment variable
    toml: str | None               # dotted TOML key
    default: Any                   # default, or a callable(env) -> default
    parse: Callable[[Any], Any] = str

    @property
    def flag(self) -> str:
        return "--" + _FLAG_NAMES.get(self.name, self.name).replace("_", "-")

    @property
    def help(self) -> str:
        return _HELP.get(self.name, "")

    @property
    def default_text(self) -> str:
        if callable(self.default):
            return "`$XDG_DATA_HOME/hushwire` (`~/.local/share/hushwire`)"
        if self.default is None:
            return {"signing_secret": "generated into the data dir", "key_pepper": "generated into the data dir",
                    "database_url": "SQLite in the data dir",
                    "blob_url": "a folder in the data dir", "public_url": "the gateway's own address",
                    "workers": "one per core", "processes": "one per core", "metrics_port": "off",
                    "health_http_port": "off", "tls_cert": "off (plaintext)", "gateway_tls_cert": "off (HTTP)",
                    "grpc_tls_ca": "off (plaintext)", "client_tls_ca": "off (plaintext)",
                    "server_public_url": "none (no `result` in webhooks)",
                    "webhook_allow": "public addresses only"}.get(self.name, "none")
        return f"`{self.default}`"


# The same flag on different subcommands (``serve --tls-cert``, ``gateway --tls-cert``, ``enhance
# --tls-cert``) names different settings: their environment and TOML names differ per role.
_FLAG_NAMES = {
    "gateway_host": "host", "gateway_port": "port",
    "gateway_tls_cert": "tls_cert", "gateway_tls_key": "tls_key", "server_public_url": "public_url",
    "client_tls_ca": "tls_ca", "client_tls_cert": "tls_cert", "client_tls_key": "tls_key",
}

_HELP = {
    "data_dir": "where the SQLite file, blobs and the signing secret live",
    "host": "the gRPC server's listen address: an address, or a name, served on every address it resolves to "
            "(`localhost`: 127.0.0.1 and ::1 where both are configured)",
    "port": "the gRPC server's port (0: any free port, logged at start)",
    "gateway_host": "the gateway's listen address (`hushwire gateway --host`): an address, or a name, served "
                    "on every address it resolves to",
    "gateway_port": "the gateway's port (`hushwire gateway --port`)",
    "grpc_target": "the gRPC server the gateway forwards to",
    "public_url": "prefix of result URLs; required when the gateway binds 0.0.0.0",
    "upload_idle_seconds": "an upload body that sends nothing for this long gets 408 REQUEST_TIMEOUT",
    "http_keepalive_seconds": "the gateway closes an HTTP/1.1 connection idle for this long between requests; "
                              "keep it above the idle time of the clients and balancers in front (httpx 5 s, "
                              "aiohttp 15 s, HAProxy's server pool 5 s, AWS ALB 60 s), so that they close "
                              "first: a request sent as the gateway closes its connection gets no reply",
    "max_connections": "the most connections the gateway serves at once: each HTTP request in flight and each "
                       "open `/live` WebSocket counts (idle keep-alive connections do not; they close after "
                       "`--http-keepalive-seconds`); past it a request gets 503 OVERLOADED with Retry-After and "
                       "`/live` closes with 1013 (`/healthz` and `/metrics` always answer)",
    "target": "the server a client command talks to",
    "key": "the API key of a client command",
    "log_level": "debug, info, warning or error",
    "log_format": "`text` or `json` (one JSON object per line on stderr)",
    "drain_seconds": "on SIGTERM, how long open streams may finish",
    "slow_consumer_seconds": "a live stream whose client takes no response for this long is ended with "
                             "SLOW_CONSUMER (and reset 5 s later if that status cannot reach it)",
    "stream_idle_seconds": "a live stream that sends no request (audio or update) for this long is ended with "
                           "REQUEST_TIMEOUT",
    "download_idle_seconds": "a result download (Jobs.DownloadResult, so GET /results too) whose client takes "
                             "nothing for this long is ended with SLOW_CONSUMER (and reset 5 s later if that "
                             "status cannot reach it); its open result is closed at once",
    "keepalive_seconds": "the server pings every connection this often (HTTP/2 keepalive) to find peers that "
                         "vanished without closing",
    "keepalive_timeout_seconds": "a connection whose keepalive ping is not answered this soon is closed, and "
                                 "its calls are cancelled and freed",
    "keepalive_min_ping_seconds": "the closest a client's keepalive pings may come without data between them; "
                                  "a client that pings more often is sent GOAWAY too_many_pings (hushwire's "
                                  "clients ping every 30 s: at most 30, or the server refuses to start)",
    "signing_secret_file": "a file holding the result-URL signing secret (the flag)",
    "signing_secret": "the result-URL signing secret itself (environment or TOML); replicas share it",
    "signing_secret_previous": "while rotating the signing secret: the old one, still accepted on result URLs "
                               "(keep it for the URLs' lifetime, 24 h); see docs/security.md",
    "key_pepper": "the secret API-key hashes are keyed with (environment or TOML); replicas share it",
    "key_pepper_previous": "while rotating the key pepper: the old one; keys hashed with it still work and are "
                           "re-hashed on first use (`keys list` shows those left); see docs/security.md",
    "database_url": "jobs, keys and usage: `sqlite:///PATH` (built in) or `postgresql://USER@HOST:PORT/DB` "
                    "(shared by replicas; needs `hushwire[scale]`)",
    "blob_url": "uploads and results: `file:///PATH` (built in) or `s3://BUCKET[/PREFIX]?endpoint=URL[&region=R]` "
                "(shared by replicas; needs `hushwire[scale]`)",
    "store_timeout": "seconds a request waits for the database (a lock held elsewhere, a slow or unreachable "
                     "server) before it is answered SERVICE_UNAVAILABLE; live streams never wait for it",
    "lease_seconds": "a worker's hold on a job; a job whose lease expires is run again",
    "hold_seconds": "a job submitted with `hold` (each file of a `POST /enhance` until all are accepted) that "
                    "sees no activity for this long is cancelled and its upload deleted; the gateway renews "
                    "the hold while it forwards the request, so keep it above the gateway's "
                    "--upload-idle-seconds",
    "max_streams_per_user": "concurrent live streams per user on this server, all its processes together "
                            "(`--processes`; each replica counts its own) (RATE_LIMITED beyond)",
    "max_streams": "live streams this server serves at once, all users and processes together: a new one "
                   "beyond is refused with OVERLOADED, which clients retry (through a balancer, on another "
                   "replica); none by default",
    "live_cpu_budget": "admission control: the CPU (fraction of one core) a server process lets live streams "
                       "use, against their measured cost; a new stream that would not fit in real time is "
                       "refused with OVERLOADED and health `hushwire.v1.Enhancer` goes NOT_SERVING; 0 turns "
                       "it off (see docs/performance.md)",
    "max_queued_jobs_per_user": "unfinished jobs per user (RATE_LIMITED beyond)",
    "max_bytes_per_day_per_user": "upload bytes per user per UTC day (RATE_LIMITED beyond)",
    "max_audio_seconds_per_day_per_user": "seconds of audio x channels per user per UTC day, counted for jobs "
                                          "at submit and for streams when they close; checked when a job is "
                                          "submitted or a stream opens, and an open stream is never cut "
                                          "(RATE_LIMITED beyond)",
    "max_idempotency_keys_per_user": "idempotency keys a user may hold at a time (each is kept 24 h after "
                                     "its request succeeded; RATE_LIMITED beyond)",
    "max_upload_bytes": "largest upload (FILE_TOO_LARGE beyond)",
    "max_upload_seconds": "longest upload in seconds of audio (FILE_TOO_LARGE beyond)",
    "connect_timeout": "how long clients (and the gateway) wait for the server",
    "metrics_port": "serve Prometheus metrics on this port (server)",
    "stream_batch_ms": "live streams: how long the first chunk of a batch waits for other streams' chunks to "
                       "be denoised with it (0: no wait; applies from 4 open streams)",
    "workers": "job worker processes, in all: with --processes, shared out among the server processes "
               "(0: this replica runs no jobs; others sharing its store do)",
    "grpc_connections": "the gateway's connections to the server, each its own TCP connection; calls and `/live` "
                        "streams take turns on them, so they spread over a server's processes (`serve "
                        "--processes`), which the kernel assigns per connection; a `/live` stream a process refused "
                        "for its own load (OVERLOADED, `hushwire-refused-for: load`) is tried on at most 2 "
                        "others; one refused for the group's `--max-streams` is not. A few per server process",
    "processes": "server processes sharing the port (SO_REUSEPORT, Linux; one event loop serves about one core's "
                 "worth of live streams). A core is a CPU this process may run on (`os.sched_getaffinity`: "
                 "taskset, cpusets), capped by a cgroup CPU quota. Only these siblings share the port: another "
                 "`serve` on it still fails. See docs/deploy.md",
    "health_http_port": "serve a plain-HTTP readiness mirror of grpc.health.v1 on this port (server): "
                        "`GET /readyz` is 200 while SERVING, 503 while starting or draining (for HAProxy's "
                        "`option httpchk`); `GET /readyz/live` also 503 while new live streams are refused "
                        "for load. With --processes: ready while at least one process serves, each one's state "
                        "in the body",
    "metrics_host": "the metrics port's listen address (plain HTTP, whatever the gRPC port speaks), served on "
                    "every address it resolves to",
    "health_http_host": "the health mirror's listen address (plain HTTP, whatever the gRPC port speaks), "
                        "served on every address it resolves to",
    "tls_cert": "serve gRPC over TLS only, with this certificate chain (PEM); re-read when the file changes or "
                "on SIGHUP (server)",
    "tls_key": "the private key (PEM) of `--tls-cert` (server)",
    "tls_client_ca": "require client certificates signed by this CA (PEM): mutual TLS (server)",
    "gateway_tls_cert": "serve HTTPS with this certificate chain (PEM) (`hushwire gateway --tls-cert`)",
    "gateway_tls_key": "the private key (PEM) of the gateway's `--tls-cert`",
    "grpc_tls_ca": "call the gRPC server over TLS, trusting this CA (PEM) (gateway)",
    "grpc_tls_cert": "the gateway's client certificate (PEM) for a server that requires mutual TLS",
    "grpc_tls_key": "the private key (PEM) of `--grpc-tls-cert`",
    "client_tls_ca": "talk to the server over TLS, trusting this CA (PEM) (`enhance`, `jobs`, `mic`)",
    "client_tls_cert": "the client certificate (PEM) for a server that requires mutual TLS (`enhance`, `jobs`, "
                       "`mic`)",
    "client_tls_key": "the private key (PEM) of the client's `--tls-cert`",
    "server_public_url": "the gateway's public URL, as the server puts it in webhook bodies' `result` (server; "
                         "absent: webhook bodies carry no `result`)",
    "webhook_allow": "callback URLs may go to these hosts only: host names, `host:port` and CIDRs, comma-separated "
                     "(a TOML list too); absent: public addresses only, never loopback, link-local or private ones",
    "webhook_base_delay_seconds": "job webhooks: the first retry comes after 0.5-1 x this; each next one waits "
                                  "twice as long (up to an hour)",
    "webhook_max_age_seconds": "job webhooks: a delivery not made within this long is given up",
}


# Secrets are never flags (a flag shows in `ps`): environment or TOML only.
SECRET_SETTINGS = ("signing_secret", "signing_secret_previous", "key_pepper", "key_pepper_previous")


def reference_table() -> str:
    """The settings as a Markdown table (docs/operations.md embeds it; a test keeps it in sync)."""
    rows = ["| setting | flag | environment | TOML key | default | meaning |", "|---|---|---|---|---|---|"]
    for s in SETTINGS.values():
        env = f"`{s.env}`" if s.env else "–"
        toml = f"`{s.toml}`" if s.toml else "–"
        flag = "–" if s.name in SECRET_SETTINGS else f"`{s.flag}`"
        rows.append(f"| {s.name} | {flag} | {env} | {toml} | {s.default_text} | {s.help} |")
    return "\n".join(rows) + "\n"


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in [
        Setting("data_dir", "HUSHWIRE_DATA_DIR", "data_dir", default_data_dir, Path),
        Setting("host", "HUSHWIRE_HOST", "server.host", "127.0.0.1"),
        Setting("port", "HUSHWIRE_PORT", "server.port", 50051, int),
        Setting("gateway_host", "HUSHWIRE_GATEWAY_HOST", "gateway.host", "127.0.0.1"),
        Setting("gateway_port", "HUSHWIRE_GATEWAY_PORT", "gateway.port", 8080, int),
        Setting("grpc_target", "HUSHWIRE_TARGET", "gateway.grpc_target", TARGET),
        Setting("public_url", "HUSHWIRE_PUBLIC_URL", "gateway.public_url", None),
        Setting("grpc_connections", "HUSHWIRE_GATEWAY_GRPC_CONNECTIONS", "gateway.grpc_connections", 8,
                _positive_int),
        Setting("upload_idle_seconds", "HUSHWIRE_UPLOAD_IDLE_SECONDS", "gateway.upload_idle_seconds", 60.0, float),
        Setting("http_keepalive_seconds", "HUSHWIRE_GATEWAY_HTTP_KEEPALIVE_SECONDS", "gateway.http_keepalive_seconds",
                75, _positive_int),
        Setting("max_connections", "HUSHWIRE_GATEWAY_MAX_CONNECTIONS", "gateway.max_connections", 2000,
                _positive_int),
        Setting("target", "HUSHWIRE_TARGET", None, TARGET),
        Setting("key", "HUSHWIRE_API_KEY", None, None),
        Setting("log_level", "HUSHWIRE_LOG_LEVEL", "log.level", "info", str.lower),
        Setting("log_format", "HUSHWIRE_LOG_FORMAT", "log.format", "text", str.lower),
        Setting("drain_seconds", "HUSHWIRE_DRAIN_SECONDS", "server.drain_seconds", 10.0, float),
        Setting("slow_consumer_seconds", "HUSHWIRE_SLOW_CONSUMER_SECONDS", "server.slow_consumer_seconds",
                SLOW_CONSUMER_SECONDS, _positive),
        Setting("stream_idle_seconds", "HUSHWIRE_STREAM_IDLE_SECONDS", "server.stream_idle_seconds", 30.0,
                _positive),
        Setting("download_idle_seconds", "HUSHWIRE_DOWNLOAD_IDLE_SECONDS", "server.download_idle_seconds", 60.0,
                _positive),
        Setting("keepalive_seconds", "HUSHWIRE_KEEPALIVE_SECONDS", "server.keepalive_seconds",
                float(KEEPALIVE_INTERVAL_S), _positive),
        Setting("keepalive_timeout_seconds", "HUSHWIRE_KEEPALIVE_TIMEOUT_SECONDS", "server.keepalive_timeout_seconds",
                float(KEEPALIVE_TIMEOUT_S), _positive),
        Setting("keepalive_min_ping_seconds", "HUSHWIRE_KEEPALIVE_MIN_PING_SECONDS",
                "server.keepalive_min_ping_seconds", float(MIN_PING_INTERVAL_S), _positive),
        # The flag names a file holding the secret; the environment and TOML give the secret itself.
        Setting("signing_secret_file", None, None, None),
        Setting("signing_secret", "HUSHWIRE_SIGNING_SECRET", "server.signing_secret", None),
        Setting("signing_secret_previous", "HUSHWIRE_SIGNING_SECRET_PREVIOUS", "server.signing_secret_previous",
                None),
        Setting("key_pepper", "HUSHWIRE_KEY_PEPPER", "server.key_pepper", None),
        Setting("key_pepper_previous", "HUSHWIRE_KEY_PEPPER_PREVIOUS", "server.key_pepper_previous", None),
        Setting("database_url", "HUSHWIRE_DATABASE_URL", "store.database_url", None),
        Setting("blob_url", "HUSHWIRE_BLOB_URL", "store.blob_url", None),
        Setting("store_timeout", "HUSHWIRE_STORE_TIMEOUT", "store.timeout", 5.0, _positive),
        Setting("lease_seconds", "HUSHWIRE_LEASE_SECONDS", "jobs.lease_seconds", 30.0, float),
        Setting("hold_seconds", "HUSHWIRE_HOLD_SECONDS", "jobs.hold_seconds", 120.0, _positive),
        Setting("max_streams_per_user", "HUSHWIRE_MAX_STREAMS_PER_USER",
                "limits.max_streams_per_user", 256, int),
        Setting("max_streams", "HUSHWIRE_MAX_STREAMS", "limits.max_streams", None, _count),
        Setting("live_cpu_budget", "HUSHWIRE_LIVE_CPU_BUDGET", "limits.live_cpu_budget", 0.9, _fraction),
        Setting("max_queued_jobs_per_user", "HUSHWIRE_MAX_QUEUED_JOBS_PER_USER",
                "limits.max_queued_jobs_per_user", 100, int),
        Setting("max_bytes_per_day_per_user", "HUSHWIRE_MAX_BYTES_PER_DAY_PER_USER",
                "limits.max_bytes_per_day_per_user", "10 GB", _size),
        Setting("max_audio_seconds_per_day_per_user", "HUSHWIRE_MAX_AUDIO_SECONDS_PER_DAY_PER_USER",
                "limits.max_audio_seconds_per_day_per_user", 360000.0, float),
        Setting("max_idempotency_keys_per_user", "HUSHWIRE_MAX_IDEMPOTENCY_KEYS_PER_USER",
                "limits.max_idempotency_keys_per_user", 10000, _count),
        Setting("max_upload_bytes", "HUSHWIRE_MAX_UPLOAD_BYTES", "limits.max_upload_bytes", "200 MB", _size),
        Setting("max_upload_seconds", "HUSHWIRE_MAX_UPLOAD_SECONDS", "limits.max_upload_seconds",
                7200.0, float),
        Setting("connect_timeout", "HUSHWIRE_CONNECT_TIMEOUT", None, CONNECT_TIMEOUT_SECONDS, float),
        Setting("metrics_port", "HUSHWIRE_METRICS_PORT", "server.metrics_port", None, int),
        Setting("stream_batch_ms", "HUSHWIRE_STREAM_BATCH_MS", "server.stream_batch_ms", 1.0, float),
        Setting("workers", "HUSHWIRE_WORKERS", "jobs.workers", None, _count),
        Setting("processes", "HUSHWIRE_PROCESSES", "server.processes", None, _positive_int),
        Setting("health_http_port", "HUSHWIRE_HEALTH_HTTP_PORT", "server.health_http_port", None, _port),
        # Plain-HTTP side doors stay on loopback unless asked: a TLS server on 0.0.0.0 must not
        # expose them by accident.
        Setting("metrics_host", "HUSHWIRE_METRICS_HOST", "server.metrics_host", "127.0.0.1"),
        Setting("health_http_host", "HUSHWIRE_HEALTH_HTTP_HOST", "server.health_http_host", "127.0.0.1"),
        Setting("tls_cert", "HUSHWIRE_TLS_CERT", "server.tls_cert", None),
        Setting("tls_key", "HUSHWIRE_TLS_KEY", "server.tls_key", None),
        Setting("tls_client_ca", "HUSHWIRE_TLS_CLIENT_CA", "server.tls_client_ca", None),
        Setting("gateway_tls_cert", "HUSHWIRE_GATEWAY_TLS_CERT", "gateway.tls_cert", None),
        Setting("gateway_tls_key", "HUSHWIRE_GATEWAY_TLS_KEY", "gateway.tls_key", None),
        Setting("grpc_tls_ca", "HUSHWIRE_GATEWAY_GRPC_TLS_CA", "gateway.grpc_tls_ca", None),
        Setting("grpc_tls_cert", "HUSHWIRE_GATEWAY_GRPC_TLS_CERT", "gateway.grpc_tls_cert", None),
        Setting("grpc_tls_key", "HUSHWIRE_GATEWAY_GRPC_TLS_KEY", "gateway.grpc_tls_key", None),
        Setting("server_public_url", "HUSHWIRE_SERVER_PUBLIC_URL", "server.public_url", None),
        Setting("webhook_allow", "HUSHWIRE_WEBHOOK_ALLOW", "server.webhook_allow", None, _list),
        Setting("webhook_base_delay_seconds", "HUSHWIRE_WEBHOOK_BASE_DELAY_SECONDS",
                "server.webhook_base_delay_seconds", 10.0, _positive),
        Setting("webhook_max_age_seconds", "HUSHWIRE_WEBHOOK_MAX_AGE_SECONDS", "server.webhook_max_age_seconds",
                86400.0, _positive),
        Setting("client_tls_ca", "HUSHWIRE_CLIENT_TLS_CA", None, None),
        Setting("client_tls_cert", "HUSHWIRE_CLIENT_TLS_CERT", None, None),
        Setting("client_tls_key", "HUSHWIRE_CLIENT_TLS_KEY", None, None),
    ]
}


def default(name: str) -> Any:
    """The default of setting ``name``, parsed as a value of it ("200 MB" as bytes), or None: what a
    config class's field defaults to (server.config.ServerConfig, gateway.config.GatewayConfig), so the
    table is the one place a default is written."""
    setting = SETTINGS[name]
    if setting.default is None or callable(setting.default):
        return None
    return setting.parse(setting.default)


def _toml_lookup(doc: Mapping[str, Any], dotted: str) -> Any:
    node: Any = doc
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _load_toml(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    known = {s.toml for s in SETTINGS.values() if s.toml}
    sections = {k.rsplit(".", 1)[0] for k in known if "." in k}
    for key in _dotted_keys(doc):
        if key not in known:
            hint = " (a section, not a value)" if key in sections else ""
            raise ConfigError(f"config file {path}: unknown key {key!r}{hint}; known keys: {', '.join(sorted(known))}")
    return doc


def _dotted_keys(doc: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k, v in doc.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            keys += _dotted_keys(v, name + ".")
        else:
            keys.append(name)
    return keys


def resolve(
    names: list[str],
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Resolve the named settings: a flag that was given wins, then the environment, then the
    TOML file (``--config`` or ``HUSHWIRE_CONFIG``), then the default."""
    env = dict(os.environ) if env is None else dict(env)
    flags = flags or {}
    doc = _load_toml(config_file or env.get("HUSHWIRE_CONFIG"))
    out: dict[str, Any] = {}
    for name in names:
        s = SETTINGS[name]
        raw: Any = flags.get(name)
        where = s.flag
        if raw is None and s.env and env.get(s.env) not in (None, ""):
            raw, where = env[s.env], s.env
        if raw is None and s.toml:
            raw, where = _toml_lookup(doc, s.toml), s.toml
        if raw is None:
            out[name] = s.default(env) if callable(s.default) else s.default
            if out[name] is not None and s.parse is not str:
                out[name] = s.parse(out[name])
            continue
        try:
            out[name] = s.parse(raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: cannot use {raw!r} ({exc})") from exc
    return out


def check_client_tls(prefix: str, ca: str | None, cert: str | None, key: str | None) -> None:
    """A TLS client's settings fit together (the gateway's to the server, a client command's)."""
    if (cert is None) != (key is None):
        raise ConfigError(f"{prefix}cert and {prefix}key go together: give both, or neither")
    if cert is not None and ca is None:
        raise ConfigError(f"{prefix}cert needs {prefix}ca: a client certificate is only sent over TLS")
