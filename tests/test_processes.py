"""``hushwire serve --processes N`` (server/group.py): sibling server processes on one port.

Real processes on loopback ports: the group shares its port and nobody else gets it; connections
land on every sibling; the per-user stream limit and ``--max-streams`` count the whole group;
metrics are summed and health is the group's; SIGTERM drains every sibling; a killed parent takes
its siblings with it; job workers are shared out and only the parent requeues at start.
Which sibling serves a channel is read from /proc: the server-side socket of the channel's TCP
connection belongs to one sibling's file descriptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import soundfile as sf
from conftest import ServerProcess, create_key, free_port, run_cli, scrape_metrics, start_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tls_fixtures import PKI, pki  # noqa: F401  (fixture)

from client.jobs import JobsClient
from hushwire.contract.job_status import STATUS_NAMES
from hushwire.v1 import enhancer_pb2, enhancer_pb2_grpc, jobs_pb2
from server.group import split_workers

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Separate TCP connections per channel (grpc shares one between equal channels otherwise).
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1), ("grpc.enable_http_proxy", 0)]
_PIDS = re.compile(r"process (\d+) of \d+ serving \(pid (\d+)\)")


def _siblings(srv: ServerProcess) -> dict[int, int]:
    """Sibling index (1-based) -> pid, from the parent's log."""
    return {int(i): int(pid) for i, pid in _PIDS.findall(srv.log)}


def _inodes(pid: int) -> set[int]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            found.add(int(link[8:-1]))
    return found


def _tcp() -> list[tuple[int, int, int]]:
    """Established TCP sockets on this host: (local port, remote port, inode)."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "01":   # ESTABLISHED
                rows.append((int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16), int(f[9])))
    return rows


def _client_ports(port: int) -> set[int]:
    """Local ports of this process's connections to ``port``."""
    mine = _inodes(os.getpid())
    return {local for local, remote, inode in _tcp() if remote == port and inode in mine}


def _serving_sibling(srv: ServerProcess, client_port: int) -> int:
    """The index of the sibling holding the server side of the connection from ``client_port``."""
    inode = next(i for local, remote, i in _tcp() if local == srv.port and remote == client_port)
    owners = [index for index, pid in _siblings(srv).items() if inode in _inodes(pid)]
    assert len(owners) == 1, owners
    return owners[0]


async def _connect(srv: ServerProcess, n: int) -> list[tuple[grpc.aio.Channel, int]]:
    """``n`` channels, each on its own connection, with the sibling each one reached."""
    out = []
    for _ in range(n):
        before = _client_ports(srv.port)
        ch = grpc.aio.insecure_channel(srv.target, options=OWN_CONNECTION)
        await asyncio.wait_for(ch.channel_ready(), 10)
        new = _client_ports(srv.port) - before
        assert len(new) == 1, new
        out.append((ch, _serving_sibling(srv, new.pop())))
    return out


@dataclass
class _Stream:
    call: grpc.aio.StreamStreamCall
    feed: asyncio.Queue[bytes | None]

    async def close(self) -> None:
        await self.feed.put(None)
        while await asyncio.wait_for(self.call.read(), 10) is not grpc.aio.EOF:
            pass


async def _open(ch: grpc.aio.Channel, key: str) -> _Stream | str:
    """Open a 16 kHz mono stream; the stream once the server answered its config, or the refusal's code."""
    feed: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[enhancer_pb2.StreamEnhanceRequest]:
        yield enhancer_pb2.StreamEnhanceRequest(config=enhancer_pb2.StreamConfig(
            sample_rate_hz=16000, channels=1, encoding=enhancer_pb2.SAMPLE_ENCODING_PCM16))
        while (chunk := await feed.get()) is not None:
            yield enhancer_pb2.StreamEnhanceRequest(audio=chunk)

    call = enhancer_pb2_grpc.EnhancerStub(ch).StreamEnhance(requests(), metadata=(("authorization", key),))
    try:
        await asyncio.wait_for(call.read(), 10)
    except grpc.aio.AioRpcError as err:
        return str(dict(err.trailing_metadata() or ()).get("hushwire-error-code"))
    await feed.put(bytes(640))   # one 20 ms chunk: the stream is really running
    await asyncio.wait_for(call.read(), 10)
    return _Stream(call, feed)


