"""``hushwire serve --processes N``: one server as N sibling processes on one port.

One server process runs one event loop, so it serves at most one core's worth of live streams.
With ``--processes N`` (default: one per core, :func:`server.config.cores`) a parent process
starts N sibling server processes that listen on the same port with ``SO_REUSEPORT``; the kernel
spreads new *connections* over them (calls on one connection stay in its process).

**Only siblings share the port.** ``SO_REUSEPORT`` lets any socket of the same user that also sets
it join the port, so the parent guards it (:func:`reserve_port`): it binds the address exclusively
first (a busy port is the same one-line error as with one process), then swaps that for a *holder*
socket that sets ``SO_REUSEPORT`` but never listens, under a short lock (an abstract Unix socket
named after the port) so two starting servers cannot interleave. The holder keeps the port for the
group's whole life: every other ``hushwire serve``, whatever its ``--processes``, first binds the
address without ``SO_REUSEPORT`` and fails on it. The siblings then bind with ``SO_REUSEPORT``.
A host name that resolves to several addresses (``localhost``: 127.0.0.1 and ::1) is held, and
served, on every one of them (:func:`listen_hosts`), so no other server can take one of them while
the siblings are down (being replaced); the siblings listen on exactly the addresses the parent holds. A
program of the same user that sets ``SO_REUSEPORT`` itself (grpc's default) could still join the
port: the kernel allows it, and nothing short of a dedicated user prevents it.

**What the parent does**: it opens the store first (schema migrations, generated secrets) and, with
the embedded SQLite store, requeues the jobs the last run left in flight and frees its webhook
leases, once (the siblings don't); it serves the metrics port (every sibling's metrics, summed:
prometheus_client's multiprocess mode, with the job-queue gauges read from the store, and the
siblings by state) and the health mirror (the group, :class:`_GroupHealth`: ``/readyz`` while at
least one sibling serves, ``/readyz/live`` also 503 while every sibling is full); it logs
``listening on HOST:PORT`` once every sibling is SERVING; it forwards SIGTERM/SIGINT (drain) and,
with TLS, SIGHUP (reload) to the siblings, and exits when they have drained. A SIGTERM that comes
while the group starts is a stop like any other (server/signals.py): what was starting finishes
starting, then drains, and the exit status is 0.
A sibling that dies is replaced (after a pause that doubles while they keep dying). If the parent
dies, its siblings notice (their pipe to it closes) and stop at once: streams end with UNAVAILABLE,
jobs are requeued, and they remove the group's run directory (a temporary directory: the shared
state and the metrics files), which the parent would have removed.

**Split between siblings**: ``--workers`` (job worker processes) is the total, shared out as evenly
as it goes. Admission control is per sibling (each has its own core's budget). The per-user stream
limit and ``--max-streams`` count the whole group's streams (server/shared.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import ipaddress
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from hushwire.settings import ConfigError
from server import signals
from server.config import ServerConfig, cores

__all__ = ["Member", "bind_all", "grpc_host", "listen_hosts", "reserve_port", "run_group", "split_workers"]

log = logging.getLogger("hushwire.server")

_METRICS_DIR = "metrics"
_STATE_FILE = "state"
_RESTART_MIN_S = 1.0
_RESTART_MAX_S = 30.0
_STARTED_OK_S = 30.0      # a sibling that ran this long resets the restart pause
_KILL_AFTER_S = 20.0      # past the drain time, a sibling still running is killed
_SYNC_S = 0.2             # how often a sibling publishes its load and reads the group's
_PORT_TRIES = 5           # picks of a free port (0) before giving up


@dataclass(frozen=True)
class Member:
    """What a sibling process knows of its group."""

    index: int
    processes: int
    run_dir: Path
    own_ports: tuple[int, ...] = ()   # the parent's metrics and health ports (webhooks may not call them)
    hosts: tuple[str, ...] = ()       # the addresses the parent holds, as grpc's host part: listen on each

    @property
    def state_path(self) -> Path:
        return self.run_dir / _STATE_FILE


def split_workers(total: int, processes: int) -> list[int]:
    """``total`` job workers shared out over ``processes`` siblings, the first ones taking the rest."""
    return [total // processes + (1 if i < total % processes else 0) for i in range(processes)]


# -- the port ---------------------------------------------------------------------------------------


def _port_lock(port: int) -> socket.socket | None:
    """An abstract Unix socket named after the port: held while a server swaps its probe for the holder."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(f"\0hushwire-serve-port-{port}")
    except OSError:
        sock.close()
        return None
    return sock


