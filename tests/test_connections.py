"""server.connections: which connection a stuck call may take down, and that it really goes down."""

from __future__ import annotations

import ipaddress
import socket

from server.connections import TOKEN_CALLER, Connections, parse_peer, reset_call


def test_parse_peer() -> None:
    assert parse_peer("ipv4:127.0.0.1:5000") == (ipaddress.ip_address("127.0.0.1"), 5000)
    assert parse_peer("ipv6:[::1]:5000") == (ipaddress.ip_address("::1"), 5000)
    assert parse_peer("ipv6:[::ffff:10.0.0.1]:7") == (ipaddress.ip_address("10.0.0.1"), 7)   # dual-stack v4 client
    assert parse_peer("unix:/run/x.sock") is None
    assert parse_peer("ipv4:garbage") is None


def _pair() -> tuple[socket.socket, socket.socket, socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    return listener, client, accepted


def _watching(listener: socket.socket, client: socket.socket) -> tuple[Connections, str]:
    """A registry of the server's connections on ``listener``'s port, and ``client``'s peer string as grpc writes it."""
    conns = Connections()
    conns.local_port = listener.getsockname()[1]
    host, port = client.getsockname()
    return conns, f"ipv4:{host}:{port}"


def test_closes_the_connection_of_a_user_alone_on_it() -> None:
    listener, client, accepted = _pair()
    with listener, client, accepted:
        conns, peer = _watching(listener, client)
        conns.opened(peer, 7)
        conns.opened(peer, 7)      # the same user's second call
        conns.opened(peer, None)   # a health check: nobody's
        assert conns.close_for(peer, 7)
        client.settimeout(5)
        assert client.recv(1) == b""   # the server's side of the connection is shut down
        assert accepted.fileno() >= 0   # shut down, not closed: the owner's descriptor stays valid


def test_spares_a_connection_that_carries_another_users_call() -> None:
    listener, client, accepted = _pair()
    with listener, client, accepted:
        conns, peer = _watching(listener, client)
        conns.opened(peer, 7)
        conns.opened(peer, 8)
        assert not conns.close_for(peer, 7)
        accepted.sendall(b"still open")
        client.settimeout(5)
        assert client.recv(10) == b"still open"
        conns.closed(peer, 8)
        assert conns.calls == {peer: {7: 1}}
        assert conns.close_for(peer, 7)


def test_a_result_token_download_is_somebodys_call() -> None:
    """A download by result token (a browser's GET /results through the gateway) has no user, but it is
    a caller's call, not an open service's: each one is somebody else, so it keeps a shared connection
    open for another caller's stuck call, and for another token download's."""
    listener, client, accepted = _pair()
    with listener, client, accepted:
        conns, peer = _watching(listener, client)
        conns.opened(peer, 7)              # user 7's stuck stream
        conns.opened(peer, TOKEN_CALLER)   # somebody's download by token
        assert not conns.close_for(peer, 7)
        conns.opened(peer, TOKEN_CALLER)   # a second one, stuck
        assert not conns.close_for(peer, TOKEN_CALLER)
        conns.closed(peer, 7)
        conns.closed(peer, TOKEN_CALLER)
        accepted.sendall(b"still open")
        client.settimeout(5)
        assert client.recv(10) == b"still open"
        assert conns.close_for(peer, TOKEN_CALLER)   # the stuck download alone on its connection
        assert client.recv(1) == b""


def test_reset_call_leaves_what_is_not_a_grpc_aio_call_alone() -> None:
    """reset_call reads grpc core's handle only out of grpc.aio's own servicer context; anything else
    (a test double, a sync context, a future grpcio's other class) is refused without a read."""
    import grpc

    assert not reset_call(object(), grpc.StatusCode.RESOURCE_EXHAUSTED, "x")   # type: ignore[arg-type]