def _health(ch: grpc.Channel, service: str) -> int:
    return int(health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def _mirror(port: int, path: str) -> int:
    return _mirror_answer(port, path)[0]


def _mirror_answer(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _wait_log(srv: ServerProcess, text: str, count: int = 1, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while srv.log.count(text) < count:
        assert time.monotonic() < deadline and srv.proc.poll() is None, srv.log
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def test_split_workers() -> None:
    assert split_workers(3, 2) == [2, 1]
    assert split_workers(1, 2) == [1, 0]
    assert split_workers(0, 3) == [0, 0, 0]
    assert split_workers(8, 4) == [2, 2, 2, 2]


def test_siblings_share_the_port_and_nobody_else_gets_it(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--processes", "2", "--workers", "3")
    try:
        siblings = _siblings(srv)
        assert sorted(siblings) == [1, 2], srv.log
        assert srv.log.count("listening on") == 1, srv.log

        async def spread() -> dict[int, int]:
            chans = await _connect(srv, 12)
            try:
                reached: dict[int, int] = {}
                for _, index in chans:
                    reached[index] = reached.get(index, 0) + 1
                return reached
            finally:
                for ch, _ in chans:
                    await ch.close()

        reached = asyncio.run(spread())
        # The kernel hashes each connection to a sibling: 12 connections all on one has odds 1 in 2048.
        assert sorted(reached) == [1, 2], reached

        # --workers is the total: 2 + 1 job worker processes under the siblings.
        workers = sorted(len(_children(pid)) for pid in siblings.values())
        assert workers == [1, 2], workers

        # Another server on the port fails with a one-line error, however many processes it asks for.
        for processes in ("2", "1"):
            out = run_cli("serve", "--port", str(srv.port), "--data-dir", str(tmp_path / f"other{processes}"),
                          "--workers", "0", "--processes", processes, check=False)
            assert out.returncode == 2, out.stderr
            assert f"cannot listen on 127.0.0.1:{srv.port}" in out.stderr and "Traceback" not in out.stderr, \
                out.stderr
        # So does any plain socket that does not set SO_REUSEPORT (the parent's holder socket keeps the port).
        with socket.socket() as s, pytest.raises(OSError):
            s.bind(("127.0.0.1", srv.port))
    finally:
        assert srv.stop() == 0, srv.log
    with socket.socket() as s:   # all gone: the port is free again
        s.bind(("127.0.0.1", srv.port))


def _nss_wrapper() -> str:
    """libnss_wrapper (Debian's libnss-wrapper, installed by .ci/run): with ``NSS_WRAPPER_HOSTS`` it makes
    one process resolve names from a hosts file of its own, so a test can give ``localhost`` two addresses."""
    import glob

    found = sorted(glob.glob("/usr/lib/*/libnss_wrapper.so") + glob.glob("/usr/lib/libnss_wrapper.so"))
    if not found:
        pytest.skip("libnss-wrapper is not installed (apt-get install libnss-wrapper)")
    return found[0]


@pytest.mark.slow
@pytest.mark.parametrize("host", ["localhost", "0.0.0.0"])
def test_a_name_with_several_addresses_is_held_and_served_on_each(tmp_path: Path, host: str) -> None:
    """``--host localhost`` where it names 127.0.0.1 and ::1: the group serves on both, and holds both, so
    while its siblings are down (being replaced) nobody else can bind either address on its port. The
    same for ``0.0.0.0``, which grpc serves from one dual-stack ``[::]`` socket: IPv6 is held too."""
    env = None
    if host == "localhost":
        hosts = tmp_path / "hosts"
        hosts.write_text("127.0.0.1 localhost\n::1 localhost\n")
        env = {**os.environ, "LD_PRELOAD": _nss_wrapper(), "NSS_WRAPPER_HOSTS": str(hosts)}
    srv = start_server(tmp_path, "--host", host, "--processes", "2", "--workers", "0", env=env)
    try:
        assert f"listening on {host}:{srv.port} (2 processes)" in srv.log
        for target in (f"127.0.0.1:{srv.port}", f"[::1]:{srv.port}"):
            with grpc.insecure_channel(target) as ch:
                assert _health(ch, "") == SERVING, target
        old = _siblings(srv)
        for index, pid in old.items():
            os.kill(pid, signal.SIGKILL)
            _wait_log(srv, f"process {index} (pid {pid}) exited with status -9")
        # No sibling listens now (each is replaced after a pause of at least 1 s): only the holders keep
        # the port, on both addresses. Neither a plain socket nor another serve gets either one.
        for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            with socket.socket(family) as s, pytest.raises(OSError):
                s.bind((address, srv.port))
        assert srv.log.count("serving (pid") == 2, "a replacement already serves: the check above proved nothing"
        out = run_cli("serve", "--host", "::1", "--port", str(srv.port), "--data-dir", str(tmp_path / "other"),
                      "--workers", "0", "--processes", "1", check=False)
        assert out.returncode == 2 and f"cannot listen on ::1:{srv.port}" in out.stderr, out.stderr
        _wait_log(srv, "process 1 of 2 serving", 2)
        _wait_log(srv, "process 2 of 2 serving", 2)
    finally:
        assert srv.stop() == 0, srv.log


def test_a_sibling_that_cannot_start_stops_the_whole_server(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    out = run_cli("serve", "--port", "0", "--data-dir", str(tmp_path), "--processes", "2", "--workers", "0",
                  "--tls-cert", missing, "--tls-key", missing, check=False)
    assert out.returncode == 2, out.stderr
    assert f"hushwire: cannot read the TLS file {missing}" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert "listening on" not in out.stderr


def test_stream_limits_count_every_sibling(tmp_path: Path) -> None:
    key, other = create_key(tmp_path, "--name", "a"), create_key(tmp_path, "--name", "b")
    srv = start_server(tmp_path, "--processes", "2", "--workers", "0", "--max-streams-per-user", "3",
                       "--max-streams", "4")

    async def scenario() -> None:
        chans = await _connect(srv, 16)
        on = {i: [ch for ch, s in chans if s == i] for i in (1, 2)}
        assert len(on[1]) >= 2 and len(on[2]) >= 2, {i: len(c) for i, c in on.items()}
        a1, a2, b1, b2 = on[1][0], on[1][1], on[2][0], on[2][1]
        try:
            opened = [await _open(ch, key) for ch in (a1, b1, a2)]
            assert all(isinstance(s, _Stream) for s in opened), opened
            # The user has 3 streams across the two siblings: a 4th is refused on either one.
            assert await _open(b2, key) == "RATE_LIMITED"
            assert await _open(a1, key) == "RATE_LIMITED"
            # Another user takes the 4th slot of --max-streams; the 5th stream is over the group's cap.
            fourth = await _open(b2, other)
            assert isinstance(fourth, _Stream), fourth
            assert await _open(b1, other) == "OVERLOADED"
            # A closed stream frees its slot for the whole group.
            first = opened.pop(0)
            assert isinstance(first, _Stream)
            await first.close()
            await fourth.close()
            again = await _open(b2, key)
            assert isinstance(again, _Stream), again
            opened.append(again)
            for s in opened:
                assert isinstance(s, _Stream)
                await s.close()
        finally:
            for ch, _ in chans:
                await ch.close()

    try:
        asyncio.run(scenario())
    finally:
        assert srv.stop() == 0, srv.log


@pytest.mark.slow
def test_a_full_users_table_is_its_own_refusal_not_the_cap(tmp_path: Path) -> None:
    """The group counts streams per user in a table of USER_ROWS rows (server/shared.py). With that many
    other users streaming, a new user's stream is OVERLOADED for ``users``, not for ``cap``: the
    operator's --max-streams was never reached. The test plays those users itself, through the
    group's own shared state, as a sibling would count them."""
    from hushwire.contract.metadata import REFUSED_FOR_KEY, REFUSED_FOR_USERS
    from server.shared import USER_ROWS, SharedState

    key = create_key(tmp_path)
    (tmp_path / "tmp").mkdir()
    metrics = free_port()
    srv = start_server(tmp_path, "--processes", "2", "--workers", "0", "--metrics-port", str(metrics),
                       "--max-streams", str(10 * USER_ROWS), env={**os.environ, "TMPDIR": str(tmp_path / "tmp")})
    [run_dir] = (tmp_path / "tmp").iterdir()
    others = SharedState.attach(run_dir / "state", 2, 0)
    others_uids = range(10**6, 10**6 + USER_ROWS)

    async def refusal() -> tuple[str | None, str | None]:
        async with grpc.aio.insecure_channel(srv.target) as ch:
            opened = await _open(ch, key)
            if isinstance(opened, _Stream):
                await opened.close()
                return None, None
            call = enhancer_pb2_grpc.EnhancerStub(ch).StreamEnhance(iter([enhancer_pb2.StreamEnhanceRequest(
                config=enhancer_pb2.StreamConfig(sample_rate_hz=16000, channels=1,
                                                 encoding=enhancer_pb2.SAMPLE_ENCODING_PCM16))]),
                metadata=(("authorization", key),))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call.read()
            trailers = dict(err.value.trailing_metadata() or ())
            return opened, trailers.get(REFUSED_FOR_KEY)

    try:
        for uid in others_uids:
            others.open_stream(uid, 256, None)
        assert asyncio.run(refusal()) == ("OVERLOADED", REFUSED_FOR_USERS)
        m = scrape_metrics(metrics)
        assert m[("hushwire_streams_refused_total", (("reason", REFUSED_FOR_USERS),))] == 2
        assert ("hushwire_streams_refused_total", (("reason", "cap"),)) not in m
        for uid in others_uids:   # they leave: the table has room again
            others.close_stream(uid)
        assert asyncio.run(refusal()) == (None, None)
    finally:
        others.close()
        assert srv.stop() == 0, srv.log


@pytest.mark.slow
def test_metrics_are_summed_and_health_is_the_groups(tmp_path: Path) -> None:
    """A budget so small that one stream fills a sibling: with one stream on each, the group is full."""
    key = create_key(tmp_path)
    metrics, mirror = free_port(), free_port()
    srv = start_server(tmp_path, "--processes", "2", "--workers", "0", "--metrics-port", str(metrics),
                       "--health-http-port", str(mirror), "--live-cpu-budget", "0.001")

    async def scenario() -> None:
        chans = await _connect(srv, 16)
        on = {i: [ch for ch, s in chans if s == i] for i in (1, 2)}
        assert on[1] and on[2], {i: len(c) for i, c in on.items()}
        try:
            assert _mirror(mirror, "/readyz") == 200 and _mirror(mirror, "/readyz/live") == 200
            first = await _open(on[1][0], key)
            assert isinstance(first, _Stream), first
            # One sibling full, the other not: the group still takes live streams.
            await asyncio.sleep(1.0)
            with grpc.insecure_channel(srv.target) as ch:
                assert _health(ch, "hushwire.v1.Enhancer") == SERVING
            assert _mirror(mirror, "/readyz/live") == 200
            assert await _open(on[1][-1], key) == "OVERLOADED"    # ... but not on the full one
            second = await _open(on[2][0], key)
            assert isinstance(second, _Stream), second
            # Both full: the group's Enhancer health is NOT_SERVING on every sibling; jobs still served.
            deadline = time.monotonic() + 5
            while _mirror(mirror, "/readyz/live") != 503:
                assert time.monotonic() < deadline, "the group never reported full"
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)   # each sibling republishes the group's state within 0.2 s
            for i in (1, 2):
                for service, want in (("hushwire.v1.Enhancer", NOT_SERVING), ("hushwire.v1.Jobs", SERVING),
                                      ("", SERVING)):
                    got = health_pb2_grpc.HealthStub(on[i][0]).Check(
                        health_pb2.HealthCheckRequest(service=service), timeout=5)
                    assert (i, service, (await got).status) == (i, service, want)
            assert _mirror(mirror, "/readyz") == 200
            m = scrape_metrics(metrics)
            assert m[("hushwire_streams_open", ())] == 2
            assert m[("hushwire_streams_total", ())] == 2
            assert m[("hushwire_live_full", ())] == 1
            assert m[("hushwire_streams_refused_total", (("reason", "load"),))] == 1
            assert m[("hushwire_jobs_queued", ())] == 0     # the store's gauges, once
            assert len([k for k in m if k[0] == "hushwire_event_loop_lag_seconds"]) == 2   # one per sibling
            assert sorted(v for k, v in m.items() if k[0] == "hushwire_process_streams_open") == [1, 1]
            for s in (first, second):
                await s.close()
            m = scrape_metrics(metrics)
            assert m[("hushwire_streams_open", ())] == 0
            assert m[("hushwire_audio_seconds_total", (("path", "stream"),))] == pytest.approx(0.04)
        finally:
            for ch, _ in chans:
                await ch.close()

    try:
        asyncio.run(scenario())
    finally:
        assert srv.stop() == 0, srv.log


@pytest.mark.slow
def test_sigterm_drains_every_sibling(tmp_path: Path) -> None:
    key = create_key(tmp_path)
    srv = start_server(tmp_path, "--processes", "2", "--workers", "0", "--drain-seconds", "10")
    siblings = _siblings(srv)

    async def scenario() -> None:
        chans = await _connect(srv, 16)
        on = {i: [ch for ch, s in chans if s == i] for i in (1, 2)}
        assert on[1] and on[2], {i: len(c) for i, c in on.items()}
        streams = [await _open(on[i][0], key) for i in (1, 2)]
        os.kill(srv.proc.pid, signal.SIGTERM)
        await asyncio.sleep(1.0)
        # Draining: open streams go on (both siblings), new ones are refused.
        for s in streams:
            assert isinstance(s, _Stream), s
            await s.feed.put(bytes(640))
            assert (await asyncio.wait_for(s.call.read(), 5)).audio is not None
        refused = await _open(on[1][1] if len(on[1]) > 1 else on[2][-1], key)
        assert refused in ("SERVICE_UNAVAILABLE", "None"), refused
        for s in streams:
            assert isinstance(s, _Stream)
            await s.close()
            assert await s.call.code() == grpc.StatusCode.OK
        for ch, _ in chans:
            await ch.close()

    asyncio.run(scenario())
    assert srv.proc.wait(30) == 0, srv.log
    assert not any(_alive(pid) for pid in siblings.values())
    assert "stopped" in srv.log


@pytest.mark.slow
def test_a_killed_parent_takes_its_siblings_along(tmp_path: Path) -> None:
    run_root = tmp_path / "tmp"   # where the group's run directory (shared state, metrics files) goes
    run_root.mkdir()
    srv = start_server(tmp_path, "--processes", "2", "--workers", "0", env={**os.environ, "TMPDIR": str(run_root)})
    siblings = _siblings(srv)
    assert [p.name[:15] for p in run_root.iterdir()] == ["hushwire-serve-"]
    srv.proc.kill()
    srv.proc.wait()
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in siblings.values()):
        assert time.monotonic() < deadline, "siblings outlived their parent"
        time.sleep(0.1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", srv.port))
    # The parent could not remove its run directory: its last sibling did.
    assert list(run_root.iterdir()) == []


@pytest.mark.slow
def test_only_the_parent_requeues_at_start(tmp_path: Path) -> None:
    """Kill the whole group mid-job (no drain requeues it); the next start requeues it once, and it completes."""
    key = create_key(tmp_path)
    src = tmp_path / "long.wav"
    sf.write(str(src), (np.random.default_rng(0).standard_normal((48000 * 120, 2)) * 0.05).astype(np.float32), 48000)
    flags = ("--processes", "2", "--workers", "2")
    # Everything is SIGKILLed below, so nobody removes the group's run directory: keep it in tmp_path.
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    srv = start_server(tmp_path, *flags, env=env)
    with JobsClient(srv.target, key) as c:
        job = c.submit(src)
        deadline = time.monotonic() + 60
        while (j := c.get(job.job_id)).status != jobs_pb2.JOB_STATUS_PROCESSING:
            assert j.status not in (jobs_pb2.JOB_STATUS_COMPLETED, jobs_pb2.JOB_STATUS_FAILED), j
            assert time.monotonic() < deadline, "job never started processing"
            time.sleep(0.05)
    for pid in _siblings(srv).values():   # siblings first (their workers die with them), then the parent
        os.kill(pid, signal.SIGKILL)
    srv.proc.kill()
    srv.proc.wait()
    srv2 = start_server(tmp_path, *flags, env=env)
    try:
        with JobsClient(srv2.target, key) as c:
            done = c.wait(job.job_id, timeout=240)
            assert STATUS_NAMES[done.status] == "completed", done.error
        assert srv2.log.count("jobs requeued") == 1, srv2.log
        assert "jobs requeued count=1 reason='unfinished at the previous stop'" in srv2.log
    finally:
        assert srv2.stop() == 0, srv2.log


@pytest.mark.slow
def test_the_group_stays_ready_while_one_sibling_is_replaced(tmp_path: Path) -> None:
    """A balancer in front of the group sees it ready while at least one sibling serves (the kernel gives
    new connections to the siblings still listening), with each sibling's state in the body and the
    metrics; not ready while none serves, nor once it drains."""
    key = create_key(tmp_path)
    metrics, mirror = free_port(), free_port()
    srv = start_server(tmp_path, "--processes", "2", "--workers", "0", "--metrics-port", str(metrics),
                       "--health-http-port", str(mirror), "--drain-seconds", "10")

    def processes() -> dict[str, float]:
        return {dict(labels)["state"]: v for (name, labels), v in scrape_metrics(metrics).items()
                if name == "hushwire_server_processes"}

    try:
        old = _siblings(srv)
        assert _mirror_answer(mirror, "/readyz") == (200, f"SERVING\nprocess 1 of 2: serving (pid {old[1]})\n"
                                                           f"process 2 of 2: serving (pid {old[2]})\n")
        assert processes() == {"starting": 0, "serving": 2, "draining": 0, "stopped": 0}
        assert scrape_metrics(metrics)[("hushwire_ready", ())] == 1

        # One sibling dead: it is replaced after a pause of 1 s, and meanwhile the other serves the port.
        os.kill(old[1], signal.SIGKILL)
        _wait_log(srv, f"process 1 (pid {old[1]}) exited with status -9")
        status, body = _mirror_answer(mirror, "/readyz")
        assert status == 200, body
        assert re.search(r"^process 1 of 2: (stopped|starting)", body, re.M) and \
            f"process 2 of 2: serving (pid {old[2]})" in body, body
        assert _mirror(mirror, "/readyz/live") == 200
        assert processes()["serving"] == 1 and scrape_metrics(metrics)[("hushwire_ready", ())] == 1
        with grpc.insecure_channel(srv.target) as ch:   # and the port does serve
            assert _health(ch, "") == SERVING

        # Both dead: nothing serves the port, so the group is not ready until a replacement serves.
        os.kill(old[2], signal.SIGKILL)
        _wait_log(srv, f"process 2 (pid {old[2]}) exited with status -9")
        status, body = _mirror_answer(mirror, "/readyz")
        assert status == 503 and body.startswith("NOT_SERVING\n") and "serving" not in body.split("\n", 1)[1], body
        assert processes()["serving"] == 0 and scrape_metrics(metrics)[("hushwire_ready", ())] == 0
        _wait_log(srv, "process 1 of 2 serving", 2)
        _wait_log(srv, "process 2 of 2 serving", 2)
        assert _mirror(mirror, "/readyz") == 200

        # Draining: not ready at once, while its streams finish.
        async def drain() -> None:
            chans = await _connect(srv, 1)
            try:
                stream = await _open(chans[0][0], key)
                assert isinstance(stream, _Stream), stream
                os.kill(srv.proc.pid, signal.SIGTERM)
                deadline = time.monotonic() + 5
                while (answer := _mirror_answer(mirror, "/readyz"))[0] != 503:
                    assert time.monotonic() < deadline, answer
                    await asyncio.sleep(0.02)
                await stream.feed.put(bytes(640))   # the stream still flows
                assert (await asyncio.wait_for(stream.call.read(), 5)).audio is not None
                await stream.close()
            finally:
                await chans[0][0].close()

        asyncio.run(drain())
    finally:
        assert srv.stop() == 0, srv.log


@pytest.mark.slow
def test_a_replacement_takes_no_connection_before_it_serves(tmp_path: Path) -> None:
    """The group stays ready while a sibling is replaced (above), so the replacement must not take new
    connections while it starts: it listens only once it serves, and until then the kernel gives every
    new connection to the sibling that serves. Its job workers' warm-up makes that start last."""
    srv = start_server(tmp_path, "--processes", "2", "--workers", "4")
    try:
        old = _siblings(srv)
        os.kill(old[1], signal.SIGKILL)
        _wait_log(srv, f"process 1 (pid {old[1]}) exited with status -9")
        during = []   # health of "" on a new connection each time, while the replacement starts
        deadline = time.monotonic() + 60
        while srv.log.count("process 1 of 2 serving") < 2:
            assert time.monotonic() < deadline, srv.log
            starting = srv.log.count("database ") == 3   # the replacement opened the store: it is starting
            with grpc.insecure_channel(srv.target, options=OWN_CONNECTION) as ch:
                status = _health(ch, "")
            if starting and srv.log.count("process 1 of 2 serving") < 2:
                during.append(status)
        assert len(during) >= 10, f"only {len(during)} connections while the replacement started"
        assert set(during) == {SERVING}, during
    finally:
        assert srv.stop() == 0, srv.log


@pytest.mark.slow
def test_a_dead_sibling_is_replaced_and_its_streams_forgotten(tmp_path: Path) -> None:
    key = create_key(tmp_path)
    srv = start_server(tmp_path, "--processes", "2", "--workers", "0", "--max-streams-per-user", "1")
    try:
        async def scenario() -> None:
            chans = await _connect(srv, 16)
            on = {i: [ch for ch, s in chans if s == i] for i in (1, 2)}
            assert on[1] and on[2], {i: len(c) for i, c in on.items()}
            try:
                stream = await _open(on[1][0], key)
                assert isinstance(stream, _Stream), stream
                assert await _open(on[2][0], key) == "RATE_LIMITED"
                os.kill(_siblings(srv)[1], signal.SIGKILL)   # its stream dies with it ...
                deadline = time.monotonic() + 30
                while srv.log.count("process 1 of 2 serving") < 2:
                    assert time.monotonic() < deadline, srv.log
                    await asyncio.sleep(0.1)
                # ... and no longer counts against the user's limit, on the other sibling.
                again = await _open(on[2][0], key)
                assert isinstance(again, _Stream), again
                await again.close()
            finally:
                for ch, _ in chans:
                    await ch.close()

        old = _siblings(srv)[1]
        asyncio.run(scenario())
        assert f"process 1 (pid {old}) exited with status -9" in srv.log
        assert _siblings(srv)[1] != old and _alive(_siblings(srv)[1])
    finally:
        assert srv.stop() == 0, srv.log


@pytest.mark.slow
def test_the_gateways_connections_reach_every_sibling(tmp_path: Path) -> None:
    """With a budget so small that one stream fills a sibling, the group holds two streams: the gateway
    reaches the second only through its pool (and by trying the next connection after OVERLOADED)."""
    import json

    from test_gateway import start_gateway
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    key = create_key(tmp_path)
    srv = start_server(tmp_path, "--processes", "2", "--workers", "0", "--live-cpu-budget", "0.001")
    gw = start_gateway(tmp_path, srv.target, "--grpc-connections", "16")
    sockets: list[Any] = []
    stack = contextlib.ExitStack()
    try:
        for _ in range(16):   # each call takes the next connection: all 16 are up afterwards
            assert urllib.request.urlopen(gw.url + "/readyz", timeout=10).status == 200
        ports = {local for local, remote, inode in _tcp() if remote == srv.port and inode in _inodes(gw.proc.pid)}
        assert len(ports) == 16, ports
        reached = {_serving_sibling(srv, p) for p in ports}
        assert reached == {1, 2}, reached   # all 16 on one sibling: odds 1 in 32768

        def live() -> tuple[Any, dict[str, Any]]:
            ws = stack.enter_context(connect(gw.url.replace("http://", "ws://", 1) + "/live", open_timeout=10))
            sockets.append(ws)
            ws.send(json.dumps({"key": key, "sample_rate_hz": 16000}))
            reply = ws.recv(timeout=20)
            assert isinstance(reply, str)
            return ws, json.loads(reply)

        # A refusal for load is tried on at most 2 more connections, which may all reach the full
        # sibling (odds 1 in 8 each time): a few sockets until the group holds its two streams.
        held = 0
        for _ in range(8):
            ws, reply = live()
            if "algorithmic_delay_samples" in reply:
                held += 1
                if held == 2:
                    break
            else:
                assert reply["error"]["code"] == "OVERLOADED", reply
        assert held == 2, gw.log
        ws, reply = live()
        assert reply["error"]["code"] == "OVERLOADED", reply
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=20)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    finally:
        stack.close()
        assert gw.stop() == 0, gw.log
        assert srv.stop() == 0, srv.log


def test_the_gateway_retries_only_refusals_for_load_and_a_bounded_number_of_times(tmp_path: Path) -> None:
    """One server process, the gateway's default pool of 8 connections, one stream held: a second one
    refused for ``--max-streams`` (a count over the whole group) is asked once, not on all 8
    connections; one refused for this process's load is asked at most 3 times (2 retries). The
    browser gets OVERLOADED and close 1013 either way."""
    import json

    from test_gateway import start_gateway
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    key = create_key(tmp_path)
    for limit, reason, asked in ((("--max-streams", "1"), "cap", 1), (("--live-cpu-budget", "0.001"), "load", 3)):
        metrics = free_port()
        srv = start_server(tmp_path, "--processes", "1", "--workers", "0", "--metrics-port", str(metrics), *limit)
        gw = start_gateway(tmp_path, srv.target)
        try:
            with contextlib.ExitStack() as stack:
                replies = []
                for _ in range(2):
                    ws = stack.enter_context(connect(gw.url.replace("http://", "ws://", 1) + "/live",
                                                     open_timeout=10))
                    ws.send(json.dumps({"key": key, "sample_rate_hz": 16000}))
                    reply = ws.recv(timeout=20)
                    assert isinstance(reply, str)
                    replies.append(json.loads(reply))
                assert "algorithmic_delay_samples" in replies[0], replies
                assert replies[1]["error"]["code"] == "OVERLOADED", replies
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(timeout=20)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
                m = scrape_metrics(metrics)
                assert m.get(("hushwire_streams_refused_total", (("reason", reason),))) == asked, (reason, m)
        finally:
            assert gw.stop() == 0, gw.log
            assert srv.stop() == 0, srv.log


@pytest.mark.slow
def test_the_client_librarys_connections_reach_every_sibling(tmp_path: Path) -> None:
    """One stream fills a sibling; a second stream of the same client retries OVERLOADED on its next
    connections until one reaches the other sibling (with one connection it would never get in)."""
    import queue
    import threading

    from client.stream import EnhancerClient

    key = create_key(tmp_path)
    srv = start_server(tmp_path, "--processes", "2", "--workers", "0", "--live-cpu-budget", "0.001")
    feed: queue.Queue[np.ndarray | None] = queue.Queue()
    try:
        # Its retries take the next connections in turn: within 20 s some 14, all on the full sibling
        # with odds of 1 in 16384.
        with EnhancerClient(srv.target, key, connections=16, connect_timeout=20) as c:
            def items() -> Any:
                while (item := feed.get(timeout=30)) is not None:
                    yield item

            first = c.stream(items(), 16000)
            feed.put(np.zeros(320, np.float32))
            held = threading.Thread(target=lambda: [None for _ in first], daemon=True)
            held.start()
            y = c.enhance(np.zeros(1600, np.float32), 16000)
            assert y.shape == (1600,)
            feed.put(None)
            held.join(10)
            assert not held.is_alive()
    finally:
        feed.put(None)
        assert srv.stop() == 0, srv.log


def test_the_default_is_one_process_per_core_the_server_may_use(tmp_path: Path) -> None:
    """No --processes: as many as the CPUs the command may run on (taskset), so pinned to one, one."""
    from conftest import HUSHWIRE, ROOT, stop_process

    cpus = sorted(os.sched_getaffinity(0))
    env = {k: v for k, v in os.environ.items() if k != "HUSHWIRE_PROCESSES"}
    for allowed in ({cpus[0]}, set(cpus)):
        log = tmp_path / f"serve-{len(allowed)}.log"
        with open(log, "wb") as f:
            proc = subprocess.Popen([*HUSHWIRE, "serve", "--port", "0", "--data-dir", str(tmp_path), "--workers", "0"],
                                    stdout=subprocess.DEVNULL, stderr=f, cwd=ROOT, env=env,
                                    preexec_fn=lambda allowed=allowed: os.sched_setaffinity(0, allowed))
        try:
            deadline = time.monotonic() + 30
            while "listening on" not in log.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            from server.config import cores
            expected = min(len(allowed), cores())   # the cgroup's quota caps both
            text = log.read_text()
            assert (f"({expected} processes)" in text) if expected > 1 else ("processes)" not in text), text
        finally:
            assert stop_process(proc, "server") == 0, log.read_text()


@pytest.mark.slow
def test_a_group_serves_tls_and_sighup_reaches_every_sibling(tmp_path: Path, pki: PKI) -> None:  # noqa: F811
    from client.stream import EnhancerClient

    key = create_key(tmp_path)
    srv = start_server(tmp_path, "--processes", "2", "--workers", "0", "--tls-cert", str(pki.server.cert),
                       "--tls-key", str(pki.server.key))
    try:
        assert f"listening on 127.0.0.1:{srv.port} (2 processes) (TLS)" in srv.log
        with EnhancerClient(srv.target, key, tls_ca=str(pki.ca.path), connections=8) as c:
            for _ in range(4):   # streams on several connections, so on both siblings most likely
                assert c.enhance(np.zeros(1600, np.float32), 16000).shape == (1600,)
        srv.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while srv.log.count("SIGHUP: new TLS connections re-read") < 2:
            assert time.monotonic() < deadline, srv.log
            time.sleep(0.05)
        assert srv.proc.poll() is None and srv.log.count("serving (pid") == 2, srv.log   # nobody died
    finally:
        assert srv.stop() == 0, srv.log


@pytest.mark.slow
def test_a_replacement_that_could_not_start_does_not_fail_the_later_drain(tmp_path: Path, pki: PKI) -> None:  # noqa: F811
    """A sibling's replacement may fail to start for a while (here its TLS file is gone; a database that
    is down does the same): its reason is logged when it happens, the next try succeeds, and a later
    SIGTERM is still a clean drain (exit 0), not the start-up failure of the whole server."""
    import shutil

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(pki.server.cert, cert)
    shutil.copy(pki.server.key, key)
    srv = start_server(tmp_path, "--processes", "2", "--workers", "0", "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        cert.rename(tmp_path / "away.pem")
        os.kill(_siblings(srv)[2], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while f"cannot read the TLS file {cert}" not in srv.log:   # the replacement's reason, at once
            assert time.monotonic() < deadline, srv.log
            time.sleep(0.05)
        (tmp_path / "away.pem").rename(cert)
        while srv.log.count("process 2 of 2 serving") < 2:
            assert time.monotonic() < deadline, srv.log
            time.sleep(0.05)
    finally:
        status = srv.stop()
    assert status == 0, srv.log
    assert f"process 2 did not start: cannot read the TLS file {cert}" in srv.log
    assert "a server process could not start" not in srv.log, srv.log


def _marked(marker: str) -> list[int]:
    """Live processes whose environment carries ``marker``: a server and every process it started."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                env = (d / "environ").read_bytes()
            except OSError:
                continue
            if marker.encode() in env.split(b"\0") and _alive(int(d.name)):
                found.append(int(d.name))
    return found


@pytest.mark.slow
@pytest.mark.parametrize(("processes", "moment"), [
    ("2", "starting 2 server processes"),   # the parent prepares the store; no sibling yet
    ("2", "database "),                     # a sibling opened the store: its job worker is starting
    ("2", "process 1 of 2 serving"),        # one sibling serves, the other may still be starting
    ("1", "database "),                     # one process, its job worker starting
])
def test_a_sigterm_while_starting_is_a_normal_stop(tmp_path: Path, processes: str, moment: str) -> None:
    """SIGTERM before the server is up is a stop like any other: whatever was starting finishes and
    drains, the command exits 0 with no traceback, and no process of it is left behind."""
    from conftest import HUSHWIRE, ROOT

    marker = f"HUSHWIRE_TEST_RUN={time.monotonic_ns()}"
    env = {**os.environ, marker.split("=")[0]: marker.split("=")[1]}
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as f:
        proc = subprocess.Popen([*HUSHWIRE, "serve", "--port", "0", "--data-dir", str(tmp_path), "--processes",
                                 processes, "--workers", processes], stdout=subprocess.DEVNULL, stderr=f, cwd=ROOT,
                                env=env)
    try:
        deadline = time.monotonic() + 30
        while moment not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.005)
        assert proc.pid in _marked(marker)   # the marker finds the server's processes
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text()
    assert status == 0, text
    assert "Traceback" not in text and "stopped" in text, text
    deadline = time.monotonic() + 5
    while left := _marked(marker):
        assert time.monotonic() < deadline, f"left running: {left}\n{text}"
        time.sleep(0.05)