def listen_hosts(host: str, port: int = 0) -> list[tuple[socket.AddressFamily, str]]:
    """The addresses ``host`` names, each once, in the resolver's order: a name may have several
    (``localhost`` is often 127.0.0.1 and ::1), and the server listens on, and holds, every one of
    them. A wildcard (``0.0.0.0``, ``::``, or no host) is one address: grpc serves either from one
    dual-stack socket on ``[::]`` (IPv4 and IPv6) where the machine has IPv6, so that is what is
    held and listened on; ``0.0.0.0`` alone where it has not."""
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


def _socket(family: socket.AddressFamily) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:   # a wildcard [::] takes IPv4 too, whatever the system's default
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    return sock


def grpc_host(family: socket.AddressFamily, address: str) -> str:
    """An address as grpc's ``host:port`` wants its host part (IPv6 in brackets)."""
    return f"[{address}]" if family == socket.AF_INET6 else address


def bind_all(host: str, port: int) -> tuple[list[socket.socket], int]:
    """Exclusive probes (no ``SO_REUSEPORT``) on every address of ``host`` (:func:`listen_hosts`), all on
    one port: ``port``, or for 0 one the OS picked that is free on every address. A busy address is a
    :class:`ConfigError` naming it."""
    hosts = listen_hosts(host, port)
    for _ in range(_PORT_TRIES):
        probes: list[socket.socket] = []
        got = port
        try:
            for family, address in hosts:
                sock = _socket(family)
                probes.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((address, got))
                got = int(sock.getsockname()[1])
            return probes, got
        except OSError as exc:
            for sock in probes:
                sock.close()
            if port == 0 and len(probes) > 1 and exc.errno == errno.EADDRINUSE:
                continue   # the OS's pick for the first address is taken on another: pick again
            where = f" ({address})" if len(hosts) > 1 else ""
            raise ConfigError(f"cannot listen on {host}:{got}{where}: {exc.strerror or exc}") from None
    raise ConfigError(f"cannot listen on {host}:0: no port free on all of its addresses")


def reserve_port(host: str, port: int) -> tuple[list[socket.socket], int]:
    """Bind ``host:port`` for a group of siblings, on every address ``host`` names: returns the holder
    sockets (``SO_REUSEPORT``, never listening; keep them open while the siblings run) and the port
    (the one the OS picked for 0). A busy port, or one another server is taking right now, is a
    :class:`ConfigError`."""
    for _ in range(_PORT_TRIES):
        lock = _port_lock(port) if port else None
        if port and lock is None:
            raise ConfigError(f"cannot listen on {host}:{port}: another hushwire serve is starting on it")
        try:
            probes, got = bind_all(host, port)   # exclusive: fails on any socket bound there, siblings' included
        except BaseException:
            if lock is not None:
                lock.close()
            raise
        if lock is None:
            lock = _port_lock(got)
            if lock is None:   # port 0 gave a port another server is taking: pick again
                for probe in probes:
                    probe.close()
                continue
        holders: list[socket.socket] = []
        try:
            addresses = [(probe.family, probe.getsockname()) for probe in probes]
            for probe in probes:
                probe.close()
            # No SO_REUSEADDR: another server's probe (which sets it) must not share an address with
            # a holder just because neither listens.
            for family, address in addresses:
                holder = _socket(family)
                holders.append(holder)
                holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                try:
                    holder.bind(address)
                except OSError as exc:
                    for h in holders:
                        h.close()
                    raise ConfigError(f"cannot listen on {host}:{got}: {exc.strerror or exc}") from None
            return holders, got
        finally:
            lock.close()
    raise ConfigError(f"cannot listen on {host}:0: no free port found")


# -- a sibling ----------------------------------------------------------------------------------------


