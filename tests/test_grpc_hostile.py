"""Hostile gRPC clients: no config, never reading, deadlines, cancels. State is freed every time."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import ServerProcess, create_key, free_port, start_server
from prometheus_client.parser import text_string_to_metric_families

from hushwire.contract import pcm
from hushwire.v1 import enhancer_pb2, enhancer_pb2_grpc


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str, int]]:
    data = tmp_path_factory.mktemp("hostile")
    port = free_port()
    key = create_key(data)
    srv = start_server(data, "--metrics-port", str(port))
    yield srv, key, port
    assert srv.stop() == 0


def _gauge(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def _wait_gauge(port: int, name: str, value: float, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while _gauge(port, name) != value:
        assert time.monotonic() < deadline, f"{name} stayed at {_gauge(port, name)}, expected {value}"
        time.sleep(0.1)


def _config() -> enhancer_pb2.StreamEnhanceRequest:
    return enhancer_pb2.StreamEnhanceRequest(config=enhancer_pb2.StreamConfig(
        sample_rate_hz=16000, channels=1, encoding=enhancer_pb2.SAMPLE_ENCODING_FLOAT32))


def _audio(seconds: float) -> enhancer_pb2.StreamEnhanceRequest:
    return enhancer_pb2.StreamEnhanceRequest(audio=pcm.encode(np.zeros((int(16000 * seconds), 1)), pcm.FLOAT32))


def _trailer(err: grpc.RpcError) -> str | None:
    return dict(err.trailing_metadata() or ()).get("hushwire-error-code")


def test_deadline_is_honoured_and_frees_the_stream(metered: tuple[ServerProcess, str, int]) -> None:
    srv, key, port = metered
    stop = threading.Event()

    def slow() -> Iterator[enhancer_pb2.StreamEnhanceRequest]:
        yield _config()
        stop.wait(5)

    with grpc.insecure_channel(srv.target) as ch:
        call = enhancer_pb2_grpc.EnhancerStub(ch).StreamEnhance(slow(), metadata=(("authorization", key),),
                                                                 timeout=1.0)
        with pytest.raises(grpc.RpcError) as info:
            list(call)
        stop.set()
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _wait_gauge(port, "hushwire_streams_open", 0)


def test_cancelled_stream_frees_its_state(metered: tuple[ServerProcess, str, int]) -> None:
    srv, key, port = metered
    stop = threading.Event()

    def requests() -> Iterator[enhancer_pb2.StreamEnhanceRequest]:
        yield _config()
        yield _audio(0.1)
        stop.wait(10)

    with grpc.insecure_channel(srv.target) as ch:
        call = enhancer_pb2_grpc.EnhancerStub(ch).StreamEnhance(requests(), metadata=(("authorization", key),))
        next(call)
        next(call)
        _wait_gauge(port, "hushwire_streams_open", 1)
        call.cancel()
        stop.set()
    _wait_gauge(port, "hushwire_streams_open", 0)


@pytest.mark.slow
def test_stream_without_config_times_out(metered: tuple[ServerProcess, str, int]) -> None:
    srv, key, _ = metered
    stop = threading.Event()

    def nothing() -> Iterator[enhancer_pb2.StreamEnhanceRequest]:
        stop.wait(20)
        yield from ()

    started = time.monotonic()
    with grpc.insecure_channel(srv.target) as ch:
        with pytest.raises(grpc.RpcError) as info:
            list(enhancer_pb2_grpc.EnhancerStub(ch).StreamEnhance(nothing(), metadata=(("authorization", key),),
                                                                   timeout=30))
        stop.set()
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and _trailer(info.value) == "REQUEST_TIMEOUT"
    assert 9 < time.monotonic() - started < 20


@pytest.mark.slow
def test_client_that_never_reads_is_ended(tmp_path: Path) -> None:
    key = create_key(tmp_path)
    srv = start_server(tmp_path)
    sent = 0
    stop = threading.Event()

    def flood() -> Iterator[enhancer_pb2.StreamEnhanceRequest]:
        nonlocal sent
        yield _config()
        while not stop.is_set() and sent < 2000:  # 2000 s of audio at most; far more than any window
            sent += 1
            yield _audio(1.0)

    try:
        with grpc.insecure_channel(srv.target) as ch:
            call = enhancer_pb2_grpc.EnhancerStub(ch).StreamEnhance(flood(), metadata=(("authorization", key),),
                                                                     timeout=60)
            time.sleep(14)  # read nothing for longer than the server's patience
            with pytest.raises(grpc.RpcError) as info:
                for _ in call:
                    pass
            stop.set()
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _trailer(info.value) == "SLOW_CONSUMER"
        assert sent < 2000  # the server stopped taking input: its buffers stayed bounded
        with grpc.insecure_channel(srv.target) as ch:  # and it still serves
            resps = list(enhancer_pb2_grpc.EnhancerStub(ch).StreamEnhance(
                iter([_config(), _audio(0.1)]), metadata=(("authorization", key),), timeout=10))
            assert len(resps) == 3
    finally:
        stop.set()
        assert srv.stop() == 0
