"""End to end: the live stream through a real server subprocess."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf
from conftest import ServerProcess, create_key, energy_db, eval_pair, free_port, scrape_metrics, start_server
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client import AsyncEnhancerClient, EnhancerClient, HushwireClientError
from client.stream import Update
from hushwire.contract import pcm
from hushwire.v1 import enhancer_pb2, enhancer_pb2_grpc
from server.dsp import Denoiser

PCM16 = enhancer_pb2.SAMPLE_ENCODING_PCM16
FLOAT32 = enhancer_pb2.SAMPLE_ENCODING_FLOAT32


def _config(rate: int = 16000, channels: int = 1, encoding: int = PCM16, **kw: float
            ) -> enhancer_pb2.StreamEnhanceRequest:
    return enhancer_pb2.StreamEnhanceRequest(
        config=enhancer_pb2.StreamConfig(sample_rate_hz=rate, channels=channels, encoding=encoding, **kw))


def _audio(data: bytes) -> enhancer_pb2.StreamEnhanceRequest:
    return enhancer_pb2.StreamEnhanceRequest(audio=data)


def _call(server: ServerProcess, key: str | None, requests: list[enhancer_pb2.StreamEnhanceRequest],
          ) -> list[enhancer_pb2.StreamEnhanceResponse]:
    with grpc.insecure_channel(server.target) as ch:
        stub = enhancer_pb2_grpc.EnhancerStub(ch)
        md = (("authorization", key),) if key else ()
        return list(stub.StreamEnhance(iter(requests), metadata=md, timeout=30))


def _trailer(err: grpc.RpcError) -> str | None:
    return dict(err.trailing_metadata() or ()).get("hushwire-error-code")


def _local(x: np.ndarray, rate: int) -> np.ndarray:
    d = Denoiser(rate, x.shape[1])
    return np.concatenate([d.process(x), d.flush()])


def test_file_streams_denoised_and_aligned(server: ServerProcess, api_key: str) -> None:
    noisy_path, clean_path = eval_pair("white_p05")
    noisy, rate = sf.read(str(noisy_path), dtype="float32")
    clean, _ = sf.read(str(clean_path), dtype="float32")
    with EnhancerClient(server.target, api_key) as c:
        out = c.enhance(noisy, rate, chunk_ms=20)
    assert out.shape == noisy.shape and out.dtype == np.float32
    assert np.all(np.isfinite(out)) and np.max(np.abs(out)) <= 1.0
    # Denoised: the residual noise (output minus clean) is clearly weaker than the input noise.
    noise_in = energy_db(noisy - clean)
    noise_out = energy_db(out - clean)
    assert noise_out < noise_in - 3.0, (noise_in, noise_out)


def test_protocol_order_delay_and_total_length(server: ServerProcess, api_key: str) -> None:
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((16000, 1)) * 0.05).astype(np.float32)
    chunks = [x[i : i + 333] for i in range(0, len(x), 333)]
    resps = _call(server, api_key, [_config(encoding=FLOAT32), *[_audio(pcm.encode(c, pcm.FLOAT32)) for c in chunks]])
    first, rest = resps[0], resps[1:]
    assert first.algorithmic_delay_samples == Denoiser(16000).latency_samples
    assert 0 < first.algorithmic_delay_samples <= 160  # at most 10 ms
    assert first.audio == b""
    assert len(rest) == len(chunks) + 1  # one per audio request, plus the flushed tail
    total = sum(len(r.audio) for r in rest) // 4
    assert total == len(x) + first.algorithmic_delay_samples
    assert all(0.0 <= r.voice_probability <= 1.0 for r in rest)


@pytest.mark.parametrize("chunk", [1, 160, 592, 16000])
def test_chunking_invariance_matches_local_denoiser(server: ServerProcess, api_key: str, chunk: int) -> None:
    rng = np.random.default_rng(2)
    seconds = 0.25 if chunk == 1 else 1.5
    x = (rng.standard_normal((int(16000 * seconds), 2)) * 0.1).astype(np.float32)
    reqs = [_config(channels=2, encoding=FLOAT32)]
    reqs += [_audio(pcm.encode(x[i : i + chunk], pcm.FLOAT32)) for i in range(0, len(x), chunk)]
    resps = _call(server, api_key, reqs)
    y = np.concatenate([pcm.decode(r.audio, pcm.FLOAT32, 2) for r in resps[1:]])
    np.testing.assert_allclose(y, _local(x, 16000), atol=1e-6)


def test_pcm16_round_trip_is_exact_at_zero_attenuation(server: ServerProcess, api_key: str) -> None:
    rng = np.random.default_rng(3)
    ints = rng.integers(-8000, 8000, size=(4800, 1)).astype("<i2")
    resps = _call(server, api_key, [_config(rate=48000, attenuation_limit_db=0.0), _audio(ints.tobytes())])
    delay = resps[0].algorithmic_delay_samples
    out = np.frombuffer(b"".join(r.audio for r in resps[1:]), "<i2")
    assert len(out) == len(ints) + delay
    assert np.max(np.abs(out[delay:].astype(int) - ints[:, 0])) <= 1  # pass-through within 1 LSB


@pytest.mark.parametrize(
    ("requests", "needle"),
    [
        ([_audio(b"\0\0")], "first message must be the config"),
        ([_config(rate=22050)], "unsupported sample_rate_hz 22050"),
        ([_config(rate=0)], "unsupported sample_rate_hz 0"),
        ([_config(channels=0)], "channels must be 1..8"),
        ([_config(channels=9)], "channels must be 1..8"),
        ([_config(encoding=0)], "unsupported encoding"),
        ([_config(), _config()], "config was already sent"),
        ([_config(), _audio(b"\0\0\0")], "not whole frames"),
        ([_config(channels=2), _audio(b"\0\0")], "not whole frames"),
        ([_config(), _audio(b"\0\0" * 16001)], "over 1 s"),
        ([_config(attenuation_limit_db=-3.0)], "attenuation_limit_db"),
        ([_config(), enhancer_pb2.StreamEnhanceRequest()], "empty request"),
    ],
)
def test_refusals_are_invalid_argument(server: ServerProcess, api_key: str, requests: list, needle: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _call(server, api_key, requests)
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.details()
    assert _trailer(err) == "INVALID_ARGUMENT"
    # ...and the server keeps serving.
    ok = _call(server, api_key, [_config(), _audio(b"\0\0" * 160)])
    assert ok[0].algorithmic_delay_samples > 0


def test_oversized_message_is_refused_by_grpc(server: ServerProcess, api_key: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _call(server, api_key, [_config(), _audio(b"\0" * (5 * 1024 * 1024))])
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _call(server, api_key, [_config()])[0].algorithmic_delay_samples > 0


@pytest.mark.parametrize("key", [None, "", "hw_not-a-real-key", "Bearer nope"])
def test_bad_keys_are_unauthenticated(server: ServerProcess, key: str | None) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _call(server, key, [_config()])
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert info.value.details() == "Unregistered API Key"
    assert _trailer(info.value) == "API_KEY_NOT_FOUND"


def test_bearer_key_is_accepted(server: ServerProcess, api_key: str) -> None:
    assert _call(server, f"Bearer {api_key}", [_config()])[0].algorithmic_delay_samples > 0


def test_health_and_reflection_are_open(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for name in ("", "hushwire.v1.Enhancer"):
            resp = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        services = {s.name for r in refl.ServerReflectionInfo(iter([req]), timeout=5)
                    for s in r.list_services_response.service}
        assert "hushwire.v1.Enhancer" in services


def test_client_library_errors_carry_the_code(server: ServerProcess) -> None:
    with EnhancerClient(server.target, "wrong") as c, pytest.raises(HushwireClientError) as info:
        c.enhance(np.zeros(1600, np.float32), 16000)
    assert info.value.code == "API_KEY_NOT_FOUND"


def test_client_gives_up_after_connect_timeout() -> None:
    with EnhancerClient("127.0.0.1:1", "k", connect_timeout=0.5) as c, pytest.raises(HushwireClientError) as info:
        c.enhance(np.zeros(160, np.float32), 16000)
    assert info.value.status == grpc.StatusCode.UNAVAILABLE
    assert "cannot reach" in info.value.msg


def test_updates_mid_stream_bypass(server: ServerProcess, api_key: str) -> None:
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((32000, 1)) * 0.05).astype(np.float32)

    def items() -> Iterator[np.ndarray | Update]:
        yield Update(bypass=True)
        yield x[:16000]
        yield Update(bypass=False)
        yield x[16000:]

    with EnhancerClient(server.target, api_key) as c:
        live = c.stream(items(), 16000)
        y = np.concatenate([o.audio for o in live])
    d = live.delay_samples
    # While bypassed the output is the raw input, delayed; afterwards noise is removed.
    np.testing.assert_allclose(y[d + 1000 : 15000 + d], x[1000:15000], atol=1e-5)
    assert energy_db(y[d + 24000 : d + 32000]) < energy_db(x[24000:]) - 6.0


def test_async_client(server: ServerProcess, api_key: str) -> None:
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((8000, 1)) * 0.05).astype(np.float32)

    async def run() -> np.ndarray:
        async with AsyncEnhancerClient(server.target, api_key) as c:
            return await c.enhance(x, 8000, chunk_ms=37)

    y = asyncio.run(run())
    d = Denoiser(8000)
    expect = np.concatenate([d.process(x), d.flush()])[d.latency_samples :]
    np.testing.assert_allclose(y, expect, atol=1e-6)


def test_concurrent_streams_are_batched_without_mixing(tmp_path: Path) -> None:
    """Many streams at once (rates, channels and limits mixed): they are denoised in shared batches,
    and each gets exactly its own denoising."""
    api_key = create_key(tmp_path, "--name", "batch")
    port = free_port()
    server = start_server(tmp_path, "--metrics-port", str(port))
    rng = np.random.default_rng(11)
    specs = [(16000, 1, None), (16000, 2, None), (48000, 1, None), (16000, 1, 6.0), (8000, 1, None)] * 3
    signals = [(rng.standard_normal((rate // 2, ch)) * 0.05 * (1 + i % 4)).astype(np.float32)
               for i, (rate, ch, _) in enumerate(specs)]

    async def run() -> list[np.ndarray]:
        async with AsyncEnhancerClient(server.target, api_key) as c:
            return await asyncio.gather(*(c.enhance(x, rate, chunk_ms=20, attenuation_limit_db=limit)
                                          for x, (rate, _, limit) in zip(signals, specs, strict=True)))

    try:
        outputs = asyncio.run(run())
        m = scrape_metrics(port)
    finally:
        assert server.stop() == 0, server.log
    batches, chunks = m[("hushwire_stream_batch_chunks_count", ())], m[("hushwire_stream_batch_chunks_sum", ())]
    assert chunks > batches > 0, (chunks, batches)  # some batches held chunks of several streams
    for y, x, (rate, ch, limit) in zip(outputs, signals, specs, strict=True):
        d = Denoiser(rate, ch, limit)
        expect = np.concatenate([d.process(x), d.flush()])[d.latency_samples :]
        np.testing.assert_allclose(y.reshape(expect.shape), expect, atol=1e-6)
