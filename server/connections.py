"""Resetting one stuck call: its own HTTP/2 stream when grpc lets us, else its connection.

Why this exists: a stream whose client stopped reading cannot be ended by sending it a status. The
status (HTTP/2 trailers) queues behind the response data that the client's flow-control window
does not admit, so it is never delivered, and the call, with grpc's buffers for it, lives as long
as the connection. The way to end one HTTP/2 stream at once is RST_STREAM, which grpc core sends
when the application cancels the call (``grpc_call_cancel_with_status``): the sync server's
``context.cancel()`` does that, but grpc.aio's server context has no cancel (grpcio 1.85: its
``abort`` only queues the status, and cancelling the handler's task ends the servicer while grpc
core keeps the call, its stream and its buffers).

:func:`reset_call` cancels the call in grpc core all the same, through the one Python door grpcio's
own Cython layer has to it: a ``cygrpc.Call`` wrapper (the object whose ``cancel`` the sync stack
calls) pointed for the moment of the call at the aio call's core handle, exactly as grpcio's
``_ServicerContext.peer_identities`` borrows that handle. The handle is a C field that Python cannot
name, so it is read at its offset in the object; every offset is first proved against fields Python
*can* see (the server object and the wrapper's list sit where the layout puts them), and a grpcio
whose layout differs is left alone (False). Core then does what it does for any cancelled server call:
it writes the status as a trailers-only HEADERS frame, which flow control does not hold back, then
RST_STREAM (NO_ERROR) on that stream alone, and frees the stream's buffers; the other calls of the
connection go on. Seen on the wire by tests/test_grpc_hostile.py.

Only when that door is shut does the fallback apply: :class:`Connections` shuts the call's TCP
connection down, when every other call in flight on it belongs to the same user (a direct client
holds one channel; one that multiplexes never-reading streams loses them all). When another user's
call shares the connection (the gateway or a proxy multiplexing callers), it stays open: the
servicer still frees its own state, and grpc keeps only its flow-control-bounded buffers until the
peer reads or leaves. Calls of the open services (health, reflection) belong to no user; a download
by result token (``TOKEN_CALLER``) is somebody's, and each counts as another caller's.

Peers are grpc's ``context.peer()`` strings (``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``): one per
connection, since each connection has its own client port.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import ipaddress
import logging
import os
import socket
import stat
from typing import Any

import grpc
from grpc._cython import cygrpc

__all__ = ["FLOW_CONTROL_OPTIONS", "STREAM_WINDOW_BYTES", "TOKEN_CALLER", "Connections", "parse_peer", "reset_call"]

# The caller of a call authorised by a result token alone (a browser's GET /results through the
# gateway): nobody's user, but somebody's call, and each such call may be a different person's.
TOKEN_CALLER = -1

# What grpc may buffer for a call whose handler is not reading: the HTTP/2 window the server grants
# each stream. A stream stuck on a client that stopped reading stops reading its requests too, and a
# client that keeps writing fills that window in the server's memory until the call is reset. grpc's
# own window starts at 4 MiB and grows with its bandwidth-delay probe: six such streams on a loaded
# machine held 80-380 MiB (tests/test_grpc_hostile.py, issue #18). A fixed 1 MiB still lets one
# stream carry 10 MB/s at a 100 ms round trip: 7 times the largest live stream (1.5 MB/s of 48 kHz
# 8-channel float32), and an upload at that rate. A message larger than the window is still taken
# whole: grpc opens the window for a message its handler is reading. The connection's own window is
# then 1 MiB too (all its streams together in flight per round trip); grpc replenishes it as data
# arrives, not as handlers read, so stuck streams do not hold up the others on their connection.
STREAM_WINDOW_BYTES = 1 << 20
FLOW_CONTROL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.http2.bdp_probe", 0),                          # no growth past the window below
    ("grpc.http2.lookahead_bytes", STREAM_WINDOW_BYTES),  # each stream's window (SETTINGS_INITIAL_WINDOW_SIZE)
)

log = logging.getLogger("hushwire.server")

# Where a process finds its own open file descriptors (Linux; macOS and the BSDs have /dev/fd).
_FD_DIRS = ("/proc/self/fd", "/dev/fd")


# -- one call's reset in grpc core ---------------------------------------------------------------------

_WORD = ctypes.sizeof(ctypes.c_void_p)
_HEAD = object.__basicsize__   # a Python object's header: reference count and type
# cygrpc's structs (grpcio's aio/server.pxd.pxi, call.pxd.pxi), 64-bit:
#   Call:     header | grpc_call* c_call | list references
#   RPCState: header | grpc_call* call (its base, GrpcCallWrapper) | Cython's method table |
#             grpc_call_details details (two 32-byte slices and a 16-byte timespec) |
#             grpc_metadata_array request_metadata (3 words) | AioServer server | ...
_CALL_C_CALL = _HEAD
_CALL_REFERENCES = _HEAD + _WORD
_STATE_CALL = _HEAD
_STATE_SERVER = _HEAD + _WORD + _WORD + (2 * 32 + 16) + 3 * _WORD


def _word(address: int) -> int:
    return ctypes.c_void_p.from_address(address).value or 0


def _only(objects: list[Any], kind: type) -> Any:
    found = [o for o in objects if type(o) is kind]
    return found[0] if len(found) == 1 else None


def _core_call(context: object) -> int:
    """The address of ``context``'s grpc core call, or 0 when this grpcio's layout is not the one
    proved here (nothing is read at an offset that was not first checked against a visible field)."""
    if _WORD != 8 or type(context) is not getattr(cygrpc, "_ServicerContext", None):
        return 0
    state = _only(gc.get_referents(context), getattr(cygrpc, "RPCState", type(None)))
    if state is None or type(state).__basicsize__ <= _STATE_SERVER:
        return 0
    server = _only(gc.get_referents(state), getattr(cygrpc, "AioServer", type(None)))
    if server is None or _word(id(state) + _STATE_SERVER) != id(server):
        return 0
    return _word(id(state) + _STATE_CALL)


def reset_call(context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str) -> bool:
    """Cancel the call of ``context`` in grpc core with ``code`` and ``details``: the client gets that
    status in a trailers-only HEADERS frame and then RST_STREAM, whatever response data it left
    unread, and grpc frees the stream. Call it from the call's own handler, before it returns (grpc
    holds the core call until then). False, doing nothing, where this grpcio does not allow it."""
    call = _core_call(context)
    if not call:
        return False
    holder = cygrpc.Call()
    if type(holder).__basicsize__ != _HEAD + 2 * _WORD or _word(id(holder) + _CALL_C_CALL) != 0:
        return False
    references = _only(gc.get_referents(holder), list)
    if references is None or _word(id(holder) + _CALL_REFERENCES) != id(references):
        return False
    slot = ctypes.c_void_p.from_address(id(holder) + _CALL_C_CALL)
    slot.value = call   # borrowed, not owned: cleared before the wrapper could release it
    try:
        result = holder.cancel(code.value[0], details)
    finally:
        slot.value = None
    return bool(result == 0)   # GRPC_CALL_OK


# -- the fallback: a connection's reset --------------------------------------------------------------

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
        it was shut down. ``uid`` :data:`TOKEN_CALLER`: the stuck call is a download by result token,
        and any other such call on the connection counts as another caller's."""
        for other, n in self.calls.get(peer, collections.Counter()).items():
            if other is None:
                continue
            if other == TOKEN_CALLER:
                if n > (1 if uid == TOKEN_CALLER else 0):
                    return False
            elif other != uid:
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