def _sibling_main(config: ServerConfig, member: Member, conn: Connection) -> None:
    """A sibling process's entry point (multiprocessing, spawn)."""
    # Metrics go to per-process files the parent sums. Set before prometheus_client is imported;
    # server.metrics makes one metric of every kind at import, which opens every file this process
    # will write, so the variable can go at once: job workers (started later) stay out of the sum,
    # as their outcomes are counted here.
    signals.record()   # a stop signal while this process starts is a drain once it has started
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(member.run_dir / _METRICS_DIR)
    import server.metrics  # noqa: F401
    del os.environ["PROMETHEUS_MULTIPROC_DIR"]
    from server.logs import setup_logging

    setup_logging(config.log_level, config.log_format)
    sys.exit(asyncio.run(_sibling_serve(config, member, conn)))


async def _sibling_serve(config: ServerConfig, member: Member, conn: Connection) -> int:
    from server.app import create_server
    from server.blobs import BlobStoreError
    from server.store import StoreError

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # A stop signal recorded since the process began (server/signals.py) is delivered here, and the
    # sibling finishes starting, then drains: it must not die half-started.
    signals.catch(loop, stop.set)
    try:
        try:
            server = await create_server(config, member)
        except (ConfigError, StoreError, BlobStoreError, OSError, RuntimeError) as exc:
            prefix = "blob store: " if isinstance(exc, BlobStoreError) else ""
            conn.send(("error", f"{prefix}{exc}"))
            return 2
        return await _sibling_run(config, member, conn, server, stop)
    finally:
        signals.hold()


async def _sibling_run(config: ServerConfig, member: Member, conn: Connection, server: Any,
                       stop: asyncio.Event) -> int:
    assert server.shared is not None
    shared = server.shared
    loop = asyncio.get_running_loop()
    parent_gone = False

    def on_parent() -> None:
        nonlocal parent_gone
        try:
            kind, _ = conn.recv()
        except (EOFError, OSError):   # the parent closed its end, or died
            kind = None
        if kind == "stop":   # the group stops (sent before this process could read it, perhaps): drain
            stop.set()
            return
        loop.remove_reader(conn.fileno())
        parent_gone = True
        stop.set()

    loop.add_reader(conn.fileno(), on_parent)
    if server.tls is not None:
        tls = server.tls

        def on_sighup() -> None:
            log.info("process %d: SIGHUP: new TLS connections re-read %s", member.index + 1, tls.files.cert)
            tls.reload_now()

        loop.add_signal_handler(signal.SIGHUP, on_sighup)

    async def sync() -> None:
        while True:
            admission = server.registry.admission
            if admission is not None:
                shared.set_headroom(admission.headroom())
            await server.health.refresh()
            await asyncio.sleep(_SYNC_S)

    syncing = asyncio.create_task(sync())
    try:
        conn.send(("ready", os.getpid()))
    except OSError:   # the parent died while this process started
        on_parent()
    await stop.wait()
    syncing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await syncing
    if parent_gone:
        log.warning("process %d: the parent process is gone: stopping now", member.index + 1)
    seconds = 0.0 if parent_gone else config.drain_seconds
    await server.drain(seconds)
    if parent_gone:
        # The parent removes the run directory as it exits; one that was killed could not, and each
        # crash would leave its shared state and metrics files in the temporary directory for good.
        # Whichever sibling gets here first removes it (the others' maps and open files stay valid).
        shutil.rmtree(member.run_dir, ignore_errors=True)
    return 0


# -- the parent -----------------------------------------------------------------------------------------


@dataclass
class _Sibling:
    index: int
    process: multiprocessing.process.BaseProcess
    conn: Connection
    started: float
    ready: bool = False


