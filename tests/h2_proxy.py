"""A loopback TCP proxy that forwards gRPC's HTTP/2 and notes every frame it carries.

Tests put it between a client and a real server to see what went over the wire (a HEADERS frame with
a status, RST_STREAM on one stream, GOAWAY ``too_many_pings``, keepalive PINGs), and to make a peer
vanish without closing anything: :meth:`H2Proxy.blackhole` stops forwarding both ways while every
socket stays open, as a NAT that forgot the mapping or a laptop that went to sleep would.

Frames are parsed with hyperframe and header blocks decoded with hpack (the python-hyper libraries
that h2 is built on). The proxy is a process of its own (``python tests/h2_proxy.py TARGET FRAMES``),
as a network hop would be: in the test's process it would compete for the interpreter with the
client, forward late, and make the server buffer what it could not send. It appends each frame to
the file FRAMES as a JSON line, and blackholes on SIGUSR1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from hpack import Decoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
)

__all__ = ["H2Frame", "H2Proxy"]

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"   # the client's first bytes, before any frame
_HEADER_BYTES = 9
# Not written one by one: a line per DATA frame slows the proxy enough that the server buffers what it
# cannot send. The next noted frame of the stream carries their count and time instead.
_UNNOTED = ("DataFrame", "WindowUpdateFrame")


@dataclass
class H2Frame:
    """One frame as it crossed the proxy."""

    at: float                 # time.monotonic() when it passed
    conn: int                 # the proxied connection's number (0, 1, ... in accept order)
    to_server: bool
    kind: str                 # hyperframe's type name: "HeadersFrame", "RstStreamFrame", "PingFrame", ...
    stream_id: int
    flags: frozenset[str]
    headers: dict[str, str] = field(default_factory=dict)   # a header block's fields (HEADERS frames)
    error_code: int | None = None                            # RST_STREAM and GOAWAY
    debug: str = ""                                          # GOAWAY's additional data
    settings: list[tuple[int, int]] = field(default_factory=list)   # a SETTINGS frame's (id, value) pairs
    data_bytes: int = 0         # DATA payload so far on this stream, this way (frames of the connection: all)
    last_data_at: float = 0.0   # when the stream's last DATA frame before this one passed (0: none yet)


class _Direction:
    """Frame parsing for one direction of one connection (a header block's state is per direction)."""

    def __init__(self, out: IO[str], conn: int, to_server: bool) -> None:
        self.out, self.conn, self.to_server = out, conn, to_server
        self.buf = bytearray()
        self.skip = len(_PREFACE) if to_server else 0
        self.decoder = Decoder()
        self.decoder.max_allowed_table_size = 1 << 16
        self.block = bytearray()   # a header block continued in CONTINUATION frames
        self.block_frame: H2Frame | None = None
        self.data: dict[int, tuple[int, float]] = {}   # stream -> (DATA bytes, when the last one passed)

    def feed(self, data: bytes) -> None:
        self.buf += data
        if self.skip:
            n = min(self.skip, len(self.buf))
            del self.buf[:n]
            self.skip -= n
        while len(self.buf) >= _HEADER_BYTES:
            frame, length = Frame.parse_frame_header(memoryview(bytes(self.buf[:_HEADER_BYTES])))
            if len(self.buf) < _HEADER_BYTES + length:
                return
            frame.parse_body(memoryview(bytes(self.buf[_HEADER_BYTES:_HEADER_BYTES + length])))
            del self.buf[:_HEADER_BYTES + length]
            self._note(frame)

    def _note(self, frame: Frame) -> None:
        now = time.monotonic()
        data_bytes, last_data_at = self.data.get(frame.stream_id, (0, 0.0))
        note = H2Frame(now, self.conn, self.to_server, type(frame).__name__, frame.stream_id,
                       frozenset(frame.flags), data_bytes=data_bytes, last_data_at=last_data_at)
        if isinstance(frame, DataFrame):
            self.data[frame.stream_id] = (data_bytes + len(frame.data), now)
        if isinstance(frame, RstStreamFrame | GoAwayFrame):
            note.error_code = frame.error_code
        if isinstance(frame, SettingsFrame):
            note.settings = sorted(frame.settings.items())
        if isinstance(frame, GoAwayFrame):
            note.debug = bytes(frame.additional_data).decode(errors="replace")
        if isinstance(frame, HeadersFrame):
            self.block, self.block_frame = bytearray(frame.data), note
        elif isinstance(frame, ContinuationFrame):
            self.block += frame.data
        if isinstance(frame, HeadersFrame | ContinuationFrame) and "END_HEADERS" in frame.flags:
            assert self.block_frame is not None
            self.block_frame.headers = {str(k): str(v) for k, v in self.decoder.decode(bytes(self.block), raw=False)}
        if not isinstance(frame, HeadersFrame) or "END_HEADERS" in frame.flags:
            self._write(note)
        if isinstance(frame, ContinuationFrame) and "END_HEADERS" in frame.flags and self.block_frame is not None:
            self._write(self.block_frame)

    def _write(self, note: H2Frame) -> None:
        if note.kind in _UNNOTED:
            return
        record = asdict(note)
        record["flags"] = sorted(note.flags)
        self.out.write(json.dumps(record) + "\n")
        self.out.flush()


class H2Proxy:
    """Runs the proxy process from ``127.0.0.1:port`` to ``target`` (``host:port``); :attr:`frames` reads
    what it noted so far."""

    def __init__(self, target: str, frames_file: Path) -> None:
        self._args = [sys.executable, __file__, target, str(frames_file)]
        self._file = frames_file
        self.port = 0
        self._proc: subprocess.Popen[str] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def frames(self) -> list[H2Frame]:
        notes = []
        for line in self._file.read_text().splitlines():
            if line.endswith("}"):   # a line still being written is left for the next read
                record = json.loads(line)
                record["flags"] = frozenset(record["flags"])
                record["settings"] = [tuple(pair) for pair in record["settings"]]
                notes.append(H2Frame(**record))
        return notes

    def __enter__(self) -> H2Proxy:
        self._file.write_text("")
        self._proc = subprocess.Popen(self._args, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.startswith("listening on "):
            self._proc.kill()
            raise AssertionError(f"the HTTP/2 proxy did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc.stdout.close()

    def blackhole(self) -> None:
        """From now on, drop what either side sends (sockets stay open: no FIN, no RST)."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGUSR1)

    def wait_for(self, predicate: Callable[[H2Frame], bool], timeout: float) -> H2Frame | None:
        """The first frame (already seen or seen within ``timeout`` s) that matches, or None."""
        deadline = time.monotonic() + timeout
        while True:
            found = next((f for f in self.frames if predicate(f)), None)
            if found is not None or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


class _Proxy:
    def __init__(self, target: str, out: IO[str]) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host.strip("[]"), int(port))
        self.out = out
        self.forwarding = True
        self.conns = 0

    async def accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        conn = self.conns
        self.conns += 1
        with contextlib.suppress(asyncio.CancelledError, OSError):   # cancelled: the proxy is stopping
            server_r, server_w = await asyncio.open_connection(*self.target)
            await asyncio.gather(self.pipe(client_r, server_w, _Direction(self.out, conn, True)),
                                 self.pipe(server_r, client_w, _Direction(self.out, conn, False)),
                                 return_exceptions=True)

    async def pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: _Direction) -> None:
        try:
            while data := await reader.read(1 << 16):
                if not self.forwarding:
                    continue
                direction.feed(data)
                writer.write(data)
                await writer.drain()
        finally:
            if self.forwarding:   # a blackholed peer never sees the other side close
                writer.close()


async def _main(target: str, frames_file: str) -> None:
    with open(frames_file, "a") as out:
        proxy = _Proxy(target, out)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, lambda: setattr(proxy, "forwarding", False))
        server = await asyncio.start_server(proxy.accept, "127.0.0.1", 0)
        print(f"listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
        await stop.wait()
        server.close()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], sys.argv[2]))
