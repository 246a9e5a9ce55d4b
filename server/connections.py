"""Calls in flight per client connection, and closing a connection whose only call is stuck.

Why this exists: a stream whose client stopped reading cannot be ended by sending it a status. The
status (HTTP/2 trailers) queues behind the response data that the client's flow-control window
does not admit, so it is never delivered, and the call, with grpc's buffers for it, lives as long
as the connection. The way to end one HTTP/2 stream at once is RST_STREAM, which grpc core sends
when the application cancels the call: the sync server's ``context.cancel()`` does that, but
grpc.aio's server context has no cancel (grpcio 1.85; its ``abort`` only queues the status).

So the server resets the call the one way it can from Python: it shuts the connection's TCP socket
down, when every other call in flight on that connection belongs to the same user (the usual case:
a direct client holds one channel; a hostile one that multiplexes many never-reading streams on one
connection loses them all at once). grpc then sees the connection end, cancels its calls and frees
everything it held for them, and the client sees its call end (UNAVAILABLE). When another user's
call shares the connection (a proxy or the gateway multiplexing several callers), closing it would
end that innocent call too, so it stays open: the servicer still frees its own state for the stuck
call, and grpc keeps only its flow-control-bounded buffers until the peer reads or leaves (the
gateway and the HAProxy config have their own timeouts for a caller that stops reading). Calls of
the open services (health, reflection) belong to no user and do not keep a connection open.

Peers are grpc's ``context.peer()`` strings (``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``): one per
connection, since each connection has its own client port.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import os
import socket
import stat

__all__ = ["Connections", "parse_peer"]

log = logging.getLogger("hushwire.server")

# Where a process finds its own open file descriptors (Linux; macOS and the BSDs have /dev/fd).
_FD_DIRS = ("/proc/self/fd", "/dev/fd")


def parse_peer(peer: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None:
    """``ipv4:1.2.3.4:5`` or ``ipv6:[::1]:5`` as (address, port); None for anything else (unix sockets)."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    host, _, port = rest.rpartition(":")
    try:
        return _plain(ipaddress.ip_address(host.strip("[]").split("%", 1)[0])), int(port)
    except ValueError:
        return None


def _plain(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IPv4-mapped IPv6 address (``::ffff:1.2.3.4``, a v4 client of a dual-stack socket) as IPv4."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class Connections:
    """Counts the calls in flight on each client connection, by user (the auth interceptor reports every
    call's start and end), and closes a connection whose stuck call need not spare any other user's
    call. Use from the event loop only."""

    def __init__(self) -> None:
        self.calls: dict[str, collections.Counter[int | None]] = {}   # peer -> uid (None: open) -> calls
        self.local_port: int | None = None   # the server's listening port, set once it is bound

    def opened(self, peer: str, uid: int | None) -> None:
        self.calls.setdefault(peer, collections.Counter())[uid] += 1

    def closed(self, peer: str, uid: int | None) -> None:
        users = self.calls.get(peer)
        if users is None:
            return
        users[uid] -= 1
        if users[uid] <= 0:
            del users[uid]
        if not users:
            del self.calls[peer]

    def close_for(self, peer: str, uid: int) -> bool:
        """Shut down the TCP connection ``peer`` unless a call of another user is in flight on it; True if
        it was shut down."""
        if any(other is not None and other != uid for other in self.calls.get(peer, ())):
            return False
        address = parse_peer(peer)
        if address is None or self.local_port is None:
            return False
        return _shutdown_socket(address[0], address[1], self.local_port)


def _shutdown_socket(host: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, local_port: int) -> bool:
    """Find this process's TCP socket from ``host:port`` to ``local_port`` and shut it down both ways.

    ``shutdown`` acts on the socket, not on a descriptor, so it is done through a duplicate and grpc's
    own descriptor stays valid (no descriptor is closed under grpc's feet): grpc reads end-of-file,
    ends the connection and cancels its calls as for any client that went away."""
    fd_dir = next((d for d in _FD_DIRS if os.path.isdir(d)), None)
    if fd_dir is None:
        return False
    for name in os.listdir(fd_dir):
        try:
            fd = int(name)
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=os.dup(fd))
        except (OSError, ValueError):
            continue
        with sock:
            try:
                if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM \
                        or sock.getsockname()[1] != local_port:
                    continue
                remote = sock.getpeername()
                if _plain(ipaddress.ip_address(remote[0].split("%", 1)[0])) != host or remote[1] != port:
                    continue
                sock.shutdown(socket.SHUT_RDWR)
            except (OSError, ValueError):
                continue
            return True
    return False
