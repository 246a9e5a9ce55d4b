"""The stream's sample encodings: interleaved little-endian PCM16 or float32 bytes <-> float32 frames.

Numpy and the generated ``SampleEncoding`` enum (protobuf, no grpc): the server, the gateway and the
client library encode and decode with this one codec, so both ends agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hushwire.v1 import enhancer_pb2

__all__ = ["BYTES_PER_SAMPLE", "ENCODINGS", "FLOAT32", "PCM16", "decode", "decode_many", "encode", "encode_many"]

PCM16: int = enhancer_pb2.SAMPLE_ENCODING_PCM16
FLOAT32: int = enhancer_pb2.SAMPLE_ENCODING_FLOAT32
# The names the client library and the gateway's /live protocol accept for them.
ENCODINGS: dict[str, int] = {"pcm16": PCM16, "float32": FLOAT32}
BYTES_PER_SAMPLE: dict[int, int] = {PCM16: 2, FLOAT32: 4}
_PCM16_SCALE = 32768.0
# As float32 scalars, made once (a live server codes a batch of 20 ms chunks at a time: numpy's cost per
# call is what matters). Dividing by 2**15 and multiplying by 2**-15 are the same in binary floating point.
_SCALE32 = np.float32(_PCM16_SCALE)
_INV_SCALE32 = np.float32(1.0 / _PCM16_SCALE)
_I16 = np.dtype("<i2")
_F32 = np.dtype("<f4")


def decode(data: bytes, encoding: int, channels: int) -> np.ndarray:
    """Bytes -> float32 array of shape (frames, channels). ``data`` must hold whole frames."""
    if encoding == PCM16:
        x = np.multiply(np.frombuffer(data, dtype=_I16), _INV_SCALE32, dtype=np.float32)
    elif encoding == FLOAT32:
        x = np.frombuffer(data, dtype=_F32).astype(np.float32)
    else:
        raise ValueError(f"unsupported encoding {encoding}")
    return x.reshape(-1, channels)


def encode(x: np.ndarray, encoding: int) -> bytes:
    """Float frames (frames, channels) -> interleaved bytes. PCM16 rounds and saturates, never wraps."""
    if encoding == PCM16:
        y = np.multiply(np.asarray(x, dtype=np.float32), _SCALE32, dtype=np.float32)
        np.rint(y, out=y)
        np.minimum(y, 32767, out=y)    # saturate (np.clip's own cost is several times these two)
        np.maximum(y, -32768, out=y)
        return y.astype(_I16).tobytes()
    if encoding == FLOAT32:
        return bytes(np.ascontiguousarray(x, dtype="<f4").tobytes())
    raise ValueError(f"unsupported encoding {encoding}")


def decode_many(chunks: Sequence[bytes], encoding: int, channels: Sequence[int]) -> list[np.ndarray]:
    """``[decode(c, encoding, ch) for c, ch in zip(chunks, channels)]``, equal to it bit for bit, in one
    conversion: a live server decodes a whole batch of streams' chunks at once (numpy's cost per call,
    not per sample, is what a 20 ms chunk pays). Each result is a view of one shared array."""
    if len(chunks) == 1:
        return [decode(chunks[0], encoding, channels[0])]
    flat = decode(b"".join(chunks), encoding, 1).reshape(-1)
    out = []
    at = 0
    width = BYTES_PER_SAMPLE[encoding]
    for chunk, ch in zip(chunks, channels, strict=True):
        n = len(chunk) // width
        out.append(flat[at : at + n].reshape(-1, ch))
        at += n
    return out


def encode_many(arrays: Sequence[np.ndarray], encoding: int) -> list[bytes]:
    """``[encode(x, encoding) for x in arrays]``, equal to it byte for byte, in one conversion."""
    if len(arrays) == 1:
        return [encode(arrays[0], encoding)]
    data = encode(np.concatenate(arrays, axis=None, dtype=np.float32), encoding)   # flattened, in order
    width = BYTES_PER_SAMPLE[encoding]
    out = []
    at = 0
    for x in arrays:
        n = width * x.size
        out.append(data[at : at + n])
        at += n
    return out
