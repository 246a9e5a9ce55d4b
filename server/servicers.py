"""gRPC servicers: unpack requests, call the domain code, map its errors to a status. Nothing more."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc
from hushwire.v1 import enhancer_pb2, enhancer_pb2_grpc

from server.auth import current_principal
from server.errors import HushwireError, abort_with
from server.streams import StreamSession

__all__ = ["EnhancerServicer", "StreamRegistry"]

log = logging.getLogger("hushwire.server")

# A client that has not taken a response for this long is ended with SLOW_CONSUMER. gRPC's
# flow-control window bounds what is buffered meanwhile, so memory per stream stays bounded.
SLOW_CONSUMER_SECONDS = 10.0


class StreamRegistry:
    """The live streams' tasks, so a drain can wait for them and then end the stragglers."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[object]] = set()
        self.shutting_down = False
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, task: asyncio.Task[object]) -> None:
        self.tasks.add(task)
        self._idle.clear()

    def discard(self, task: asyncio.Task[object]) -> None:
        self.tasks.discard(task)
        if not self.tasks:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    def end_all(self) -> None:
        self.shutting_down = True
        for task in list(self.tasks):
            task.cancel()


class EnhancerServicer(enhancer_pb2_grpc.EnhancerServicer):
    def __init__(self, registry: StreamRegistry) -> None:
        self._registry = registry

    async def StreamEnhance(  # noqa: N802 (gRPC method name)
        self,
        request_iterator: AsyncIterator[enhancer_pb2.StreamEnhanceRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._registry.add(task)
        principal = current_principal()
        started = time.monotonic()
        session: StreamSession | None = None
        try:
            session = await self._serve(context)
        except HushwireError as err:
            await abort_with(context, err)
        except asyncio.CancelledError:
            if not self._registry.shutting_down:
                raise
            await abort_with(context, HushwireError("SERVICE_UNAVAILABLE", "server shutting down"))
        finally:
            self._registry.discard(task)
            if session is not None:
                log.info(
                    "stream closed uid=%d rate=%d channels=%d frames_in=%d frames_out=%d seconds=%.2f",
                    principal.uid, session.sample_rate_hz, session.channels,
                    session.frames_in, session.frames_out, time.monotonic() - started,
                )

    async def _serve(self, context: grpc.aio.ServicerContext) -> StreamSession | None:
        first = await context.read()
        if first is grpc.aio.EOF:
            return None
        if first.WhichOneof("msg") != "config":
            raise HushwireError("INVALID_ARGUMENT", "the first message must be the config")
        cfg = first.config
        session = StreamSession(
            cfg.sample_rate_hz,
            cfg.channels,
            cfg.encoding,
            cfg.attenuation_limit_db if cfg.HasField("attenuation_limit_db") else None,
        )
        await self._write(context, enhancer_pb2.StreamEnhanceResponse(
            algorithmic_delay_samples=session.delay_samples))
        while True:
            req = await context.read()
            if req is grpc.aio.EOF:
                break
            kind = req.WhichOneof("msg")
            if kind == "audio":
                audio, vp = session.process(req.audio)
                await self._write(context, enhancer_pb2.StreamEnhanceResponse(audio=audio, voice_probability=vp))
            elif kind == "update":
                up = req.update
                session.update(
                    up.attenuation_limit_db if up.HasField("attenuation_limit_db") else None,
                    up.bypass if up.HasField("bypass") else None,
                )
            elif kind == "config":
                raise HushwireError("INVALID_ARGUMENT", "the config was already sent: send it once, first")
            else:
                raise HushwireError("INVALID_ARGUMENT", "empty request: set config, audio or update")
        await self._write(context, enhancer_pb2.StreamEnhanceResponse(audio=session.flush()))
        return session

    @staticmethod
    async def _write(context: grpc.aio.ServicerContext, response: enhancer_pb2.StreamEnhanceResponse) -> None:
        try:
            await asyncio.wait_for(context.write(response), SLOW_CONSUMER_SECONDS)
        except TimeoutError:
            raise HushwireError(
                "SLOW_CONSUMER", f"the client read no response for {SLOW_CONSUMER_SECONDS:g} s"
            ) from None
