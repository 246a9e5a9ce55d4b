"""The stream's sample encodings: interleaved little-endian PCM16 or float32 bytes <-> float32 frames.

Numpy and the generated ``SampleEncoding`` enum (protobuf, no grpc): the server, the gateway and the
client library encode and decode with this one codec, so both ends agree bit for bit.
"""

from __future__ import annotations

import numpy as np

from hushwire.v1 import enhancer_pb2

__all__ = ["BYTES_PER_SAMPLE", "ENCODINGS", "FLOAT32", "PCM16", "decode", "encode"]

PCM16: int = enhancer_pb2.SAMPLE_ENCODING_PCM16
FLOAT32: int = enhancer_pb2.SAMPLE_ENCODING_FLOAT32
# The names the client library and the gateway's /live protocol accept for them.
ENCODINGS: dict[str, int] = {"pcm16": PCM16, "float32": FLOAT32}
BYTES_PER_SAMPLE: dict[int, int] = {PCM16: 2, FLOAT32: 4}
_PCM16_SCALE = 32768.0


def decode(data: bytes, encoding: int, channels: int) -> np.ndarray:
    """Bytes -> float32 array of shape (frames, channels). ``data`` must hold whole frames."""
    if encoding == PCM16:
        x = np.frombuffer(data, dtype="<i2").astype(np.float32) / np.float32(_PCM16_SCALE)
    elif encoding == FLOAT32:
        x = np.frombuffer(data, dtype="<f4").astype(np.float32)
    else:
        raise ValueError(f"unsupported encoding {encoding}")
    return x.reshape(-1, channels)


def encode(x: np.ndarray, encoding: int) -> bytes:
    """Float frames (frames, channels) -> interleaved bytes. PCM16 rounds and saturates, never wraps."""
    if encoding == PCM16:
        y = np.clip(np.rint(np.asarray(x, dtype=np.float32) * np.float32(_PCM16_SCALE)), -32768, 32767)
        return bytes(y.astype("<i2").tobytes())
    if encoding == FLOAT32:
        return bytes(np.ascontiguousarray(x, dtype="<f4").tobytes())
    raise ValueError(f"unsupported encoding {encoding}")