class _Group:
    def __init__(self, config: ServerConfig, processes: int, run_dir: Path, port: int,
                 hosts: tuple[str, ...]) -> None:
        self.config = config
        self.hosts = hosts
        self.processes = processes
        self.run_dir = run_dir
        self.port = port
        self.started = False    # every sibling served once (the ``listening on`` moment)
        self.draining = False   # from the stop signal (or a failed start) on
        self.siblings: dict[int, _Sibling] = {}
        self.pause = {i: _RESTART_MIN_S for i in range(processes)}
        self.workers = split_workers(config.workers if config.workers is not None else cores(), processes)
        self.own_ports: tuple[int, ...] = ()
        self.exited: asyncio.Queue[int] = asyncio.Queue()
        self._ctx = multiprocessing.get_context("spawn")

    def start(self, index: int) -> None:
        from server.shared import SharedState  # noqa: F401  (the siblings import it too)

        loop = asyncio.get_running_loop()
        config = dataclasses.replace(self.config, port=self.port, workers=self.workers[index],
                                     metrics_port=None, health_http_port=None)
        member = Member(index, self.processes, self.run_dir, self.own_ports, self.hosts)
        mine, theirs = self._ctx.Pipe()
        process = self._ctx.Process(target=_sibling_main, args=(config, member, theirs),
                                    name=f"hushwire-serve-{index}")
        process.start()
        theirs.close()
        sibling = _Sibling(index, process, mine, time.monotonic())
        self.siblings[index] = sibling
        loop.add_reader(process.sentinel, self._on_exit, index)

    def _on_exit(self, index: int) -> None:
        sibling = self.siblings[index]
        asyncio.get_running_loop().remove_reader(sibling.process.sentinel)
        self.exited.put_nowait(index)

    def stop_all(self) -> None:
        """Ask every sibling to drain, through its pipe: a sibling still starting reads it once it
        serves (a signal could find it before it can handle one)."""
        for sibling in self.siblings.values():
            with contextlib.suppress(OSError):
                sibling.conn.send(("stop", None))

    def signal_all(self, sig: int) -> None:
        for sibling in self.siblings.values():
            if sibling.process.is_alive() and sibling.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(sibling.process.pid, sig)


def _metrics_registry(run_dir: Path, store: Any, health: _GroupHealth) -> Any:
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    from server.metrics import GroupCollector, StoreCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(run_dir / _METRICS_DIR))  # type: ignore[no-untyped-call]
    registry.register(StoreCollector(store))
    registry.register(GroupCollector(health))
    return registry


class _GroupHealth:
    """The group's health for the parent's HTTP mirror and metrics, read from the shared state.

    The rule (docs/deploy.md, "Every core"): the group is ready once every sibling has started
    (the ``listening on`` moment) and from then on while at least one sibling serves and the group
    is not draining. A sibling that dies is replaced, and while it is away the kernel gives new
    connections to the siblings that still listen on the port, so the replica still serves: a
    balancer must not take it out for that (and the replacement listens only once it serves,
    server/app.py, so it takes no connection it would refuse). It is not ready before start-up ends, while no sibling
    serves, or once the drain began. Each sibling's state is in the answer's body and in the
    ``hushwire_server_processes`` metric."""

    def __init__(self, group: _Group, shared: Any) -> None:
        self._group = group
        self._shared = shared

    @property
    def serving(self) -> bool:
        from server.shared import SERVING

        group = self._group
        return group.started and not group.draining and any(v.state == SERVING for v in self._shared.slots())

    @property
    def live_serving(self) -> bool:
        return self.serving and not self._shared.group_full()

    def states(self) -> dict[str, int]:
        """How many siblings are in each state (every state named, 0 included)."""
        from server.shared import STATE_NAMES

        counts = dict.fromkeys(STATE_NAMES.values(), 0)
        for v in self._shared.slots():
            counts[STATE_NAMES[v.state]] += 1
        return counts

    def describe(self) -> str:
        """One line per sibling: its number, state, whether it is full, and its pid."""
        from server.shared import SERVING, STATE_NAMES

        lines = []
        for i, v in enumerate(self._shared.slots()):
            full = ", full" if v.state == SERVING and v.full else ""
            pid = f" (pid {v.pid})" if v.pid else ""
            lines.append(f"process {i + 1} of {self._group.processes}: {STATE_NAMES[v.state]}{full}{pid}\n")
        return "".join(lines)


