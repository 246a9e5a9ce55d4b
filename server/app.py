"""Build and run the gRPC server: ``create_server(config)`` and the ``serve`` loop with its drain.

Drain (docs/design.md): on SIGTERM or SIGINT, health goes NOT_SERVING, new calls are refused with
UNAVAILABLE, open streams get ``drain_seconds`` to finish, then end with UNAVAILABLE "server
shutting down", in-flight jobs are requeued, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from hushwire.contract import keepalive
from hushwire.v1 import enhancer_pb2, enhancer_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from server import health_http, signals
from server.admission import Admission
from server.auth import AuthInterceptor
from server.backends import open_blobs, open_store
from server.config import ConfigError, ServerConfig
from server.connections import FLOW_CONTROL_OPTIONS, Connections
from server.group import Member, bind_all, grpc_host
from server.health_http import Health, HealthMirror
from server.jobs import JobLimits, JobRunner, Submitter, Sweeper
from server.metrics import METRICS
from server.servicers import AccountServicer, EnhancerServicer, JobsServicer, StreamTimeouts
from server.shared import SharedState
from server.signing import Signer, load_secret
from server.store import AsyncStore
from server.streams import StreamRegistry
from server.tls import CertificateReloader, TLSFiles
from server.webhooks import WebhookDeliverer, WebhookPolicy

__all__ = ["HEALTH_SERVICES", "Server", "create_server", "serve"]

log = logging.getLogger("hushwire.server")

ENHANCER_SERVICE = enhancer_pb2.DESCRIPTOR.services_by_name["Enhancer"].full_name
JOBS_SERVICE = jobs_pb2.DESCRIPTOR.services_by_name["Jobs"].full_name
ACCOUNT_SERVICE = jobs_pb2.DESCRIPTOR.services_by_name["Account"].full_name
HEALTH_SERVICES = ("", ENHANCER_SERVICE, JOBS_SERVICE)
# The contract's largest chunk is 1 s of 8-channel float32 at 48 kHz (1.5 MB); grpc's default
# 4 MiB receive limit stays, so an oversized message is refused by grpc (RESOURCE_EXHAUSTED).
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


@dataclass
class Server:
    """A started server and the parts a drain needs."""

    grpc_server: grpc.aio.Server
    port: int
    health: Health
    registry: StreamRegistry
    store: AsyncStore
    runner: JobRunner
    submitter: Submitter
    sweeper: Sweeper
    mirror: HealthMirror | None = None
    tls: CertificateReloader | None = None
    webhooks: WebhookDeliverer | None = None
    shared: SharedState | None = None
    draining: bool = False

    async def drain(self, seconds: float) -> None:
        self.draining = True
        await self.health.set(False)  # the HTTP mirror answers 503 from here on
        open_streams = len(self.registry.tasks)
        if open_streams:
            log.info("draining: %d open stream(s), waiting up to %.1f s", open_streams, seconds)
            if not await self.registry.wait_idle(seconds):
                log.info("drain time over: ending %d stream(s)", len(self.registry.tasks))
                self.registry.end_all()
                await self.registry.wait_idle(5.0)
        if self.registry.admission is not None:
            await self.registry.admission.stop()
        await self.runner.stop()
        await self.sweeper.stop()
        if self.webhooks is not None:
            await self.webhooks.stop()   # an attempt cut short is retried (its lease runs out, or a restart frees it)
        await self.grpc_server.stop(grace=1.0)
        await self.submitter.cleanups()  # store calls (each bounded by its timeout) and the deletions they start
        await asyncio.to_thread(self.store.close)
        if self.mirror is not None:
            await self.mirror.stop()
        if self.shared is not None:
            self.shared.close()


async def create_server(config: ServerConfig, member: Member | None = None) -> Server:
    """Create, bind and start the server; health is SERVING when this returns.

    ``member``: this is one sibling of ``serve --processes N`` (server/group.py). It binds the port
    with SO_REUSEPORT (the parent holds it for the group), counts its streams in the group's shared
    state, leaves the start-up requeue to the parent, and serves no metrics or health port (the
    parent serves the group's)."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    if member is None:
        # A busy port is a one-line configuration error, not grpc's traceback: bind it exclusively
        # first, on every address the host names (a group of siblings holds its port with sockets
        # these probes conflict with).
        probes, _ = bind_all(config.host, config.port)
        hosts = tuple(grpc_host(probe.family, probe.getsockname()[0]) for probe in probes)
        for probe in probes:
            probe.close()
    else:
        hosts = member.hosts   # what the parent holds for the group
    # Bound first: a busy port is a configuration error before anything has started.
    mirror_sock = health_http.bind(config.health_http_host, config.health_http_port) \
        if config.health_http_port is not None else None
    tls = None
    if config.tls_cert is not None and config.tls_key is not None:
        try:
            tls = CertificateReloader(TLSFiles(config.tls_cert, config.tls_key, config.tls_client_ca))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    try:
        policy = WebhookPolicy(config.webhook_allow or (),
                               own_ports=(config.port, config.metrics_port or 0, config.health_http_port or 0,
                                          *(member.own_ports if member is not None else ())))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    blobs = open_blobs(config)
    await asyncio.to_thread(blobs.check)  # creates a missing bucket; BlobStoreError before anything starts
    store = AsyncStore(await asyncio.to_thread(open_store, config, timeout=config.store_timeout, separate_reads=True),
                       config.store_timeout)
    log.info("database %s (schema version %d)", store.sync.description, store.sync.schema_version)
    if store.sync.pepper_check in ("recorded", "rotated"):
        log.info("key pepper %s in the database", "recorded" if store.sync.pepper_check == "recorded" else "rotated")
    secret = load_secret(config.signing_secret, config.signing_secret_file, config.data_dir)
    previous = config.signing_secret_previous.encode() if config.signing_secret_previous else None
    try:
        checked = await store.run(store.sync.check_secret, "signing_secret", secret, previous)
    except BaseException:
        await asyncio.to_thread(store.close)
        raise
    if checked in ("recorded", "rotated"):
        log.info("signing secret %s in the database", checked)
    signer = Signer(secret, previous=previous)
    # An embedded store belongs to this server alone, so a start requeues what the last run left in
    # flight; a shared database's in-flight jobs may be other replicas' live work: their leases decide.
    runner = JobRunner(store, config.store_url, blobs, config.data_dir, config.workers, config.lease_seconds,
                       requeue_on_start=store.sync.dialect == "sqlite" and member is None, log_level=config.log_level,
                       log_format=config.log_format)
    METRICS.bind_store(store.sync)  # read at scrape time, in the metrics server's thread
    limits = JobLimits(config.max_upload_bytes, config.max_upload_seconds, config.max_queued_jobs_per_user,
                       config.max_bytes_per_day_per_user, config.max_audio_seconds_per_day_per_user,
                       config.hold_seconds, config.max_idempotency_keys_per_user)
    shared = SharedState.attach(member.state_path, member.processes, member.index) if member is not None else None
    health_servicer = health.aio.HealthServicer()
    health_state = Health(health_servicer, HEALTH_SERVICES, live_name=ENHANCER_SERVICE, shared=shared)
    admission = Admission(config.live_cpu_budget or None, health_state.set_live_full)
    registry = StreamRegistry(config.max_streams_per_user, config.max_streams, admission, shared)
    # New calls are refused (UNAVAILABLE) whenever health is not SERVING: while the job workers
    # start (a client that resumes a stream may reach a replica that is still starting) and while
    # draining.
    connections = Connections()
    interceptor = AuthInterceptor(store, is_draining=lambda: not health_state.serving, connections=connections)
    grpc_server = grpc.aio.server(
        interceptors=[interceptor],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            # Off, so that a second server on a busy port fails; only siblings share one (server/group.py).
            ("grpc.so_reuseport", 1 if member is not None else 0),
            *keepalive.server_options(config.keepalive_seconds, config.keepalive_timeout_seconds,
                                      config.keepalive_min_ping_seconds),
            *FLOW_CONTROL_OPTIONS,
        ],
    )
    timeouts = StreamTimeouts(slow_consumer_s=config.slow_consumer_seconds, idle_s=config.stream_idle_seconds,
                              download_idle_s=config.download_idle_seconds)
    enhancer = EnhancerServicer(registry, store, config.stream_batch_ms / 1000.0,
                                config.max_audio_seconds_per_day_per_user, timeouts, connections)
    enhancer_pb2_grpc.add_EnhancerServicer_to_server(enhancer, grpc_server)
    submitter = Submitter(store, blobs, limits, policy, admission)
    jobs_servicer = JobsServicer(store, blobs, runner, signer, submitter, timeouts, connections)
    jobs_pb2_grpc.add_JobsServicer_to_server(jobs_servicer, grpc_server)
    jobs_pb2_grpc.add_AccountServicer_to_server(AccountServicer(store), grpc_server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    reflection.enable_server_reflection(
        (ENHANCER_SERVICE, JOBS_SERVICE, ACCOUNT_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME),
        grpc_server,
    )
    # Every address the host names (``localhost``: 127.0.0.1 and ::1, where both are configured), on
    # one port: with --port 0, the one grpc picks for the first. With TLS files the port speaks TLS
    # only: a plaintext client fails its handshake.
    async def listen(port: int) -> int:
        for host in hosts:
            try:
                got = grpc_server.add_secure_port(f"{host}:{port}", tls.credentials()) if tls is not None \
                    else grpc_server.add_insecure_port(f"{host}:{port}")
            except RuntimeError:
                await asyncio.to_thread(store.close)
                raise ConfigError(f"cannot listen on {config.host}:{port} ({host})") from None
            port = port or got
        connections.local_port = port
        policy.own_ports.add(port)   # with --port 0, the one it got
        await grpc_server.start()
        return port

    await health_state.set(False)  # until the workers are up
    # One server listens at once, and refuses calls (UNAVAILABLE) until its workers are up: its health
    # service must answer meanwhile. A sibling of a group listens only once it serves: the kernel gives
    # each new connection to a sibling that listens, so a sibling that starts (a replacement) takes no
    # connection it would have to refuse while the others serve the port (server/group.py).
    port = await listen(config.port) if member is None else config.port
    if mirror_sock is not None:
        policy.own_ports.add(mirror_sock.getsockname()[1])
    mirror = HealthMirror(health_state, mirror_sock) if mirror_sock is not None else None
    if mirror is not None:
        await mirror.start()  # answers 503 during the warm-up below
    await runner.start()
    sweeper = Sweeper(store, blobs, config.hold_seconds)
    sweeper.start()
    await runner.warm_up()
    if config.metrics_port is not None:
        start_http_server(config.metrics_port, addr=config.metrics_host, registry=METRICS.registry)
    # As for jobs: an embedded store's delivery leases are this server's own (the group's parent frees them).
    if store.sync.dialect == "sqlite" and member is None:
        await store.run(store.sync.release_webhook_leases)
    webhooks = WebhookDeliverer(store.sync, policy, lambda job_id: jobs_servicer.status_json(job_id,
                                                                                         config.server_public_url),
                                base_delay_s=config.webhook_base_delay_seconds,
                                max_age_s=config.webhook_max_age_seconds)
    webhooks.start()
    admission.start()
    await health_state.set(True)
    if member is not None:
        await listen(port)   # SERVING already, so its first connection's calls are served
    return Server(grpc_server, port, health_state, registry, store, runner, submitter, sweeper, mirror, tls,
                  webhooks, shared)


async def serve(config: ServerConfig) -> int:
    """Run until SIGTERM/SIGINT, drain, and return the exit status (0).

    A stop signal at any moment is a normal stop (server/signals.py): one that comes while the
    server starts lets it finish starting, then it drains at once."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals.catch(loop, stop.set)
    try:
        return await _serve(config, stop)
    finally:
        signals.hold()   # asyncio.run removes its handlers as it ends: a late signal must not kill the exit


async def _serve(config: ServerConfig, stop: asyncio.Event) -> int:
    loop = asyncio.get_running_loop()
    server = await create_server(config)
    host = f"[{config.host}]" if ":" in config.host else config.host
    if not stop.is_set():
        log.info("listening on %s:%d%s", host, server.port,
                 "" if server.tls is None else " (TLS, client certificates required)" if config.tls_client_ca
                 else " (TLS)")
    if server.tls is not None:
        tls = server.tls

        def on_sighup() -> None:
            log.info("SIGHUP: new TLS connections re-read %s", tls.files.cert)
            tls.reload_now()

        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    await stop.wait()
    log.info("shutting down: draining for up to %.1f s", config.drain_seconds)
    await server.drain(config.drain_seconds)
    log.info("stopped")
    return 0
