"""Signed job webhooks: the URL policy (no SSRF) and the deliverer that empties the outbox.

When a job with a ``callback_url`` completes or fails, the transaction that finishes it also
writes a row in the store's outbox (:mod:`server.store.webhooks`). Every server runs a
:class:`WebhookDeliverer`, which claims due rows with a lease and POSTs the job's status JSON
(the ``/stat/jobs`` shape; ``result`` is a freshly signed URL when the server knows its public URL):

- headers ``Hushwire-Signature: t=<unix s>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`` (a
  second ``v1=`` by the previous secret for 24 h after a rotation), ``Hushwire-Event-Id`` (the
  same at every attempt of one delivery) and ``Content-Type: application/json``;
- at least once: a 2xx answer delivers; anything else (another status, a redirect, which is never
  followed, a timeout of :data:`ATTEMPT_TIMEOUT_S`, a refused address) is retried with exponential
  backoff and jitter from ``base_delay_s`` (the first retry comes within 30 s by default) until the
  delivery is ``max_age_s`` old; then it is given up (``failed``). The answer's body is read up to
  :data:`MAX_ANSWER_BYTES` and dropped. Finished rows are purged after :data:`KEEP_ROWS_S`.

SSRF (:class:`WebhookPolicy`): a URL must be ``http`` or ``https`` with a host and no user info.
Its host is resolved, and every address it resolves to must be allowed: by an entry of
``--webhook-allow`` (a host name, ``host:port``, or a CIDR), or, by default, by being a public
(globally routable) address; an IPv6 address that carries an IPv4 one (IPv4-mapped, NAT64's
64:ff9b::/96, 6to4) is judged by that IPv4 address. Loopback, link-local (cloud metadata at 169.254.169.254), private,
shared, multicast and reserved ranges are refused unless allowed, and the server's own ports on
this machine always are. The check runs at submit (400 ``INVALID_REQUEST``) and again at every
attempt, which then connects to the address it checked (so DNS cannot change between the check
and the connection), and checks the connected peer once more.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import ipaddress
import json
import logging
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from hushwire.contract.webhooks import EVENT_ID_HEADER, SIGNATURE_HEADER, signature_header
from server.logs import event
from server.metrics import METRICS
from server.store import Store
from server.store.webhooks import OUTBOX_DELIVERED, OUTBOX_FAILED, OUTBOX_PENDING, OutboxRow

__all__ = [
    "ATTEMPT_TIMEOUT_S", "EVENT_ID_HEADER", "KEEP_ROWS_S", "MAX_ANSWER_BYTES", "MAX_URL_CHARS", "ROTATION_GRACE_S",
    "SIGNATURE_HEADER", "WebhookDeliverer", "WebhookPolicy", "WebhookRefused", "signature_header",
]

log = logging.getLogger("hushwire.webhooks")

ATTEMPT_TIMEOUT_S = 10.0             # one delivery attempt, connection to the last byte read
MAX_ANSWER_BYTES = 64 * 1024         # of the receiver's answer; the rest is not read
KEEP_ROWS_S = 7 * 86400.0            # finished deliveries stay visible in job status this long
ROTATION_GRACE_S = 86400.0           # after a rotation, the previous secret signs too for this long
MAX_URL_CHARS = 2048
MAX_BACKOFF_S = 3600.0               # retries are at least this frequent however old the delivery
LEASE_S = ATTEMPT_TIMEOUT_S + 20.0   # a deliverer's hold on a row; a dead deliverer's rows come back after it
CLAIM_BATCH = 16
IDLE_POLL_S = 1.0                    # how often the outbox is read when nothing pokes the deliverer
RESOLVE_TIMEOUT_S = 5.0              # a callback host's DNS answer; slower is "does not resolve"
DNS_THREADS = 4                      # callback host lookups at once

# Callback hosts are resolved in threads of their own, never in the event loop's default executor,
# which moves upload, download and probe I/O: a client's callback_url on a DNS server that never
# answers holds its thread for the system resolver's own timeout (up to 30 s), well past
# RESOLVE_TIMEOUT_S, and a few such submissions must not stall every other user's files.
_DNS_POOL = concurrent.futures.ThreadPoolExecutor(DNS_THREADS, thread_name_prefix="hushwire-dns")


class WebhookRefused(ValueError):
    """A callback URL the policy does not allow (the message says why, without echoing much of it)."""


def _ip_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


@dataclass(frozen=True)
class Target:
    """A checked callback URL: where to connect, and what to call it (Host, SNI)."""

    url: str
    scheme: str
    host: str          # as written in the URL (lower case, no brackets)
    port: int
    addresses: tuple[str, ...]   # every address the host resolved to, all allowed


class WebhookPolicy:
    """Which callback URLs the server may call (module docstring, "SSRF")."""

    def __init__(self, allow: Iterable[str] = (), own_ports: Iterable[int] = ()) -> None:
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.hosts: set[str] = set()
        self.host_ports: set[tuple[str, int]] = set()
        for raw in allow:
            entry = raw.strip().lower()
            if not entry:
                continue
            if "/" in entry or _ip_network(entry) is not None:
                net = _ip_network(entry)
                if net is None:
                    raise ValueError(f"--webhook-allow: {raw!r} is not a CIDR")
                self.networks.append(net)
            elif entry.rsplit(":", 1)[-1].isdigit() and ":" in entry:
                host, port = entry.rsplit(":", 1)
                self.host_ports.add((host.strip("[]"), int(port)))
            else:
                self.hosts.add(entry)
        self.own_ports = {p for p in own_ports if p}

    def parse(self, url: str) -> tuple[str, str, int]:
        """(scheme, host, port) of a syntactically acceptable URL; WebhookRefused otherwise."""
        if not url or len(url) > MAX_URL_CHARS or any(not (" " < ch <= "~") for ch in url):
            raise WebhookRefused(f"callback_url must be an http(s) URL of at most {MAX_URL_CHARS} printable "
                                 "ASCII characters")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise WebhookRefused("callback_url must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise WebhookRefused("callback_url must not carry user info")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise WebhookRefused("callback_url has an invalid port") from None
        return parts.scheme, parts.hostname.lower(), port

    def _address_allowed(self, host: str, port: int, address: str) -> str | None:
        """None when ``address`` (that ``host`` resolved to) may be called on ``port``; else why not."""
        ip = _embedded_ipv4(ipaddress.ip_address(address.split("%", 1)[0]))
        if port in self.own_ports and _is_local(str(ip)):
            return "it is this server's own port"
        if host in self.hosts or (host, port) in self.host_ports or (str(ip), port) in self.host_ports:
            return None
        if any(ip in net for net in self.networks):
            return None
        if self.hosts or self.host_ports or self.networks:
            return "it is not in --webhook-allow"
        if ip.is_loopback:
            return "it is a loopback address"
        if ip.is_link_local:
            return "it is a link-local address"
        if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
            return "it is not a public address"
        return None

    async def check(self, url: str) -> Target:
        """Resolve and check ``url``; WebhookRefused (with the reason) when it may not be called."""
        scheme, host, port = self.parse(url)
        loop = asyncio.get_running_loop()
        try:
            lookup = functools.partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
            infos = await asyncio.wait_for(loop.run_in_executor(_DNS_POOL, lookup), RESOLVE_TIMEOUT_S)
        except (OSError, TimeoutError):
            raise WebhookRefused("callback_url's host does not resolve") from None
        addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise WebhookRefused("callback_url's host does not resolve")
        for address in addresses:
            why = self._address_allowed(host, port, address)
            if why is not None:
                # The kind of address, never the address: a client must not map the internal DNS with it.
                raise WebhookRefused(f"callback_url is not allowed: an address its host resolves to is refused ({why})")
        return Target(url, scheme, host, port, addresses)

    def peer_allowed(self, target: Target, peer: str) -> bool:
        return self._address_allowed(target.host, target.port, peer) is None


# RFC 6052's well-known NAT64 prefix: a NAT64 gateway (IPv6-only clouds have one) forwards
# 64:ff9b::a.b.c.d to the IPv4 address a.b.c.d, private ones included, yet Python calls it global.
_NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")


def _embedded_ipv4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The IPv4 address an IPv6 one reaches (IPv4-mapped, NAT64, 6to4), which the policy then judges; else ``ip``."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ip
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64_PREFIX:
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    return ip


def _is_local(address: str) -> bool:
    """Whether ``address`` belongs to this machine (it can be bound)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((address, 0))
        return True
    except OSError:
        return False