async def _prepare_store(config: ServerConfig) -> Any:
    """Open the store once before the siblings do (migrations, generated secrets), and do what one
    process must do for all: requeue the embedded store's unfinished jobs, free its webhook leases."""
    from server.backends import open_blobs, open_store
    from server.logs import event
    from server.signing import load_secret

    blobs = open_blobs(config)
    await asyncio.to_thread(blobs.check)
    store = await asyncio.to_thread(open_store, config, timeout=config.store_timeout)
    try:
        secret = load_secret(config.signing_secret, config.signing_secret_file, config.data_dir)
        previous = config.signing_secret_previous.encode() if config.signing_secret_previous else None
        await asyncio.to_thread(store.check_secret, "signing_secret", secret, previous)
        if store.dialect == "sqlite":
            n = await asyncio.to_thread(store.requeue)
            if n:
                event(logging.getLogger("hushwire.jobs"), "jobs requeued", count=n,
                      reason="unfinished at the previous stop")
            await asyncio.to_thread(store.release_webhook_leases)
    except BaseException:
        store.close()
        raise
    return store


async def run_group(config: ServerConfig, processes: int) -> int:
    """Run ``processes`` sibling servers on one port until SIGTERM/SIGINT; return the exit status."""
    if not hasattr(socket, "SO_REUSEPORT") or not sys.platform.startswith("linux"):
        raise ConfigError("--processes above 1 needs Linux (SO_REUSEPORT balancing)")
    # A stop signal at any moment is a normal stop (server/signals.py): caught from here on, and the
    # siblings are started only if none came while the store was being prepared.
    stop = asyncio.Event()
    signals.catch(asyncio.get_running_loop(), stop.set)
    try:
        return await _run_group(config, processes, stop)
    finally:
        signals.hold()   # asyncio.run removes its handlers as it ends: a late signal must not kill the exit


async def _run_group(config: ServerConfig, processes: int, stop: asyncio.Event) -> int:
    from prometheus_client import start_http_server

    from server import health_http
    from server.shared import SharedState

    config.data_dir.mkdir(parents=True, exist_ok=True)
    holders, port = reserve_port(config.host, config.port)
    mirror_sock = health_http.bind(config.health_http_host, config.health_http_port) \
        if config.health_http_port is not None else None
    run_dir = Path(tempfile.mkdtemp(prefix="hushwire-serve-"))
    store = shared = None
    try:
        (run_dir / _METRICS_DIR).mkdir()
        shared = SharedState.create(run_dir / _STATE_FILE, processes)
        log.info("starting %d server processes on %s:%d", processes, config.host, port)
        store = await _prepare_store(config)
        if stop.is_set():
            log.info("stopped before the server processes started")
            return 0
        hosts = tuple(grpc_host(h.family, h.getsockname()[0]) for h in holders)
        group = _Group(config, processes, run_dir, port, hosts)
        health = _GroupHealth(group, shared)
        mirror = None
        if mirror_sock is not None:
            mirror = health_http.HealthMirror(health, mirror_sock)
            group.own_ports += (mirror.port,)
        if config.metrics_port is not None:
            start_http_server(config.metrics_port, addr=config.metrics_host,
                              registry=_metrics_registry(run_dir, store, health))
            group.own_ports += (config.metrics_port,)
        return await _supervise(group, shared, mirror, stop)
    finally:
        for holder in holders:
            holder.close()
        if store is not None:
            store.close()
        if shared is not None:
            shared.close()
        shutil.rmtree(run_dir, ignore_errors=True)


