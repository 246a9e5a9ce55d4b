"""A bare grpc.aio server of the same RPC (hushwire.v1.Enhancer/StreamEnhance) that only echoes.

It is the baseline for ``bench.streams``: the same protobuf messages, the same grpc.aio
read/write calls and the same receive limit as ``hushwire serve``, but no auth interceptor, no
denoiser, no metrics and no per-write timeout. It answers the config with one response that
carries a delay, then one response per audio request holding the same bytes.

    python -m bench.echo --port 0      # logs "listening on 127.0.0.1:PORT" on stderr
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import AsyncIterator

import grpc

from hushwire.v1 import enhancer_pb2, enhancer_pb2_grpc

log = logging.getLogger("bench.echo")

DELAY_SAMPLES = 160  # what hushwire reports at 16 kHz (one 10 ms hop); only the field matters here
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class EchoEnhancer(enhancer_pb2_grpc.EnhancerServicer):
    async def StreamEnhance(  # noqa: N802 (gRPC method name)
        self,
        request_iterator: AsyncIterator[enhancer_pb2.StreamEnhanceRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        await context.write(enhancer_pb2.StreamEnhanceResponse(algorithmic_delay_samples=DELAY_SAMPLES))
        while (req := await context.read()) is not grpc.aio.EOF:
            if req.WhichOneof("msg") == "audio":
                await context.write(enhancer_pb2.StreamEnhanceResponse(audio=req.audio))
        await context.write(enhancer_pb2.StreamEnhanceResponse(audio=b""))


async def serve(host: str, port: int) -> None:
    import os
    extra = []
    if os.environ.get("HWX_ECHO_OPTS") in ("ka", "all"):
        from hushwire.contract import keepalive
        extra += list(keepalive.server_options())
    if os.environ.get("HWX_ECHO_OPTS") in ("fc", "all"):
        from server.connections import FLOW_CONTROL_OPTIONS
        extra += list(FLOW_CONTROL_OPTIONS)
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                      ("grpc.so_reuseport", 0), *extra])
    enhancer_pb2_grpc.add_EnhancerServicer_to_server(EchoEnhancer(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    log.info("listening on %s:%d", host, bound)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