@dataclass(frozen=True)
class _Outcome:
    state: str
    status: int | None
    error: str | None


class WebhookDeliverer:
    """Claims due outbox rows and delivers them (module docstring). One per server process."""

    def __init__(self, store: Store, policy: WebhookPolicy, payload: Callable[[str], dict[str, Any] | None], *,
                 base_delay_s: float, max_age_s: float, user_agent: str = "hushwire-webhooks") -> None:
        self._store = store
        self._policy = policy
        self._payload = payload   # job id -> the status JSON, or None when the job is gone
        self.base_delay_s = base_delay_s
        self.max_age_s = max_age_s
        self._owner = uuid.uuid4().hex
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._last_purge = 0.0
        self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=ATTEMPT_TIMEOUT_S,
                                         headers={"User-Agent": user_agent},
                                         limits=httpx.Limits(max_connections=32, max_keepalive_connections=0))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="hushwire-webhooks")

    def poke(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._inflight):
            task.cancel()
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
            # The attempts cut short are due again at once, for another replica or the next start.
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._store.release_webhook_leases, self._owner)
        await self._client.aclose()

    async def _run(self) -> None:
        while True:
            try:
                rows = await asyncio.to_thread(self._store.claim_webhooks, self._owner, LEASE_S,
                                               CLAIM_BATCH - len(self._inflight))
                for row in rows:
                    task = asyncio.create_task(self._deliver(row))
                    self._inflight.add(task)
                    task.add_done_callback(self._done)
                if time.time() - self._last_purge > 3600:
                    self._last_purge = time.time()
                    await asyncio.to_thread(self._store.purge_webhooks, time.time() - KEEP_ROWS_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:   # noqa: BLE001 (a database outage: try again at the next poll)
                log.warning("webhook outbox: %s", exc)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), IDLE_POLL_S)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook delivery crashed", exc_info=task.exception())
        self._wake.set()   # room for more

    def _next_attempt(self, row: OutboxRow) -> float | None:
        """When to try again after this attempt (the row's n-th), or None when the delivery is too old."""
        delay = min(self.base_delay_s * 2 ** row.attempts, MAX_BACKOFF_S) * random.uniform(0.5, 1.0)
        at = time.time() + delay
        return at if at - row.created_at <= self.max_age_s else None

    async def _deliver(self, row: OutboxRow) -> None:
        t0 = time.monotonic()
        payload = await asyncio.to_thread(self._payload, row.job_id)
        if payload is None:
            outcome = _Outcome(OUTBOX_FAILED, None, "the job no longer exists")
        else:
            outcome = await self._attempt(row, payload)
        METRICS.webhook_attempt_seconds.observe(time.monotonic() - t0)
        next_at = None
        if outcome.state == OUTBOX_PENDING:
            next_at = self._next_attempt(row)
            if next_at is None:
                outcome = _Outcome(OUTBOX_FAILED, outcome.status, f"{outcome.error}; given up after "
                                   f"{self.max_age_s:g} s")
        METRICS.webhook_attempts.labels("delivered" if outcome.state == OUTBOX_DELIVERED else "failed").inc()
        if outcome.state == OUTBOX_DELIVERED:
            METRICS.webhooks_delivered.inc()
        elif outcome.state == OUTBOX_FAILED:
            METRICS.webhooks_given_up.inc()
        await asyncio.to_thread(self._store.webhook_attempted, row.event_id, self._owner, state=outcome.state,
                                status=outcome.status, error=outcome.error, next_attempt_at=next_at)
        event(log, "webhook attempt", job_id=row.job_id, event_id=row.event_id, uid=row.uid,
              attempt=row.attempts + 1, state=outcome.state, status=outcome.status, error=outcome.error,
              level=logging.INFO if outcome.state == OUTBOX_DELIVERED else logging.WARNING)

    async def _attempt(self, row: OutboxRow, payload: dict[str, Any]) -> _Outcome:
        body = json.dumps(payload, separators=(",", ":")).encode()
        try:
            async with asyncio.timeout(ATTEMPT_TIMEOUT_S):
                target = await self._policy.check(row.url)
                secrets_ = await asyncio.to_thread(self._store.webhook_secrets, row.uid, ROTATION_GRACE_S)
                headers = {"Content-Type": "application/json", EVENT_ID_HEADER: row.event_id,
                           SIGNATURE_HEADER: signature_header(secrets_.signing_keys(time.time()), body,
                                                              int(time.time()))}
                return await self._post(target, headers, body)
        except WebhookRefused as exc:
            return _Outcome(OUTBOX_PENDING, None, f"refused: {exc}")
        except TimeoutError:
            return _Outcome(OUTBOX_PENDING, None, f"no answer within {ATTEMPT_TIMEOUT_S:g} s")
        except httpx.HTTPError as exc:
            return _Outcome(OUTBOX_PENDING, None, f"{type(exc).__name__}: {exc}"[:300])

    async def _post(self, target: Target, headers: dict[str, str], body: bytes) -> _Outcome:
        """POST to the checked address itself (the host name stays in Host and in TLS's SNI and checks)."""
        address = target.addresses[0]
        url = httpx.URL(target.url).copy_with(host=address)
        default = 443 if target.scheme == "https" else 80
        headers["Host"] = target.host if target.port == default else f"{target.host}:{target.port}"
        if ":" in target.host:
            headers["Host"] = f"[{target.host}]" + ("" if target.port == default else f":{target.port}")
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        request = self._client.build_request("POST", url, headers=headers, content=body, extensions=extensions)
        response = await self._client.send(request, stream=True)
        try:
            stream = response.extensions.get("network_stream")
            peer = stream.get_extra_info("server_addr") if stream is not None else None
            if peer is not None and not self._policy.peer_allowed(target, str(peer[0])):
                return _Outcome(OUTBOX_PENDING, None, f"refused: connected to {peer[0]}, which is not allowed")
            read = 0
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read >= MAX_ANSWER_BYTES:
                    break
        finally:
            await response.aclose()
        if 200 <= response.status_code < 300:
            return _Outcome(OUTBOX_DELIVERED, response.status_code, None)
        why = "a redirect, not followed" if 300 <= response.status_code < 400 else "not a 2xx answer"
        return _Outcome(OUTBOX_PENDING, response.status_code, f"HTTP {response.status_code} ({why})")