async def _supervise(group: _Group, shared: Any, mirror: Any, stop: asyncio.Event) -> int:
    from prometheus_client import multiprocess

    config = group.config
    loop = asyncio.get_running_loop()

    def on_stop() -> None:
        group.draining = True   # the mirror answers 503 from this moment, before any sibling heard of it
        stop.set()

    for sig in signals.STOP_SIGNALS:
        loop.add_signal_handler(sig, on_stop)
    if config.tls_cert is not None:   # as with one process: SIGHUP re-reads TLS files, else it ends the server
        loop.add_signal_handler(signal.SIGHUP, lambda: group.signal_all(signal.SIGHUP))
    if mirror is not None:
        await mirror.start()
    if not stop.is_set():   # a stop meanwhile: nothing to start (the loop below ends at once)
        for i in range(group.processes):
            group.start(i)
    status = 0
    failed: str | None = None
    pending = set(range(group.processes))
    host = f"[{config.host}]" if ":" in config.host else config.host
    stopping = asyncio.create_task(stop.wait())
    restarts: set[asyncio.Task[None]] = set()

    def read(sibling: _Sibling) -> str | None:
        """Handle what ``sibling`` sent; returns why it could not start, if it said so."""
        error = None
        with contextlib.suppress(EOFError, OSError):
            while sibling.conn.poll():
                kind, detail = sibling.conn.recv()
                if kind == "ready":
                    sibling.ready = True
                    log.info("process %d of %d serving (pid %s)", sibling.index + 1, group.processes, detail)
                    if sibling.index in pending:
                        pending.discard(sibling.index)
                        if not pending:
                            group.started = True
                            log.info("listening on %s:%d (%d processes)%s", host, group.port, group.processes,
                                     "" if config.tls_cert is None else " (TLS)")
                elif kind == "error" and sibling.index in pending:
                    error = str(detail)
                elif kind == "error":
                    # A replacement: the group serves on without it and tries again (below). Its reason
                    # is logged now, and it is not the whole server's start-up failure at the drain.
                    log.error("process %d did not start: %s", sibling.index + 1, detail)
        return error
    while True:
        # Messages from siblings (ready, or why they could not start).
        for sibling in list(group.siblings.values()):
            failed = read(sibling) or failed
        if failed is not None and pending:
            break   # a sibling could not start: the whole server does not start
        if stop.is_set():
            break
        getting = asyncio.create_task(group.exited.get())
        done, _ = await asyncio.wait({getting, stopping}, timeout=0.1, return_when=asyncio.FIRST_COMPLETED)
        if getting not in done:
            getting.cancel()
            continue
        index = getting.result()
        sibling = group.siblings[index]
        sibling.process.join()
        failed = read(sibling) or failed   # its last words, before its pipe goes
        sibling.conn.close()
        code = sibling.process.exitcode
        multiprocess.mark_process_dead(sibling.process.pid, str(group.run_dir / _METRICS_DIR))  # type: ignore[no-untyped-call]
        shared.clear(index)
        if index in pending:
            failed = failed or f"server process {index + 1} exited with status {code} while starting"
            break
        pause = group.pause[index] if time.monotonic() - sibling.started < _STARTED_OK_S else _RESTART_MIN_S
        group.pause[index] = min(_RESTART_MAX_S, pause * 2)
        log.error("process %d (pid %s) exited with status %s: starting another in %.0f s", index + 1,
                  sibling.process.pid, code, pause)

        async def restart(i: int = index, wait: float = pause) -> None:
            await asyncio.sleep(wait)
            if not stop.is_set():
                group.start(i)

        task = asyncio.create_task(restart())
        restarts.add(task)
        task.add_done_callback(restarts.discard)
    for task in restarts:
        task.cancel()
    stopping.cancel()
    group.draining = True
    if failed is not None:
        log.error("a server process could not start: %s", failed)
        group.stop_all()
        status = 2
    else:
        log.info("shutting down: draining %d process(es) for up to %.1f s", group.processes, config.drain_seconds)
        group.stop_all()
    deadline = time.monotonic() + config.drain_seconds + _KILL_AFTER_S
    for sibling in group.siblings.values():
        await asyncio.to_thread(sibling.process.join, max(0.0, deadline - time.monotonic()))
        if sibling.process.is_alive():
            log.error("process %d did not stop in time: killing it", sibling.index + 1)
            sibling.process.kill()
            await asyncio.to_thread(sibling.process.join)
            status = status or 1
        elif sibling.process.exitcode not in (0, None, *(-sig for sig in signals.STOP_SIGNALS)) and failed is None:
            # A stop signal sent to every process (a service manager's, Ctrl-C) can end a sibling in the
            # first moments of its interpreter, before it can drain: nothing had started there to drain.
            status = status or 1
        with contextlib.suppress(OSError):
            sibling.conn.close()
    if mirror is not None:
        await mirror.stop()
    if failed is not None:
        raise ConfigError(failed)
    log.info("stopped")
    return status
