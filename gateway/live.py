"""``/live``: one WebSocket bridged to one gRPC live stream (``Enhancer.StreamEnhance``).

The gateway adds no logic of its own: it checks the WebSocket's shape (Origin, JSON syntax, field
types) and passes everything else to the server, which checks the key, the config and every chunk
exactly as for a gRPC client, and applies the same per-user stream limits (this IS a gRPC stream).

Protocol (version 1; the page's ``console.js`` speaks it, and so can any WebSocket client)::

    client → gateway   first message, text (JSON), exactly once; nothing flows before it:
                         {"key": "<API key>", "sample_rate_hz": 48000, "channels": 1,
                          "encoding": "float32" | "pcm16", "attenuation_limit_db": null | <dB>}
                       ("channels", "encoding" and "attenuation_limit_db" may be left out:
                        1, "float32" and no limit.) The key goes to the server as gRPC metadata
                       ``authorization``; the server's auth decides.
    gateway → client   text {"algorithmic_delay_samples": N}   (the stream is open)
    client → gateway   binary: an audio chunk, interleaved little-endian frames in the encoding,
                         whole frames, at most 1 s (10-20 ms is what the page sends)
                       text {"attenuation_limit_db": 12} and/or {"bypass": true}: a StreamUpdate,
                         applied at the server's next hop
                       text {"end": true}: half-close; the server flushes the tail
    gateway → client   binary, one per audio chunk sent, in order: 4 bytes float32 little-endian
                         voice probability (0..1), then the denoised audio (same encoding and
                         channels; possibly no audio at all). After {"end": true} one more binary
                         message carries the flushed tail, so the audio received in total is the
                         input's length plus N: drop the first N frames to align.
                       text {"end": true}, then close 1000: the stream is complete
                       text {"error": {"code": "...", "msg": "..."}}, then close: a refusal or failure

Errors use the same codes and the same mapping as HTTP (:func:`gateway.errors.from_rpc_error`).
The close code is 1008 (policy violation) for refusals (a wrong key, a bad config or message,
RATE_LIMITED, SLOW_CONSUMER, no first message within :data:`HELLO_TIMEOUT_S`: REQUEST_TIMEOUT),
1013 (try again later) for SERVICE_UNAVAILABLE and OVERLOADED (a full server), and 1011 for
anything else the server or the gateway failed at. Closing the socket without ``{"end": true}`` cancels the gRPC stream.

Origin: a browser's handshake must come from the gateway's own origin (its public URL, or the
scheme and ``Host`` it was reached at); one from another origin is refused with HTTP 403 and
``{"error": {"code": "FORBIDDEN_ORIGIN", ...}}`` before the WebSocket opens. A client that sends
no ``Origin`` (not a browser) is let through: the key still decides.

Bounded buffers: grpc.aio completes a write once core has queued the message, not once the server
took it, so awaited writes alone would let a fast client pile audio up in the gateway. The bridge
keeps at most :data:`MAX_AHEAD_BYTES` of audio sent to the server and not yet come back (input and
output share the encoding, so the bytes compare); beyond that it stops reading the WebSocket, and
uvicorn stops reading the socket (it pauses after every message until the app takes it), so the
client's sends block. Audio to the client is sent one message at a time, each awaited until the
socket's write buffer is below its high-water mark; a client that takes nothing for
:data:`SEND_TIMEOUT_S` is ended with SLOW_CONSUMER, and the gRPC stream with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import struct
import uuid
from collections.abc import Sequence
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import grpc
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from client.errors import CallStatus
from gateway.errors import GatewayError, error_response, from_call_error
from hushwire.contract.errors import quote_input
from hushwire.contract.limits import SLOW_CONSUMER_SECONDS
from hushwire.contract.metadata import (
    AUTHORIZATION_KEY,
    MAX_KEY_CHARS,
    REFUSED_FOR_LOAD,
    error_code,
    pool_retries,
    refused_for,
)
from hushwire.contract.pcm import ENCODINGS
from hushwire.v1 import enhancer_pb2, enhancer_pb2_grpc

__all__ = [
    "ENCODINGS", "HELLO_TIMEOUT_S", "MAX_AHEAD_BYTES", "MAX_MESSAGE_BYTES", "SEND_TIMEOUT_S", "VP_HEADER",
    "LiveBridge", "allowed_origins", "close_code", "parse_control", "parse_hello",
]

log = logging.getLogger("hushwire.gateway")

HELLO_TIMEOUT_S = 10.0     # a socket that sends no first message for this long is closed (REQUEST_TIMEOUT)
SEND_TIMEOUT_S = SLOW_CONSUMER_SECONDS   # as the server's default: a client that takes nothing this long is ended
# Audio in flight through the server (sent, not yet answered), beyond which the client is not read.
# Above the largest valid chunk plus the delay, so one chunk always fits: the stream never stalls.
MAX_AHEAD_BYTES = 4 * 1024 * 1024
MAX_MESSAGE_BYTES = 2 * 1024 * 1024   # over the largest valid chunk (1 s, 48 kHz, 8 channels, float32: 1.5 MB)
CLOSE_TIMEOUT_S = 2.0      # the closing handshake of a client that may have stopped reading
VP_HEADER = struct.Struct("<f")   # the voice probability in front of each binary message to the client
UINT32_MAX = 2**32 - 1

CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013

# A Host header that is a plain host name or address with an optional port (it ends up in the CSP).
_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
_HELLO_KEYS = {"key", "sample_rate_hz", "channels", "encoding", "attenuation_limit_db"}
_UPDATE_KEYS = {"attenuation_limit_db", "bypass", "end"}

_Call: TypeAlias = ("grpc.aio.StreamStreamCall[enhancer_pb2.StreamEnhanceRequest, "
                    "enhancer_pb2.StreamEnhanceResponse]")


def close_code(err: GatewayError) -> int:
    """The WebSocket close code for an error reply (see the module docstring)."""
    if err.code in ("SERVICE_UNAVAILABLE", "OVERLOADED"):
        return CLOSE_TRY_AGAIN
    if err.status >= 500:
        return CLOSE_INTERNAL
    return CLOSE_POLICY


def _origin_of(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    scheme = parts.scheme.lower()
    default = {"http": 80, "https": 443}.get(scheme)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        return None
    return f"{scheme}://{host}" if port in (None, default) else f"{scheme}://{host}:{port}"


def allowed_origins(public_url: str, host_header: str | None, secure: bool) -> set[str]:
    """The origins a browser may open ``/live`` from: the public URL's, and the one the page was
    reached at (the request's scheme and ``Host``)."""
    origins = {o for o in (_origin_of(public_url),) if o}
    if host_header and _HOST.fullmatch(host_header):
        reached = _origin_of(f"{'https' if secure else 'http'}://{host_header}")
        if reached:
            origins.add(reached)
    return origins


def _json_message(text: str, what: str) -> dict[str, Any]:
    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not a number")

    try:
        value = json.loads(text, parse_constant=no_constants)
    except ValueError:
        raise GatewayError("INVALID_REQUEST", f"the {what} is not valid JSON") from None
    except RecursionError:   # json's parser recurses once per nesting level
        raise GatewayError("INVALID_REQUEST", f"the {what} is nested too deeply") from None
    if not isinstance(value, dict):
        raise GatewayError("INVALID_REQUEST", f"the {what} must be a JSON object")
    return value


def _uint32(hello: dict[str, Any], name: str, default: int | None) -> int:
    value = hello.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= UINT32_MAX:
        raise GatewayError("INVALID_REQUEST", f"{name} must be a whole number")
    return value


def _decibels(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise GatewayError("INVALID_REQUEST", f"{name} must be a number")
    return float(value)


def parse_hello(text: str) -> tuple[str, enhancer_pb2.StreamConfig]:
    """The first message: the key and the stream's config. Only types are checked here; the server
    checks the values (supported rates, channel count, limits)."""
    hello = _json_message(text, "first message")
    unknown = sorted(set(hello) - _HELLO_KEYS)
    if unknown:
        raise GatewayError("INVALID_REQUEST",
                           f"unknown field(s) in the first message: {quote_input(', '.join(unknown))}")
    key = hello.get("key")
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY_CHARS \
            or not all(" " <= ch <= "~" for ch in key):
        raise GatewayError("API_KEY_NOT_FOUND")
    if "sample_rate_hz" not in hello:
        raise GatewayError("INVALID_REQUEST", "the first message needs sample_rate_hz")
    encoding = hello.get("encoding", "float32")
    if encoding not in ENCODINGS:
        raise GatewayError("INVALID_REQUEST", f"encoding must be one of {', '.join(sorted(ENCODINGS))}")
    config = enhancer_pb2.StreamConfig(sample_rate_hz=_uint32(hello, "sample_rate_hz", None),
                                       channels=_uint32(hello, "channels", 1), encoding=ENCODINGS[encoding])
    limit = hello.get("attenuation_limit_db")
    if limit is not None:
        config.attenuation_limit_db = _decibels(limit, "attenuation_limit_db")
    return key.strip(), config


def parse_control(text: str) -> tuple[enhancer_pb2.StreamUpdate | None, bool]:
    """A text message after the first: ``(update or None, end)``."""
    message = _json_message(text, "message")
    unknown = sorted(set(message) - _UPDATE_KEYS)
    if unknown or not message:
        raise GatewayError("INVALID_REQUEST", "a text message carries attenuation_limit_db, bypass or end"
                           + (f", not {quote_input(', '.join(unknown))}" if unknown else ""))
    end = message.get("end", False)
    if not isinstance(end, bool):
        raise GatewayError("INVALID_REQUEST", "end must be true or false")
    update = None
    if "attenuation_limit_db" in message or "bypass" in message:
        update = enhancer_pb2.StreamUpdate()
        if message.get("attenuation_limit_db") is not None:
            update.attenuation_limit_db = _decibels(message["attenuation_limit_db"], "attenuation_limit_db")
        if "bypass" in message:
            if not isinstance(message["bypass"], bool):
                raise GatewayError("INVALID_REQUEST", "bypass must be true or false")
            update.bypass = message["bypass"]
    return update, end


class _ClientGone(Exception):
    """The WebSocket closed from the client's side: nothing more to send it."""


class _Window:
    """Audio bytes sent to the server and not yet come back; the uplink waits while it is full."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.ahead = 0
        self._room = asyncio.Event()
        self._room.set()

    async def reserve(self, n: int) -> None:
        while self.ahead >= self.limit:
            self._room.clear()
            await self._room.wait()
        self.ahead += n

    def returned(self, n: int) -> None:
        self.ahead -= n
        if self.ahead < self.limit:
            self._room.set()


class LiveBridge:
    """Runs one ``/live`` WebSocket against one ``StreamEnhance`` call."""

    def __init__(self, stubs: Sequence[enhancer_pb2_grpc.EnhancerStub], public_url: str,
                 connect_timeout: float) -> None:
        """``stubs``: the gateway's connections, the one to use first at the front (see :meth:`_start`)."""
        self._stubs = stubs
        self._public_url = public_url
        self._connect_timeout = connect_timeout

    def origin_allowed(self, ws: WebSocket) -> bool:
        origin = ws.headers.get("origin")
        if origin is None:
            return True
        secure = ws.url.scheme in ("wss", "https")
        return origin.rstrip("/").lower() in allowed_origins(self._public_url, ws.headers.get("host"), secure)

    async def __call__(self, ws: WebSocket) -> None:
        if not self.origin_allowed(ws):
            log.warning("refused a /live WebSocket from origin %r", ws.headers.get("origin"))
            await self._deny(ws)
            return
        await ws.accept()
        call: _Call | None = None
        status: CallStatus | None = None
        try:
            key, config = parse_hello(await self._receive_hello(ws))
            request = enhancer_pb2.StreamEnhanceRequest(config=config)
            # A refusal for load (OVERLOADED, hushwire-refused-for: load) came from the process serving
            # that connection; with a server of several processes (serve --processes), another connection
            # may reach another. A refusal for the group's cap would come again from any, so it is final,
            # and so is the last of a few tries (pool_retries): a full group is not asked N times.
            tries = self._stubs[:1 + pool_retries(len(self._stubs))]
            for attempt, stub in enumerate(tries):
                call = stub.StreamEnhance(metadata=[(AUTHORIZATION_KEY, key)])
                status = CallStatus(call)
                try:
                    first = await self._open(call, request)
                    break
                except grpc.aio.AioRpcError as exc:
                    trailers = exc.trailing_metadata()
                    if (attempt + 1 == len(tries) or error_code(trailers) != "OVERLOADED"
                            or refused_for(trailers) != REFUSED_FOR_LOAD):
                        raise
                    call.cancel()
            await self._send(ws, text=json.dumps({"algorithmic_delay_samples": first.algorithmic_delay_samples}))
            await self._pump(ws, call)
        except _ClientGone:
            pass
        except GatewayError as err:
            await self._fail(ws, err)
        except grpc.aio.AioRpcError as exc:
            await self._fail(ws, await from_call_error(exc, status, "stream"))
        except Exception:
            error_id = uuid.uuid4().hex[:12]
            log.exception("internal error id=%s on the /live WebSocket", error_id)
            await self._fail(ws, GatewayError("INTERNAL", f"internal error (id {error_id})"))
        finally:
            if call is not None:
                call.cancel()

    @staticmethod
    async def _deny(ws: WebSocket) -> None:
        reply = error_response(403, "FORBIDDEN_ORIGIN", "this origin may not open the live stream")
        if "websocket.http.response" in ws.scope.get("extensions", {}):
            await ws.send_denial_response(reply)
        else:
            await ws.close(CLOSE_POLICY)

    async def _receive_hello(self, ws: WebSocket) -> str:
        try:
            message = await asyncio.wait_for(ws.receive(), HELLO_TIMEOUT_S)
        except TimeoutError:
            raise GatewayError("REQUEST_TIMEOUT", f"no first message within {HELLO_TIMEOUT_S:g} s") from None
        if message["type"] == "websocket.disconnect":
            raise _ClientGone
        text = message.get("text")
        if text is None:
            raise GatewayError("INVALID_REQUEST", "the first message must be JSON text with the key and the config")
        return str(text)

    async def _open(self, call: _Call, config: enhancer_pb2.StreamEnhanceRequest) -> enhancer_pb2.StreamEnhanceResponse:
        """Send the config and wait for the server's first response (the delay), or its refusal."""
        try:
            await call.write(config)
        except asyncio.CancelledError:
            raise
        except Exception:   # the call ended already (unreachable server, refused key): read() has the status
            pass
        try:
            first = await asyncio.wait_for(call.read(), self._connect_timeout)
        except TimeoutError:
            raise GatewayError("SERVICE_UNAVAILABLE", "the hushwire server did not answer in time") from None
        if first is grpc.aio.EOF:
            raise GatewayError("UPSTREAM_ERROR", "the server ended the stream without answering", 502)
        assert isinstance(first, enhancer_pb2.StreamEnhanceResponse)
        return first

    async def _pump(self, ws: WebSocket, call: _Call) -> None:
        """Client → server and server → client at once, until the stream ends or either side fails."""
        window = _Window(MAX_AHEAD_BYTES)
        uplink = asyncio.ensure_future(self._uplink(ws, call, window))
        downlink = asyncio.ensure_future(self._downlink(ws, call, window))
        try:
            # Both finish normally only when the client half-closed and the server flushed the tail.
            await asyncio.wait({uplink, downlink}, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in (uplink, downlink):
                task.cancel()
            await asyncio.gather(uplink, downlink, return_exceptions=True)
        # An error on the downlink is the stream's outcome (the server's status): it wins.
        for task in (downlink, uplink):
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error

    async def _uplink(self, ws: WebSocket, call: _Call, window: _Window) -> None:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                raise _ClientGone
            if message.get("bytes") is not None:
                audio = message["bytes"]
                await window.reserve(len(audio))
                request = enhancer_pb2.StreamEnhanceRequest(audio=audio)
            else:
                update, end = parse_control(str(message.get("text", "")))
                if update is not None:
                    await self._write(call, enhancer_pb2.StreamEnhanceRequest(update=update))
                if end:
                    await self._write(call, None)
                    return
                continue
            await self._write(call, request)

    @staticmethod
    async def _write(call: _Call, request: enhancer_pb2.StreamEnhanceRequest | None) -> None:
        """Send one request (None: half-close)."""
        try:
            if request is None:
                await call.done_writing()
            else:
                await call.write(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The server ended the call (a refusal): its status arrives on the downlink. Wait for it
            # there instead of reporting grpc's local error for the write.
            await asyncio.Event().wait()

    async def _downlink(self, ws: WebSocket, call: _Call, window: _Window) -> None:
        while (response := await call.read()) is not grpc.aio.EOF:
            assert isinstance(response, enhancer_pb2.StreamEnhanceResponse)
            await self._send(ws, data=VP_HEADER.pack(response.voice_probability) + response.audio)
            window.returned(len(response.audio))
        await self._send(ws, text=json.dumps({"end": True}))
        await self._close(ws, CLOSE_NORMAL)

    @staticmethod
    async def _send(ws: WebSocket, *, text: str | None = None, data: bytes | None = None) -> None:
        if ws.application_state != WebSocketState.CONNECTED or ws.client_state != WebSocketState.CONNECTED:
            raise _ClientGone
        try:
            if data is not None:
                await asyncio.wait_for(ws.send_bytes(data), SEND_TIMEOUT_S)
            else:
                await asyncio.wait_for(ws.send_text(text or ""), SEND_TIMEOUT_S)
        except TimeoutError:
            raise GatewayError("SLOW_CONSUMER", f"the client read nothing for {SEND_TIMEOUT_S:g} s") from None
        except (WebSocketDisconnect, RuntimeError, OSError):
            raise _ClientGone from None

    @staticmethod
    async def _close(ws: WebSocket, code: int) -> None:
        if ws.application_state != WebSocketState.CONNECTED:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(code), CLOSE_TIMEOUT_S)

    @classmethod
    async def refuse(cls, ws: WebSocket, err: GatewayError) -> None:
        """Refuse a ``/live`` WebSocket before any stream opens, as a refusal from the server is sent:
        accepted, the error message, then the close code for ``err`` (1013 for OVERLOADED)."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.accept(), CLOSE_TIMEOUT_S)
            await cls._fail(ws, err)

    @classmethod
    async def _fail(cls, ws: WebSocket, err: GatewayError) -> None:
        log.info("live stream ended: %s %s", err.code, err.msg)
        body = json.dumps({"error": {"code": err.code, "msg": err.msg}})
        if err.code != "SLOW_CONSUMER":   # a client that reads nothing would not get it either
            with contextlib.suppress(_ClientGone, GatewayError):
                await asyncio.wait_for(cls._send(ws, text=body), CLOSE_TIMEOUT_S)
        await cls._close(ws, close_code(err))

